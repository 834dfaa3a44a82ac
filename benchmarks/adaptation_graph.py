"""Few-shot adaptation through the ROS 2 graph: a perturbed ``sim_robot`` and the real ``controller`` node.

    python benchmarks/adaptation_graph.py --task HalfCheetah-v5 \\
        --policy MB-MPO=benchmarks/results/runs/HalfCheetah-v5-cpu_small-s0/policy.onnx \\
        --policy ME-TRPO=benchmarks/results/runs/HalfCheetah-v5-cpu_small_metrpo-s0/policy.onnx \\
        --seeds 0 1 2 --adapt-episodes 4 --steps 3 --adapt-modes model direct \\
        --out benchmarks/results/adaptation_graph_HalfCheetah-v5.csv \\
        --plot benchmarks/results/adaptation_graph_HalfCheetah-v5.png

Per (policy, perturbation, seed) one run, as on a robot:

* a ``sim_robot`` process (lockstep, ``perturbation`` = one of :data:`adaptation.PERTURBATIONS`, seed
  ``1000 * seed``) in a namespace of its own;
* in this process the real :class:`mbmpo_ros.controller.Controller` in that namespace, with online adaptation on
  (``adapt_episodes`` = ``--adapt-episodes``, ``adapt_steps_max`` = ``--steps``, no revert, ``explore`` true,
  ``ramp_s`` 0, ``rate_hz`` = ``--rate-hz``); the policy (with its inner-step graph) arrives latched on
  ``/mbmpo/policy`` as the learner sends it. The controller runs theta, hands the recorded episodes to its worker
  thread for the ONNX inner step, switches to theta' at an episode start, and so on for ``--steps`` steps.

A benchmark-only subclass of the controller notes, for every episode the robot finished, the number of inner
steps of the parameters that ran it, its return and whether it was interrupted by a hold, and the start time of
every tick once the policy runs, whether an inner step was running in the worker thread at that moment, and
the wall time of every inner step (advantages + ONNX step).

Reported per run: ``return_theta`` / ``return_<k>step`` = mean return of the uninterrupted episodes run by theta /
by the parameters after k inner steps (the stochastic episodes the robot really ran, not deterministic
evaluations), and the tick intervals while an inner step runs and while none does. ME-TRPO policies
(``inner_lr`` 0) carry an inner-step graph that returns theta unchanged: the same protocol measures them as the
baseline.

Adaptation modes (``--adapt-modes``, the controller's ``adapt_mode``): ``model`` identifies the bundle's dynamics
ensemble on the real episodes and takes the step on ``--imagined-rollouts`` imagined rollouts from their starts;
``direct`` takes it on the real episodes. With several modes every (policy, perturbation, seed) runs once per mode
(same seeds: paired) and the variant is named ``<policy> [<mode>]``. Per run the CSV also holds the mode the
controller used (``mode_used``: a bundle without dynamics falls back to direct), the held-out one-step error of
the identified member before and after identification (mean over the steps) and the seconds per step.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adaptation import PERTURBATIONS, plot, summary

ROOT = Path(__file__).resolve().parent.parent
SIM_SEED_STRIDE = 1000  # > episodes per run


@dataclass
class EpisodeRecord:
    policy_id: str
    inner_steps: int
    ret: float
    length: int
    interrupted: bool


def make_recording_controller(**kwargs: Any) -> Any:
    """The real controller plus episode and tick records (benchmark only)."""
    from mbmpo_ros.controller import Controller

    class RecordingController(Controller):
        def __init__(self, **kw: Any) -> None:
            self.episodes: list[EpisodeRecord] = []
            self.ticks: list[float] = []  # monotonic start of every tick
            self.step_spans: list[tuple[float, float]] = []  # monotonic (start, end) of each inner step
            self.results: list[Any] = []  # the AdaptResult of each inner step
            self._ep_meta: tuple[str, int] = ("", 0)
            self._ep_interrupted = False
            super().__init__(**kw)

        def _tick(self) -> None:
            if self.policy is not None:  # from the first tick with the benchmarked policy (not start-up)
                self.ticks.append(time.monotonic())
            super()._tick()

        def _submit(self, job: Any) -> None:
            if job is not None:  # time the inner step in the worker thread
                run = job.run

                def timed_run() -> Any:
                    t0 = time.monotonic()
                    try:
                        result = run()
                        self.results.append(result)
                        return result
                    finally:
                        self.step_spans.append((t0, time.monotonic()))

                job.run = timed_run
            super()._submit(job)

        def _act(self, obs: np.ndarray) -> None:
            first = self.book.step == 0
            super()._act(obs)
            if first:  # the parameters are chosen at an episode's first step (begin_step)
                self._ep_meta = (self.policy_id, self.adapter.steps)
                self._ep_interrupted = False

        def _hold(self, reason: Any) -> None:
            self._ep_interrupted = True
            super()._hold(reason)

        def _close_transition(self, obs: np.ndarray) -> bool:
            ended = super()._close_transition(obs)
            if ended:
                pid, steps = self._ep_meta
                self.episodes.append(EpisodeRecord(pid, steps, self.book.episode_return, self.book.step,
                                                   self._ep_interrupted))
            return ended

    return RecordingController(**kwargs)


def start_sim_robot(task: str, namespace: str, perturbation: dict, seed: int) -> subprocess.Popen[bytes]:
    # A YAML-quoted string holding JSON ('' = nominal): unquoted, --ros-args would parse the JSON as a YAML map.
    pert = f"'{json.dumps(perturbation)}'" if perturbation else "''"
    cmd = [sys.executable, "-m", "mbmpo_ros.sim_robot", "--ros-args", "-p", f"task:={task}", "-p", f"seed:={seed}",
           "-p", "lockstep:=true", "-p", f"perturbation:={pert}", "-r", f"__ns:=/{namespace}"]
    return subprocess.Popen(cmd, cwd=ROOT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_case(args: argparse.Namespace, policy_id: str, horizon: int, namespace: str, pert: dict, seed: int,
             driver: Any, mode: str) -> tuple[list[EpisodeRecord], list[float], list[tuple[float, float]], list[Any]]:
    """One deployment: sim_robot + controller until the parameters of ``--steps`` inner steps ran a batch."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    # sim_robot resets with its seed + reset count: seeds 1000 apart keep runs from sharing initial states.
    robot = start_sim_robot(args.task, namespace, pert, SIM_SEED_STRIDE * seed)
    params = {"task": args.task, "horizon": horizon, "rate_hz": float(args.rate_hz), "seed": seed, "explore": True,
              "adapt": True, "adapt_episodes": args.adapt_episodes, "adapt_steps_max": args.steps,
              "revert_margin": -1.0, "ramp_s": 0.0, "adapt_mode": mode,
              "adapt_imagined_rollouts": args.imagined_rollouts}
    ctrl = make_recording_controller(namespace=namespace, parameter_overrides=[Parameter(k, value=v)
                                                                               for k, v in params.items()])
    executor = SingleThreadedExecutor()
    executor.add_node(ctrl)
    executor.add_node(driver)

    def done() -> bool:
        last = [e for e in ctrl.episodes if e.policy_id == policy_id and e.inner_steps == args.steps]
        return len(last) >= args.adapt_episodes

    deadline = time.monotonic() + args.timeout_s
    try:
        while not done() and time.monotonic() < deadline and robot.poll() is None:
            executor.spin_once(timeout_sec=0.05)
    finally:
        executor.remove_node(driver)
        ctrl.destroy_node()
        executor.shutdown()
        stop(robot)
    if robot.returncode not in (None, 0, -signal.SIGINT):
        print(f"  sim_robot exited with code {robot.returncode}", flush=True)
    elif not done():
        print(f"  timed out after {args.timeout_s:.0f} s ({len(ctrl.episodes)} episodes)", flush=True)
    return [e for e in ctrl.episodes if e.policy_id == policy_id], ctrl.ticks, ctrl.step_spans, ctrl.results


def step_row(results: list[Any]) -> dict[str, Any]:
    """The mode the controller used and, averaged over the run's inner steps, the identified member's held-out
    one-step error before / after identification (NaN in direct mode) and the seconds per step."""
    def mean(values: list[float]) -> float:
        finite = [v for v in values if np.isfinite(v)]
        return float(np.mean(finite)) if finite else float("nan")

    modes = sorted({r.mode for r in results})
    return {"mode_used": "+".join(modes) or "none",
            "ident_error_before": mean([r.ident_errors[0] for r in results]),
            "ident_error_after": mean([r.ident_errors[1] for r in results]),
            "step_s": mean([r.job_s for r in results])}


def case_row(episodes: list[EpisodeRecord], steps: int) -> dict[str, float]:
    """Mean return per number of inner steps (NaN where no uninterrupted episode ran)."""
    row: dict[str, float] = {}
    for k in range(steps + 1):
        rets = [e.ret for e in episodes if e.inner_steps == k and not e.interrupted]
        row["return_theta" if k == 0 else f"return_{k}step"] = float(np.mean(rets)) if rets else float("nan")
    row["episodes"] = float(len(episodes))
    row["interrupted"] = float(sum(e.interrupted for e in episodes))
    return row


def tick_intervals(ticks: list[float], spans: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """One run's tick-start intervals (ms) ``[n-1]`` and whether an inner step ran during each interval (a tick
    the worker thread delays starts late, after the step: the interval, not the tick, overlaps it)."""
    if len(ticks) < 2:
        return np.zeros(0), np.zeros(0, bool)
    t = np.array(ticks)
    overlap = np.zeros(len(t) - 1, bool)
    for start, end in spans:
        overlap |= (t[:-1] < end) & (t[1:] > start)
    return np.diff(t) * 1e3, overlap


def tick_stats(intervals: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, dict[str, float]]:
    """p50 / p99 / max of the tick intervals of all runs, split by whether an inner step was running."""
    dt = np.concatenate([d for d, _ in intervals])
    busy = np.concatenate([b for _, b in intervals])
    out = {}
    for name, sel in (("overlapping an inner step", busy), ("no inner step", ~busy)):
        d = dt[sel]
        out[name] = ({"n": float(d.size), "p50": float(np.percentile(d, 50)), "p99": float(np.percentile(d, 99)),
                      "max": float(d.max())} if d.size else {"n": 0.0})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="HalfCheetah-v5")
    ap.add_argument("--policy", action="append", required=True, metavar="NAME=PATH",
                    help="a policy variant: a name and its policy.onnx (inner-step graph beside it); repeatable")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--perturbations", nargs="+", default=list(PERTURBATIONS), choices=list(PERTURBATIONS))
    ap.add_argument("--adapt-episodes", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--adapt-modes", nargs="+", default=["model"], choices=["model", "direct"],
                    help="the controller's adapt_mode; several: each run once per mode (paired seeds)")
    ap.add_argument("--imagined-rollouts", type=int, default=20, help="model mode: imagined rollouts per step")
    ap.add_argument("--rate-hz", type=float, default=500.0, help="controller rate (lockstep: sets the sim speed)")
    ap.add_argument("--timeout-s", type=float, default=300.0, help="per run")
    ap.add_argument("--domain-id", type=int, default=41)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--plot", type=Path, required=True)
    args = ap.parse_args()
    variants = []
    for spec in args.policy:
        name, sep, path = spec.partition("=")
        if not sep or not Path(path).is_file():
            ap.error(f"--policy needs NAME=PATH to an existing policy.onnx, got '{spec}'")
        variants.append((name, Path(path)))
    os.environ["ROS_DOMAIN_ID"] = str(args.domain_id)  # before rclpy starts, and inherited by the sim_robots
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

    import rclpy
    from rclpy.node import Node
    from std_msgs.msg import UInt8MultiArray

    from mbmpo_core.onnx_runtime import read_policy_bundle
    from mbmpo_ros.codec import encode_policy
    from mbmpo_ros.qos import POLICY_QOS

    rclpy.init()
    driver = Node("adaptation_graph_driver")
    rows: list[dict[str, Any]] = []
    intervals: list[tuple[np.ndarray, np.ndarray]] = []
    step_ms: list[float] = []
    run = 0
    for name, path in variants:
        bundle = read_policy_bundle(path, expected_task=args.task)
        policy_id, horizon = bundle.policy_id, int(bundle.metadata["horizon"])
        publisher = driver.create_publisher(UInt8MultiArray, "/mbmpo/policy", POLICY_QOS)
        publisher.publish(encode_policy(bundle))
        for pname in args.perturbations:
            pert = PERTURBATIONS[pname]
            for seed, mode in ((s, m) for s in args.seeds for m in args.adapt_modes):
                t0 = time.perf_counter()
                namespace = f"adapt_bench_{run}"
                episodes, case_ticks, case_spans, results = run_case(args, policy_id, horizon, namespace, pert, seed,
                                                                     driver, mode)
                run += 1
                variant = f"{name} [{mode}]" if len(args.adapt_modes) > 1 else name
                row = {"policy": variant, "perturbation": pname, "seed": seed, "mode": mode,
                       **case_row(episodes, args.steps), **step_row(results)}
                rows.append(row)
                intervals.append(tick_intervals(case_ticks, case_spans))
                step_ms += [1e3 * (end - start) for start, end in case_spans]
                print(f"{variant:>10} {pname:>15} s{seed}: " + " ".join(
                    f"{k}={v:.1f}" for k, v in row.items() if k.startswith("return"))
                      + f" ({row['episodes']:.0f} episodes, {time.perf_counter() - t0:.1f} s; {row['mode_used']}, "
                      f"ident error {row['ident_error_before']:.3g} -> {row['ident_error_after']:.3g})", flush=True)
        driver.destroy_publisher(publisher)
    driver.destroy_node()
    rclpy.try_shutdown()
    write_csv(rows, args.out)
    plot(rows, args.steps, args.plot, f"{args.task} through sim_robot + controller (ROS 2): return of the episodes "
         "run by theta and by theta' after k inner steps", ylabel="return (stochastic episodes)")
    print(summary(rows, args.steps))
    print(f"tick intervals (ms) at {args.rate_hz:g} Hz:", json.dumps(tick_stats(intervals)))
    if step_ms:
        print(f"inner step wall time (ms, {len(step_ms)} steps): p50 {np.percentile(step_ms, 50):.2f} "
              f"max {max(step_ms):.2f}")
    print(f"wrote {args.out} and {args.plot}")


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


if __name__ == "__main__":
    main()
