"""``mbmpo launch train --sim``: the nodes of launch/train.launch.py as plain processes (no ``launch`` needed).

    mbmpo launch train --sim [--task T] [--robots N] [--run-dir DIR [--resume]] [--seed S] [--config FILE]
                             [--steps N] [--rate-hz HZ]

The node list is :func:`mbmpo_ros.graph.train_graph`, the one the launch file renders too. Each node is started
as ``python -m mbmpo_ros.<node> --ros-args --params-file config/<node>.yaml -p ... -r __node:=<name> -r
__ns:=/robot_i``, talking over real DDS (the ROS 2 wheels). Output is printed line by line with a ``[node]``
prefix. Bad arguments, and a ``--run-dir`` that holds a run without ``--resume``, are one line before any node
starts.

Stopping: Ctrl-C (SIGINT), SIGTERM and SIGHUP (a closed terminal, ``timeout``, a supervisor) stop every node
within 5 s: SIGINT to each, up to GRACE_S for them to finish (the learner abandons a running iteration after its
``shutdown_timeout_s``; its store and last checkpoint are durable), then SIGKILL. Every node is also asked by
the kernel (``PR_SET_PDEATHSIG``) to stop when the launcher dies, even by SIGKILL: no node outlives it.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from mbmpo_ros.cli import positive_int
from mbmpo_ros.graph import NodeDescription, ParamValue, default_config_file, resolve_config, train_graph

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
GRACE_S = 4.0  # after SIGINT; then SIGKILL: every node is gone within 5 s (the learner needs ~2 s mid-iteration)
KILL_WAIT_S = 0.8
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # handled like Ctrl-C (SIGINT: KeyboardInterrupt)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class StopSignal(Exception):
    """SIGTERM or SIGHUP reached the launcher: stop every node, exit with 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


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
    train.add_argument("--run-dir", default="", help="learner run directory (one that holds a run needs --resume)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --run-dir: its checkpoint (if any) and every stored transition")
    train.add_argument("--seed", type=_seed, default=-1,
                       help="random seed of the learner (default: the config's); robot i gets 1000 * seed + i")
    train.add_argument("--config", default="",
                       help="mbmpo YAML config (default: by device, config/default.yaml on CUDA, "
                            "config/cpu.yaml otherwise)")
    train.add_argument("--steps", type=positive_int, default=0,
                       help="stop when the learner has this many real steps (default: the config's "
                            "loop.total_steps)")
    train.add_argument("--rate-hz", type=float, default=0.0,
                       help="control rate of the controllers (0: the task's); lockstep sim robots follow it, so a "
                            "higher rate runs the simulation faster than real time")
    train.add_argument("--config-dir", type=Path, default=CONFIG_DIR, help=argparse.SUPPRESS)
    return parser


def _seed(text: str) -> int:
    """argparse type: a seed, a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return value


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
                        run_dir=args.run_dir, resume=args.resume, seed=args.seed, steps=args.steps,
                        rate_hz=args.rate_hz)
    return [NodeSpec(node.label, command_line(node)) for node in graph]


def check_run_dir(args: argparse.Namespace) -> None:
    """``--run-dir`` that holds a run needs ``--resume`` (and ``--resume`` a run); one-line ValueError."""
    from mbmpo_core.checkpoint import check_fresh_or_resume

    if args.run_dir:
        try:
            check_fresh_or_resume(args.run_dir, args.resume, how_to_resume="--resume")
        except ValueError as exc:
            raise ValueError(f"--run-dir {exc}") from None


def warm_up_warning(args: argparse.Namespace) -> str:
    """What happens when ``--steps`` is below the config's warm-up ('' if it is not)."""
    from mbmpo_core.config import load_config

    config = load_config(resolve_config(args.config_dir, args.config) or default_config_file(args.config_dir))
    warm_up = config.loop.random_steps
    if not args.steps or args.steps >= warm_up:
        return ""
    return (f"--steps {args.steps} is below the warm-up (loop.random_steps = {warm_up}): the learner stores "
            f"{args.steps} random steps and exits without training")


def _pump(label: str, proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        print(f"[{label}] {line}", end="", flush=True)


def start(spec: NodeSpec) -> subprocess.Popen[str]:
    """Start one node with its output pumped to ours; its own session, so a terminal's Ctrl-C is ours to relay,
    and the kernel's promise to stop it when we die."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(spec.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, preexec_fn=die_with_parent())
    threading.Thread(target=_pump, args=(spec.label, proc), daemon=True).start()
    return proc


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` after which the child gets ``signum`` when this process dies (Linux ``PR_SET_PDEATHSIG``),
    however it dies; None where the C library has no ``prctl``. ``prctl`` is looked up here, before the fork: the
    child only calls it (a parent that died before the call is caught by the ``getppid`` check)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def stop_all(procs: Sequence[subprocess.Popen[str]], grace_s: float = GRACE_S) -> None:
    """SIGINT every live child, wait up to ``grace_s``, then SIGKILL the stragglers (and reap them)."""
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGKILL, KILL_WAIT_S)):
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


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise StopSignal(signum)


def _ignore_stop_signals() -> dict[int, Any]:
    """While the nodes are being stopped, more signals must not cut that short (and leave some running); returns
    the handlers to put back."""
    return {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, *STOP_SIGNALS)}


def launch_main(argv: Sequence[str] | None = None) -> int:
    """``mbmpo launch ...``; returns the exit code (130 after Ctrl-C, 128 + N after signal N)."""
    args = _parser().parse_args(argv)
    try:
        check_run_dir(args)
        specs = train_nodes(args)
        warning = warm_up_warning(args)
    except ValueError as exc:  # a bad config, task or argument (ConfigError, UnknownTaskError, GraphError)
        print(f"mbmpo launch: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    if warning:
        print(f"mbmpo launch: warning: {warning}", file=sys.stderr, flush=True)
    main_thread = threading.current_thread() is threading.main_thread()  # (signals: the main thread's only)
    previous: dict[int, Any] = {sig: signal.signal(sig, _raise_stop) for sig in STOP_SIGNALS} if main_thread else {}
    if main_thread:
        # Ctrl-C stops the graph even where this process was started with SIGINT ignored (an ignored SIGINT is
        # inherited across exec, and the nodes would inherit it from us and ignore the SIGINT that stops them).
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    procs: list[subprocess.Popen[str]] = []
    try:
        for spec in specs:
            print(f"[launch] {spec.label}: {' '.join(spec.cmd)}", flush=True)
            procs.append(start(spec))
        return supervise(procs, [s.label for s in specs])
    except KeyboardInterrupt:
        print("[launch] Ctrl-C: stopping every node", file=sys.stderr, flush=True)
        return 130
    except StopSignal as stop:
        print(f"[launch] {stop}: stopping every node", file=sys.stderr, flush=True)
        return 128 + stop.signum
    finally:
        if main_thread:
            previous = {**_ignore_stop_signals(), **previous}
        stop_all(procs)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(launch_main())
