"""Learner ingest throughput over real DDS, without loss, with 1 and 8 robots.

    python benchmarks/ros_ingest.py --robots 1 8 --batches 300 --batch-size 200

The real ``mbmpo_ros.learner.Learner`` node runs in its own process (tiny config, ``loop.random_steps`` far
above what is sent, so no training iteration starts); every robot is a separate publisher process that sends
``--batches`` HalfCheetah-v5 ``TransitionBatch`` messages (obs 18 here: root x included; act 6;
``--batch-size`` rows, codec ``encode_transitions``, ``TRANSITIONS_QOS``: RELIABLE, KEEP_LAST 100) as fast as
flow control allows.

Flow control (``--flow``): RELIABLE + KEEP_LAST 100 is lossless only while neither side's history holds more
than 100 unconsumed batches; a publisher far faster than the learner's fsync'd ingest overwrites its oldest
samples. ``credit`` (default) keeps at most ``--window`` batches per robot beyond what the learner has
accepted: the learner process (this script's wrapper, not the node) publishes a tiny ``Int64`` credit per
accepted batch on ``/bench/ingest_ack/<robot>``, so the learner is never idle and no history overflows. ``acked``
waits for DDS acknowledgement (``wait_for_all_acked``) every ``--window`` batches (the reader's history can
still overflow: loss shows up in the check). ``none`` publishes back to back.

Measured at the learner (its own process): batches/s and transitions/s from the first to the last accepted
batch, the time of ``Ingest.handle`` per batch, of ``TransitionStore.append`` per batch and of the ``os.fsync``
calls inside it (file + directory). Loss check: every robot's counters show 0 gaps/missing/rejected/duplicate,
the store re-opened from disk holds exactly robots x batches x batch-size transitions, and every robot's
``step`` column (seq * batch_size + row, written by the publisher) is exactly 0..N-1 in order. Exits 1 on loss.

Rows are appended to benchmarks/results/ros_ingest.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results" / "ros_ingest.csv"
TASK = "HalfCheetah-v5"
TINY_CONFIG = {
    "task": TASK,
    "ensemble": {"num_models": 2, "hidden_sizes": [16, 16], "batch_size": 64, "max_epochs": 1},
    "policy": {"hidden_sizes": [8, 8]},
    "meta": {"meta_batch_size": 2, "rollouts_per_task": 2, "meta_steps": 1},
    "loop": {"random_steps": 10**12, "steps_per_iter": 10**12, "total_steps": 10**13, "eval_episodes": 1,
             "horizon": 200},
}


def robot_name(i: int) -> str:
    return f"robot_{i}"


def ack_topic(robot: str) -> str:
    return f"/bench/ingest_ack/{robot}"


# ------------------------------------------------------------------------------------------ learner process
def run_learner(args: argparse.Namespace) -> int:
    """Real Learner node + timing wrappers; writes a JSON result to args.out."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from std_msgs.msg import Int64

    import mbmpo_core.store as store_mod
    from mbmpo_ros.learner import Learner

    rclpy.init()
    robots = [robot_name(i) for i in range(args.num_robots)]
    node = Learner(parameter_overrides=[
        Parameter("config", value=args.config), Parameter("run_dir", value=args.run_dir),
        Parameter("robots", value=robots), Parameter("shutdown_timeout_s", value=5.0)])
    # Benchmark-only credit, one topic per robot (RELIABLE, depth 100): one Int64 per accepted batch.
    ack_pubs = {r: node.create_publisher(Int64, ack_topic(r), 100) for r in robots}
    expected = args.num_robots * args.batches * args.batch_size

    fsync_times: list[float] = []
    real_fsync = os.fsync

    def timed_fsync(fd: int) -> None:
        t0 = time.perf_counter()
        real_fsync(fd)
        fsync_times.append(time.perf_counter() - t0)

    store_mod.os.fsync = timed_fsync  # type: ignore[assignment]  # this process only
    append_times: list[float] = []
    store = node.ingest.store
    real_append = store.append

    def timed_append(batch: Any) -> Any:
        t0 = time.perf_counter()
        out = real_append(batch)
        append_times.append(time.perf_counter() - t0)
        return out

    store.append = timed_append  # type: ignore[method-assign]
    handle_times: list[float] = []
    accept_times: list[float] = []
    real_handle = node.ingest.handle

    def timed_handle(msg: Any, robot: str) -> Any:
        t0 = time.perf_counter()
        result = real_handle(msg, robot)
        t1 = time.perf_counter()
        handle_times.append(t1 - t0)
        if result.kind == "accepted":
            accept_times.append(t1)
            ack_pubs[robot].publish(Int64(data=1))
        return result

    node.ingest.handle = timed_handle  # type: ignore[method-assign]
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    Path(args.out + ".ready").write_text("ready")
    deadline = time.monotonic() + args.timeout
    while rclpy.ok() and node.ingest.stored() < expected and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.1)
        if any(c.rejected for c in node.ingest.counters.values()):
            print(f"learner: rejected batches: {[c.last_error for c in node.ingest.counters.values()]}",
                  file=sys.stderr)
            break
    # A short grace period catches duplicates or extra batches that would follow.
    grace = time.monotonic() + 1.0
    while rclpy.ok() and time.monotonic() < grace:
        executor.spin_once(timeout_sec=0.05)
    counters = {r: vars(c).copy() for r, c in node.ingest.counters.items()}
    iteration = node.iteration
    executor.remove_node(node)
    node.destroy_node()
    rclpy.try_shutdown()
    store_mod.os.fsync = real_fsync  # type: ignore[assignment]

    reopened = store_mod.TransitionStore(Path(args.run_dir) / "transitions")
    data = reopened.load_all()
    order_ok = {}
    for r in robots:
        steps = data["step"][data["robot"] == r]
        order_ok[r] = bool(steps.shape[0] == args.batches * args.batch_size
                           and np.array_equal(steps, np.arange(args.batches * args.batch_size)))
    n = len(accept_times)
    span = accept_times[-1] - accept_times[0] if n > 1 else float("nan")
    result = {
        "stored": len(reopened), "expected": expected, "accepted_batches": n, "counters": counters,
        "order_ok": order_ok, "training_iterations": iteration,
        "span_s": span, "batches_per_s": (n - 1) / span if n > 1 else float("nan"),
        "handle_ms": _pcts(handle_times), "append_ms": _pcts(append_times),
        "fsync_per_batch_ms": _pcts([sum(fsync_times[i:i + 2]) for i in range(0, len(fsync_times), 2)]),
        "fsyncs_per_batch": len(fsync_times) / max(1, len(append_times)),
    }
    result["transitions_per_s"] = result["batches_per_s"] * args.batch_size
    Path(args.out).write_text(json.dumps(result))
    return 0


def _pcts(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": float("nan"), "p50": float("nan"), "p99": float("nan")}
    arr = np.asarray(values) * 1e3
    return {"mean": float(arr.mean()), "p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99))}


# ------------------------------------------------------------------------------------------ publisher process
def make_messages(robot: str, batches: int, batch_size: int, seed: int) -> list[Any]:
    from mbmpo_ros.codec import TransitionBatch, encode_transitions
    from sim import make_task

    task = make_task(TASK, horizon=200)
    obs_dim, act_dim = task.obs_dim, task.act_dim
    rng = np.random.default_rng(seed)
    msgs = []
    for seq in range(batches):
        step = seq * batch_size + np.arange(batch_size, dtype=np.int64)
        obs = rng.standard_normal((batch_size, obs_dim))
        msgs.append(encode_transitions(TransitionBatch(
            obs=obs, act=rng.uniform(-1, 1, (batch_size, act_dim)), next_obs=obs + 0.01,
            reward=rng.standard_normal(batch_size), done=np.zeros(batch_size, bool), step=step,
            episode=np.zeros(batch_size, np.int64), adapted=np.zeros(batch_size, bool), robot=robot,
            policy_id="bench", seq=seq)))
    return msgs


def run_publisher(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.duration import Duration
    from rclpy.node import Node
    from std_msgs.msg import Float64MultiArray, Int64

    from mbmpo_ros.learner import transitions_topic
    from mbmpo_ros.qos import TRANSITIONS_QOS

    robot = robot_name(args.index)
    msgs = make_messages(robot, args.batches, args.batch_size, seed=args.index)
    rclpy.init()
    node = Node(f"bench_publisher_{args.index}")
    pub = node.create_publisher(Float64MultiArray, transitions_topic(robot), TRANSITIONS_QOS)
    credits = [0]

    def on_ack(msg: Int64) -> None:
        credits[0] += 1

    node.create_subscription(Int64, ack_topic(robot), on_ack, 100)
    deadline = time.monotonic() + 30.0
    while (pub.get_subscription_count() == 0 or node.count_publishers(ack_topic(robot)) == 0) \
            and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    for _ in range(10):  # let the ack topic's endpoints match both ways
        rclpy.spin_once(node, timeout_sec=0.02)
    Path(args.out + ".matched").write_text("1")
    while not Path(args.go).exists():
        time.sleep(0.005)
    t0 = time.perf_counter()
    for seq, msg in enumerate(msgs):
        if args.flow == "credit":
            while seq - credits[0] >= args.window:
                rclpy.spin_once(node, timeout_sec=0.01)
        pub.publish(msg)
        if args.flow == "credit":
            rclpy.spin_once(node, timeout_sec=0.0)
        elif args.flow == "acked" and (seq + 1) % args.window == 0:
            pub.wait_for_all_acked(Duration(seconds=30))
    publish_s = time.perf_counter() - t0
    acked = pub.wait_for_all_acked(Duration(seconds=60))
    Path(args.out).write_text(json.dumps({"publish_s": publish_s, "all_acked": bool(acked)}))
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


# ------------------------------------------------------------------------------------------ orchestration
def run_case(args: argparse.Namespace, num_robots: int, env: dict[str, str]) -> dict[str, Any]:
    import yaml

    work = Path(tempfile.mkdtemp(prefix="mbmpo_ingest_", dir=args.tmp_dir))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        config = work / "config.yaml"
        config.write_text(yaml.safe_dump(TINY_CONFIG))
        me = [sys.executable, str(Path(__file__).resolve())]
        common = ["--batches", str(args.batches), "--batch-size", str(args.batch_size)]
        learner_out = str(work / "learner.json")
        learner = subprocess.Popen(
            [*me, "--role", "learner", "--num-robots", str(num_robots), "--config", str(config),
             "--run-dir", str(work / "run"), "--out", learner_out, "--timeout", str(args.timeout), *common],
            env=env)
        procs.append(learner)
        _wait_files([learner_out + ".ready"], 120, procs)
        go = str(work / "go")
        pub_outs = [str(work / f"pub{i}.json") for i in range(num_robots)]
        for i in range(num_robots):
            procs.append(subprocess.Popen(
                [*me, "--role", "publisher", "--index", str(i), "--out", pub_outs[i], "--go", go, "--flow",
                 args.flow, "--window", str(args.window), *common], env=env))
        _wait_files([p + ".matched" for p in pub_outs], 120, procs)
        time.sleep(0.5)
        Path(go).write_text("go")
        rcs = [p.wait(timeout=args.timeout + 120) for p in procs]
        if any(rcs):
            raise RuntimeError(f"a benchmark process failed: exit codes {rcs}")
        result = json.loads(Path(learner_out).read_text())
        result["publishers"] = [json.loads(Path(p).read_text()) for p in pub_outs]
        return result
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(work, ignore_errors=True)


def _wait_files(paths: list[str], timeout: float, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout
    while not all(os.path.exists(p) for p in paths):
        if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
            raise RuntimeError(f"benchmark processes did not get ready ({paths})")
        time.sleep(0.05)


def loss_report(result: dict[str, Any], num_robots: int) -> list[str]:
    problems = []
    if result["stored"] != result["expected"]:
        problems.append(f"store holds {result['stored']} transitions, {result['expected']} were sent")
    for robot, c in result["counters"].items():
        bad = {k: c[k] for k in ("rejected", "duplicate", "gaps", "missing", "reordered", "restarts") if c[k]}
        if bad:
            problems.append(f"{robot}: {bad}")
    problems += [f"{r}: step column not 0..N-1 in order" for r, ok in result["order_ok"].items() if not ok]
    if len(result["counters"]) != num_robots:
        problems.append(f"only {len(result['counters'])} of {num_robots} robots were heard")
    if result["training_iterations"]:
        problems.append("a training iteration ran during the measurement")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--robots", type=int, nargs="+", default=[1, 8], help="robot counts to measure")
    parser.add_argument("--batches", type=int, default=300, help="batches each robot sends")
    parser.add_argument("--batch-size", type=int, default=200, help="transitions per batch")
    parser.add_argument("--flow", choices=("credit", "acked", "none"), default="credit")
    parser.add_argument("--window", type=int, default=50, help="batches in flight per robot (< QoS depth 100)")
    parser.add_argument("--domain-id", type=int, default=37)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds the learner waits for all data")
    parser.add_argument("--tmp-dir", default=None, help="where the learner's store is written (then deleted)")
    parser.add_argument("--csv", default=str(RESULTS))
    parser.add_argument("--note", default="", help="free text for the CSV (e.g. other load on the machine)")
    # internal roles
    parser.add_argument("--role", choices=("main", "learner", "publisher"), default="main", help=argparse.SUPPRESS)
    for name in ("--config", "--run-dir", "--out", "--go"):
        parser.add_argument(name, default="", help=argparse.SUPPRESS)
    parser.add_argument("--num-robots", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "learner":
        return run_learner(args)
    if args.role == "publisher":
        return run_publisher(args)

    env = {**os.environ, "ROS_DOMAIN_ID": str(args.domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    import torch

    lost = False
    for num_robots in args.robots:
        result = run_case(args, num_robots, env)
        problems = loss_report(result, num_robots)
        lost |= bool(problems)
        print(f"{num_robots} robot(s), flow {args.flow}: {result['accepted_batches']} batches in "
              f"{result['span_s']:.2f} s = {result['batches_per_s']:.1f} batches/s, "
              f"{result['transitions_per_s']:.0f} transitions/s; handle p50 {result['handle_ms']['p50']:.2f} ms, "
              f"append p50 {result['append_ms']['p50']:.2f} ms, fsync/batch p50 "
              f"{result['fsync_per_batch_ms']['p50']:.2f} ms p99 {result['fsync_per_batch_ms']['p99']:.2f} ms; "
              f"{'LOSS: ' + '; '.join(problems) if problems else 'no loss'}", flush=True)
        path = Path(args.csv)
        new = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["time_utc", "machine", "cpus", "python", "torch", "rmw", "robots", "batches_per_robot",
                            "batch_size", "flow", "window", "sent_transitions", "stored_transitions", "lossless",
                            "span_s", "batches_per_s", "transitions_per_s", "handle_p50_ms", "handle_p99_ms",
                            "append_p50_ms", "append_p99_ms", "fsync_per_batch_p50_ms", "fsync_per_batch_p99_ms",
                            "fsync_per_batch_mean_ms", "note"])
            w.writerow([time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), platform.machine(), os.cpu_count(),
                        platform.python_version(), torch.__version__,
                        os.environ.get("RMW_IMPLEMENTATION", "default (rmw_fastrtps_cpp)"), num_robots,
                        args.batches, args.batch_size, args.flow, args.window, result["expected"],
                        result["stored"], not problems, f"{result['span_s']:.3f}",
                        f"{result['batches_per_s']:.1f}", f"{result['transitions_per_s']:.0f}",
                        f"{result['handle_ms']['p50']:.3f}", f"{result['handle_ms']['p99']:.3f}",
                        f"{result['append_ms']['p50']:.3f}", f"{result['append_ms']['p99']:.3f}",
                        f"{result['fsync_per_batch_ms']['p50']:.3f}", f"{result['fsync_per_batch_ms']['p99']:.3f}",
                        f"{result['fsync_per_batch_ms']['mean']:.3f}", args.note])
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
