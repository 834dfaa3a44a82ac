"""Controller tick latency over real DDS: state in -> command out, at 100 Hz, HalfCheetah-v5.

    python benchmarks/controller_latency.py --task HalfCheetah-v5 --rate-hz 100 --states 3000 \
        --png benchmarks/results/controller_latency.png

Two processes. The controller process runs the real ``mbmpo_ros.controller.Controller`` (parameters task,
rate_hz, explore=true, state_timeout_s=0.5, a horizon longer than the run so no episode reset happens) on a
``SingleThreadedExecutor`` like its entry point; a benchmark-only subclass times each ``_tick`` with
``time.monotonic_ns`` and logs every command it publishes (time, action, the state stamp it acted on). The
driver process exports a fresh ``GaussianMLPPolicy`` (32, 32) with ``export_policy``, publishes it latched on
``/mbmpo/policy`` (``encode_policy``), waits until the controller's diagnostics report that policy, then
publishes ``--states`` ``JointState`` messages (names = the task's observation names, a fresh stamp each) at
``--state-hz`` and logs the arrival time of every command. CLOCK_MONOTONIC is shared by both processes.

Reported (ms): end-to-end state -> command (driver publish -> driver receipt of the command computed from that
state; includes waiting for the controller's next tick, up to one period, since the controller acts on a new
stamp at its tick), the waiting part (state publish -> tick start), the tick's own compute time (ticks that
published a policy command), command transport (controller publish -> driver receipt), and jitter of the command
stream (interval between consecutive commands at the driver, and between tick starts at the controller).
With states and ticks both at 100 Hz the phase between the two timers is arbitrary but nearly fixed within a
run, so the waiting part is close to one value per run (between 0 and one period); ``tick_start_to_command``
(tick start -> command received) is the part that does not depend on that phase. ``--state-hz 99.5`` sweeps
the phase through the whole period (some ticks then find no new state).
Commands are matched to states by their action vector (sampled actions are unique). Exits 1 if a command that
the controller published never arrived, or if no state produced a command.

Adaptation jobs during the measurement (``--adapt-job-period-s P``): the policy bundle then carries a fresh
dynamics ensemble of the CPU config's size (``--ensemble-models`` x ``--ensemble-hidden``, default 5 x 256x256),
and a helper thread of the controller process hands the controller's adaptation worker one model-mode inner step
every ``P`` seconds (the real :class:`mbmpo_ros.adaptation.AdaptJob` with the controller's own
``ModelImagination``: identification on ``--adapt-episodes`` synthetic 200-step episodes, ``--imagined-rollouts``
rollouts of the bundle's horizon 200, the ONNX inner step), exactly as the tick hands over a finished batch.
Every metric is then also reported split by whether a job was running (``... | job`` / ``... | no job``: a tick,
or a tick interval, that overlaps a job's span), plus the job's own seconds. Pin the two processes to one core
each to measure "one core" (``taskset -c 0 python ...`` pins both: the job then competes with the tick's core).

Rows are appended to benchmarks/results/controller_latency.csv.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from mbmpo_core.bundle import PolicyBundle

RESULTS = Path(__file__).parent / "results" / "controller_latency.csv"


# ------------------------------------------------------------------------------------------ controller process
def run_controller(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from mbmpo_ros.controller import Controller

    class TimedController(Controller):
        """Benchmark-only: logs tick start/end and every command published (this process only)."""

        def __init__(self, **kwargs: Any) -> None:
            self.ticks: list[tuple[int, int, int]] = []  # (start ns, end ns, 1 if a policy command was sent)
            self.commands: list[tuple[int, list[float], list[int] | None, bool]] = []
            self._in_hold = False
            super().__init__(**kwargs)
            real_pub = self._cmd_pub
            outer = self

            class Pub:
                def publish(self, msg: Any) -> None:
                    t = time.monotonic_ns()  # before the call: the receiver may get it before publish returns
                    real_pub.publish(msg)
                    stamp = outer._used_stamp
                    outer.commands.append((t, list(msg.data),
                                           list(stamp) if stamp is not None else None, outer._in_hold))

                def __getattr__(self, name: str) -> Any:
                    return getattr(real_pub, name)

            self._cmd_pub = Pub()

        def _hold(self, reason: Any) -> None:
            self._in_hold = True
            try:
                super()._hold(reason)
            finally:
                self._in_hold = False

        def _tick(self) -> None:
            n = len(self.commands)
            t0 = time.monotonic_ns()
            super()._tick()
            t1 = time.monotonic_ns()
            acted = len(self.commands) > n and not self.commands[-1][3]
            self.ticks.append((t0, t1, int(acted)))

    import mbmpo_ros.controller

    if args.switch_interval_ms > 0:
        sys.setswitchinterval(args.switch_interval_ms / 1e3)
    if args.worker_niceness >= 0:
        mbmpo_ros.controller.WORKER_NICENESS = args.worker_niceness
    rclpy.init()
    params = {"task": args.task, "rate_hz": float(args.rate_hz), "explore": True, "state_timeout_s": 0.5,
              "horizon": 10**7, "seed": 0, "adapt_imagined_rollouts": args.imagined_rollouts}
    node = TimedController(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    jobs: list[dict[str, float]] = []
    stop = threading.Event()
    if args.adapt_job_period_s > 0:
        threading.Thread(target=feed_adaptation_jobs, args=(node, args, jobs, stop), daemon=True).start()
    Path(args.out + ".ready").write_text("1")
    try:
        while rclpy.ok() and not Path(args.stop).exists():
            executor.spin_once(timeout_sec=0.05)
    except KeyboardInterrupt:
        pass
    stop.set()
    Path(args.out).write_text(json.dumps({"ticks": node.ticks, "commands": node.commands,
                                          "holds": dict(node.hold_counts), "policy_id": node.policy_id,
                                          "jobs": jobs}))
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def synthetic_episodes(policy: Any, episodes: int, length: int, rng: np.random.Generator) -> list[Any]:
    """``episodes`` complete episodes as the adapter records them: the driver's kind of states (0.1 N(0, 1)),
    the policy's sampled actions, executed = clipped, rewards N(0, 1)."""
    from mbmpo_ros.adaptation import Episode

    low, high = (np.asarray(policy.metadata[k], np.float64) for k in ("action_low", "action_high"))
    out = []
    for _ in range(episodes):
        obs = 0.1 * rng.standard_normal((length + 1, policy.obs_dim))
        raw = policy.act(obs[:-1], deterministic=False, rng=rng).astype(np.float64)
        out.append(Episode(0, obs=list(obs[:-1]), act=list(raw), rewards=list(rng.standard_normal(length)),
                           executed=list(np.clip(raw, low, high)), last_obs=obs[-1]))
    return out


def feed_adaptation_jobs(node: Any, args: argparse.Namespace, jobs: list[dict[str, float]],
                         stop: threading.Event) -> None:
    """Controller process, helper thread: once the benchmarked policy runs, hand the controller's adaptation
    worker one model-mode step every ``--adapt-job-period-s`` (see module docstring); record each job's span."""
    from mbmpo_ros.adaptation import AdaptJob

    while node.policy is None and not stop.is_set():
        time.sleep(0.05)
    policy = node.policy
    imagination = node._imagination(policy) if policy is not None else None
    if imagination is None:
        print("controller: the policy carries no dynamics (or adaptation is off): no jobs", file=sys.stderr)
        return
    batch = synthetic_episodes(policy, args.adapt_episodes, 200, np.random.default_rng(1))
    meta = policy.metadata
    k = 0
    while not stop.wait(args.adapt_job_period_s):
        k += 1
        job = AdaptJob(policy, None, batch, float(meta["gamma"]), float(meta["gae_lambda"]), generation=0,
                       imagination=imagination, step=k)

        def timed(job: AdaptJob = job) -> None:
            t0 = time.monotonic_ns()
            try:
                result = job.run()
            except Exception as exc:  # a benchmark that measures nothing must say why
                print(f"controller: adaptation job failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                return
            jobs.append({"start": t0, "end": time.monotonic_ns(), "job_s": result.job_s,
                         "identify_s": result.identify_s, "imagine_s": result.imagine_s,
                         "update_s": result.update_s})

        node._pool.submit(timed)  # the worker thread the tick hands its jobs to


# ------------------------------------------------------------------------------------------ driver process
def export_fresh_policy(task: Any, ensemble_models: int = 0, ensemble_hidden: int = 256) -> PolicyBundle:
    """A fresh (32, 32) policy; with ``ensemble_models`` > 0 also a fresh ensemble of that many
    (``ensemble_hidden`` x 2) members in the bundle; horizon 200 (the CPU config's imagined horizon)."""
    from mbmpo_core.ensemble import DynamicsEnsemble
    from mbmpo_core.export import export_bundle
    from mbmpo_core.policy import GaussianMLPPolicy

    ensemble = (DynamicsEnsemble(task.obs_dim, task.act_dim, num_models=ensemble_models,
                                 hidden_sizes=(ensemble_hidden, ensemble_hidden)) if ensemble_models > 0 else None)
    return export_bundle(
        GaussianMLPPolicy(task.obs_dim, task.act_dim, hidden_sizes=(32, 32)), task_name=task.name,
        obs_names=task.obs_names, act_names=task.act_names, joint_names=task.joint_names,
        action_low=task.action_low, action_high=task.action_high, control_rate_hz=1.0 / task.dt,
        horizon=task.horizon, inner_lr=0.001, gamma=0.99, gae_lambda=1.0, iteration=0, ensemble=ensemble)


def run_driver(args: argparse.Namespace) -> int:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray, UInt8MultiArray

    from mbmpo_ros.codec import arrays_to_joint_state, encode_policy
    from mbmpo_ros.qos import COMMAND_QOS, DIAGNOSTICS_QOS, POLICY_QOS, STATE_PUB_QOS
    from sim import make_task

    task = make_task(args.task, horizon=200)
    models = args.ensemble_models if args.adapt_job_period_s > 0 else 0
    bundle = export_fresh_policy(task, models, args.ensemble_hidden)
    pid = bundle.policy_id
    rclpy.init()
    node = Node("bench_driver")
    policy_pub = node.create_publisher(UInt8MultiArray, "/mbmpo/policy", POLICY_QOS)
    state_pub = node.create_publisher(JointState, "/joint_states", STATE_PUB_QOS)
    received: list[tuple[int, list[float]]] = []
    node.create_subscription(Float64MultiArray, "/command", lambda m: received.append(
        (time.monotonic_ns(), list(m.data))), COMMAND_QOS)
    active = [""]

    def on_diag(msg: DiagnosticArray) -> None:
        for status in msg.status:
            for kv in status.values:
                if kv.key == "policy_id":
                    active[0] = kv.value

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, DIAGNOSTICS_QOS)
    policy_pub.publish(encode_policy(bundle))
    deadline = time.monotonic() + 60.0
    while active[0] != pid and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    if active[0] != pid:
        print(f"driver: the controller never reported policy {pid[:12]} (it reports {active[0]!r})", file=sys.stderr)
        return 1
    rng = np.random.default_rng(0)
    names = list(task.obs_names)
    sent: list[tuple[int, list[int]]] = []
    total = args.warmup + args.states
    period_ns = int(1e9 / args.state_hz)
    next_t = time.monotonic_ns() + period_ns
    while len(sent) < total:
        # Publish on a fixed schedule, spinning (command receipts) in between.
        while time.monotonic_ns() < next_t:
            rclpy.spin_once(node, timeout_sec=max(0.0, (next_t - time.monotonic_ns()) / 1e9))
        next_t += period_ns
        now = node.get_clock().now()
        msg = arrays_to_joint_state(names, 0.1 * rng.standard_normal(len(names)), None, None, stamp=now)
        t = time.monotonic_ns()
        state_pub.publish(msg)
        sent.append((t, [msg.header.stamp.sec, msg.header.stamp.nanosec]))
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.02)
    Path(args.out).write_text(json.dumps({"sent": sent, "received": received, "warmup": args.warmup,
                                          "policy_id": pid}))
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


# ------------------------------------------------------------------------------------------ analysis
def stats_ms(values_ns: Any) -> dict[str, float]:
    arr = np.asarray(values_ns, dtype=np.float64) / 1e6
    if arr.size == 0:
        return {k: float("nan") for k in ("n", "mean", "std", "p50", "p99", "max")}
    return {"n": int(arr.size), "mean": float(arr.mean()), "std": float(arr.std()),
            "p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)), "max": float(arr.max())}


def analyse(ctrl: dict[str, Any], drv: dict[str, Any],
            raw: dict[str, Any] | None = None) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    measured = drv["sent"][drv["warmup"]:]
    state_t = {tuple(stamp): t for t, stamp in measured}
    recv_t: dict[tuple[float, ...], int] = {}
    for t, data in drv["received"]:
        recv_t.setdefault(tuple(data), t)
    # Policy commands the controller published for a measured state, with the tick that produced them.
    acted_ticks = [(t0, t1) for t0, t1, acted in ctrl["ticks"] if acted]
    acts = [c for c in ctrl["commands"] if not c[3]]
    if len(acted_ticks) != len(acts):
        raise RuntimeError(f"{len(acts)} policy commands but {len(acted_ticks)} acting ticks")
    spans = [(j["start"], j["end"]) for j in ctrl.get("jobs", [])]
    e2e, wait, compute, transport, tick_to_cmd, lost = [], [], [], [], [], 0
    busy_compute, busy_e2e = [], []  # whether the tick overlapped an adaptation job
    cmd_times = []
    for (t0, t1), (t_pub, data, stamp, _) in zip(acted_ticks, acts, strict=True):
        if stamp is None or tuple(stamp) not in state_t:
            continue
        t_state = state_t[tuple(stamp)]
        t_recv = recv_t.get(tuple(data))
        compute.append(t1 - t0)
        busy_compute.append(overlaps(t_state, t1, spans))
        wait.append(t0 - t_state)
        if t_recv is None:
            lost += 1
            continue
        e2e.append(t_recv - t_state)
        busy_e2e.append(overlaps(t_state, t_recv, spans))
        transport.append(t_recv - t_pub)
        tick_to_cmd.append(t_recv - t0)
        cmd_times.append(t_recv)
    first, last = measured[0][0], measured[-1][0]
    tick_starts = np.array([t0 for t0, _, _ in ctrl["ticks"] if first <= t0 <= last])
    intervals = np.diff(tick_starts)
    busy_interval = [overlaps(a, b, spans) for a, b in itertools.pairwise(tick_starts)]
    if raw is not None:
        raw.update({"state_to_command": e2e, "tick_start_to_command": tick_to_cmd, "tick_compute": compute,
                    "tick_interval": intervals.tolist()})
    stats = {
        "state_to_command": stats_ms(e2e),
        "state_to_tick_start (wait)": stats_ms(wait),
        "tick_start_to_command": stats_ms(tick_to_cmd),
        "tick_compute (policy ticks)": stats_ms(compute),
        "command_transport": stats_ms(transport),
        "command_interval (driver)": stats_ms(np.diff(np.sort(cmd_times))),
        "tick_interval (controller)": stats_ms(intervals),
    }
    if spans:
        for name, values, busy in (("state_to_command", e2e, busy_e2e), ("tick_compute (policy ticks)", compute,
                                   busy_compute), ("tick_interval (controller)", intervals, busy_interval)):
            flags = np.asarray(busy, bool)
            stats[f"{name} | job"] = stats_ms(np.asarray(values)[flags])
            stats[f"{name} | no job"] = stats_ms(np.asarray(values)[~flags])
        stats["adaptation job (worker thread)"] = stats_ms([j["end"] - j["start"] for j in ctrl["jobs"]])
        for part in ("identify_s", "imagine_s", "update_s"):
            stats[f"adaptation job: {part[:-2]}"] = stats_ms([1e9 * j[part] for j in ctrl["jobs"]])
    counts = {"states": len(measured), "states_acted_on": len(compute), "commands_received": len(e2e),
              "commands_lost": lost, "holds": ctrl["holds"], "adaptation_jobs": len(spans)}
    return stats, counts


def overlaps(start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    """Whether ``[start, end]`` overlaps any of the ``(start, end)`` spans."""
    return any(start < b and end > a for a, b in spans)


def plot(raw: dict[str, Any], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for key in ("state_to_command", "tick_start_to_command", "tick_compute"):
        axes[0].hist(np.asarray(raw[key]) / 1e6, bins=120, histtype="step", label=key)
    axes[0].set_xlabel("ms")
    axes[0].set_ylabel("count")
    axes[0].set_yscale("log")
    axes[0].legend()
    axes[0].set_title(f"{args.task}: controller {args.rate_hz:g} Hz, states {args.state_hz:g} Hz")
    axes[1].hist(np.asarray(raw["tick_interval"]) / 1e6, bins=120, histtype="step")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("interval between tick starts (ms)")
    axes[1].set_title("controller tick jitter")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------------------------------ orchestration
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--task", default="HalfCheetah-v5")
    parser.add_argument("--rate-hz", type=float, default=100.0, help="controller rate_hz parameter")
    parser.add_argument("--state-hz", type=float, default=100.0, help="rate of the driver's JointState")
    parser.add_argument("--states", type=int, default=3000, help="measured states (after --warmup)")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--domain-id", type=int, default=38)
    parser.add_argument("--csv", default=str(RESULTS))
    parser.add_argument("--png", default="", help="also save histograms of the latencies to this PNG")
    parser.add_argument("--note", default="", help="free text for the CSV (e.g. other load on the machine)")
    parser.add_argument("--adapt-job-period-s", type=float, default=0.0,
                        help="hand the controller's worker a model-mode adaptation step this often (0 = none)")
    parser.add_argument("--adapt-episodes", type=int, default=4, help="real episodes (200 steps) per job")
    parser.add_argument("--imagined-rollouts", type=int, default=20, help="imagined rollouts (200 steps) per job")
    parser.add_argument("--ensemble-models", type=int, default=5)
    parser.add_argument("--worker-niceness", type=int, default=-1, help="nice value added to the controller's "
                        "adaptation worker thread (-1 = the controller's WORKER_NICENESS)")
    parser.add_argument("--switch-interval-ms", type=float, default=0.0, help="sys.setswitchinterval of the "
                        "controller process (0 = Python's default, 5 ms)")
    parser.add_argument("--ensemble-hidden", type=int, default=256, help="width of the ensemble's 2 hidden layers")
    parser.add_argument("--role", choices=("main", "controller", "driver"), default="main", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    parser.add_argument("--stop", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "controller":
        return run_controller(args)
    if args.role == "driver":
        return run_driver(args)

    env = {**os.environ, "ROS_DOMAIN_ID": str(args.domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--task", args.task, "--rate-hz", str(args.rate_hz), "--state-hz", str(args.state_hz),
              "--states", str(args.states), "--warmup", str(args.warmup),
              "--adapt-job-period-s", str(args.adapt_job_period_s), "--adapt-episodes", str(args.adapt_episodes),
              "--imagined-rollouts", str(args.imagined_rollouts), "--ensemble-models", str(args.ensemble_models),
              "--ensemble-hidden", str(args.ensemble_hidden), "--switch-interval-ms", str(args.switch_interval_ms),
              "--worker-niceness", str(args.worker_niceness)]
    with tempfile.TemporaryDirectory(prefix="mbmpo_ctrl_lat_") as tmp:
        ctrl_out, drv_out, stop = f"{tmp}/ctrl.json", f"{tmp}/drv.json", f"{tmp}/stop"
        ctrl = subprocess.Popen(me + common + ["--role", "controller", "--out", ctrl_out, "--stop", stop], env=env)
        try:
            deadline = time.monotonic() + 120
            while not os.path.exists(ctrl_out + ".ready"):
                if ctrl.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("controller process did not start")
                time.sleep(0.05)
            rc = subprocess.run(me + common + ["--role", "driver", "--out", drv_out], env=env,
                                timeout=120 + 2 * (args.states + args.warmup) / args.state_hz).returncode
            Path(stop).write_text("1")
            ctrl.wait(timeout=30)
        finally:
            if ctrl.poll() is None:
                ctrl.send_signal(signal.SIGINT)
                ctrl.wait(timeout=10)
        if rc or ctrl.returncode:
            print(f"driver exit {rc}, controller exit {ctrl.returncode}", file=sys.stderr)
            return 1
        ctrl_log, drv_log = json.loads(Path(ctrl_out).read_text()), json.loads(Path(drv_out).read_text())
    raw: dict[str, Any] = {}
    stats, counts = analyse(ctrl_log, drv_log, raw)
    if args.png:
        plot(raw, args, Path(args.png))
    print(f"{args.task}, controller {args.rate_hz:g} Hz, states {args.state_hz:g} Hz: {counts}")
    for name, s in stats.items():
        print(f"  {name:30s} n {s['n']:>5}  p50 {s['p50']:7.3f} ms  p99 {s['p99']:7.3f} ms  "
              f"mean {s['mean']:7.3f}  std {s['std']:6.3f}  max {s['max']:7.3f}")
    import torch

    path = Path(args.csv)
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with path.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["time_utc", "machine", "cpus", "python", "torch", "task", "rate_hz", "state_hz", "states",
                        "states_acted_on", "commands_lost", "metric", "n", "p50_ms", "p99_ms", "mean_ms", "std_ms",
                        "max_ms", "note"])
        for name, s in stats.items():
            w.writerow([stamp, platform.machine(), os.cpu_count(), platform.python_version(), torch.__version__,
                        args.task, args.rate_hz, args.state_hz, counts["states"], counts["states_acted_on"],
                        counts["commands_lost"], name, s["n"], f"{s['p50']:.3f}", f"{s['p99']:.3f}",
                        f"{s['mean']:.3f}", f"{s['std']:.3f}", f"{s['max']:.3f}", args.note])
    return 1 if counts["commands_lost"] or not counts["commands_received"] else 0


if __name__ == "__main__":
    sys.exit(main())
