"""``mbmpo launch train --sim``: the nodes of launch/train.launch.py as plain processes (no ``launch`` needed).

    mbmpo launch train --sim [--task T] [--robots N] [--run-dir DIR] [--config FILE] [--steps N] [--rate-hz HZ]

The node list is :func:`mbmpo_ros.graph.train_graph`, the one the launch file renders too. Each node is started
as ``python -m mbmpo_ros.<node> --ros-args --params-file config/<node>.yaml -p ... -r __node:=<name> -r
__ns:=/robot_i``, talking over real DDS (the ROS 2 wheels). Output is printed line by line with a ``[node]``
prefix. Ctrl-C (or the learner reaching ``--steps``) stops everything: SIGINT to every child, a grace period,
then SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from mbmpo_ros.graph import NodeDescription, ParamValue, train_graph

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
GRACE_S = 15.0  # the learner may be finishing an iteration; its store is durable either way


@dataclass
class NodeSpec:
    """One node process: a label for its output and its command line."""

    label: str
    cmd: list[str]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mbmpo launch", description="start the mbmpo ROS 2 nodes without ros2 launch")
    sub = parser.add_subparsers(dest="what", required=True)
    train = sub.add_parser("train", help="learner + controllers (+ simulated robots with --sim)")
    train.add_argument("--sim", action="store_true", help="start a MuJoCo sim_robot per robot namespace")
    train.add_argument("--task", default="", help="task name (default: the config's)")
    train.add_argument("--robots", type=int, default=1, help="number of robots (namespaces robot_0..)")
    train.add_argument("--run-dir", default="", help="learner run directory")
    train.add_argument("--config", default="", help="mbmpo YAML config (default: config/default.yaml)")
    train.add_argument("--steps", type=int, default=0, help="stop when the learner has this many real steps")
    train.add_argument("--rate-hz", type=float, default=0.0,
                       help="control rate of the controllers (0: the task's); lockstep sim robots follow it, so a "
                            "higher rate runs the simulation faster than real time")
    train.add_argument("--config-dir", type=Path, default=CONFIG_DIR, help=argparse.SUPPRESS)
    return parser


def ros_arg_value(value: ParamValue) -> str:
    """``value`` as the YAML that ``--ros-args -p name:=<text>`` parses back to the same type and value
    (``2.0`` stays a double, ``'123'`` a string, a list a string array)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30)
    return text.removesuffix("...\n").strip()


def command_line(node: NodeDescription) -> list[str]:
    """``python -m <module> --ros-args`` with the node's parameter files, overrides, name and namespace."""
    cmd = [sys.executable, "-m", node.module, "--ros-args"]
    for path in node.parameter_files:
        cmd += ["--params-file", str(path)]
    for key, value in node.overrides.items():
        cmd += ["-p", f"{key}:={ros_arg_value(value)}"]
    cmd += ["-r", f"__node:={node.name}"]
    if node.namespace:
        cmd += ["-r", f"__ns:=/{node.namespace}"]
    return cmd


def train_nodes(args: argparse.Namespace) -> list[NodeSpec]:
    """The process list of ``launch train``: :func:`mbmpo_ros.graph.train_graph`, rendered as command lines."""
    graph = train_graph(args.config_dir, sim=args.sim, robots=args.robots, task=args.task, config=args.config,
                        run_dir=args.run_dir, steps=args.steps, rate_hz=args.rate_hz)
    return [NodeSpec(node.label, command_line(node)) for node in graph]


def _pump(label: str, proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        print(f"[{label}] {line}", end="", flush=True)


def start(spec: NodeSpec) -> subprocess.Popen[str]:
    """Start one node with its output pumped to ours; its own process group, so our Ctrl-C is ours to relay."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(spec.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    threading.Thread(target=_pump, args=(spec.label, proc), daemon=True).start()
    return proc


def stop_all(procs: Sequence[subprocess.Popen[str]], grace_s: float = GRACE_S) -> None:
    """SIGINT every live child, wait ``grace_s``, then SIGTERM, then SIGKILL the stragglers."""
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        live = [p for p in procs if p.poll() is None]
        for proc in live:
            proc.send_signal(sig)
        deadline = time.monotonic() + wait_s
        for proc in live:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass


def supervise(procs: Sequence[subprocess.Popen[str]], labels: Sequence[str]) -> int:
    """Wait until the learner (first process) exits or any node dies; returns the exit code of the run."""
    while True:
        for proc, label in zip(procs, labels, strict=True):
            code = proc.poll()
            if code is None:
                continue
            if proc is procs[0] and code == 0:
                print("[launch] learner finished", flush=True)
                return 0
            print(f"[launch] {label} exited with code {code}; stopping the others", file=sys.stderr, flush=True)
            return code or 1
        time.sleep(0.2)


def launch_main(argv: Sequence[str] | None = None) -> int:
    """``mbmpo launch ...``; returns the exit code (130 after Ctrl-C)."""
    args = _parser().parse_args(argv)
    try:
        specs = train_nodes(args)
    except ValueError as exc:  # a bad config, task or argument (ConfigError, UnknownTaskError, GraphError)
        print(f"mbmpo launch: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    procs: list[subprocess.Popen[str]] = []
    try:
        for spec in specs:
            print(f"[launch] {spec.label}: {' '.join(spec.cmd)}", flush=True)
            procs.append(start(spec))
        return supervise(procs, [s.label for s in specs])
    except KeyboardInterrupt:
        print("[launch] Ctrl-C: stopping every node", file=sys.stderr, flush=True)
        return 130
    finally:
        stop_all(procs)


if __name__ == "__main__":
    sys.exit(launch_main())
