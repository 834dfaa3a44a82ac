"""At-least-once delivery, exactly-once storage, over real DDS: the learner process is killed with SIGKILL at
random moments of a simulated run and restarted with ``resume``; in the end the store holds every batch the
controller made, each exactly once.

Processes: sim_robot, controller and learner, as ``mbmpo launch`` starts them (:mod:`mbmpo_ros.graph` rendered by
:mod:`mbmpo_ros.launcher`). The learner never trains (a warm-up longer than the run), so the test measures
delivery only and stays well under two minutes.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from mbmpo_core.store import TransitionStore

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[2]
CONFIG = {"task": "InvertedPendulum-v5", "loop": {"random_steps": 10**9, "horizon": 20}}


def node_commands(run_dir: Path, config: Path) -> dict[str, list[str]]:
    """Command lines of learner, controller and sim_robot (fast: 200 Hz, batches of 10 transitions)."""
    from mbmpo_ros.graph import train_graph
    from mbmpo_ros.launcher import CONFIG_DIR, command_line

    nodes = train_graph(CONFIG_DIR, sim=True, config=str(config), run_dir=str(run_dir), rate_hz=200.0)
    out = {}
    for node in nodes:
        if node.executable == "controller":
            node = dataclasses.replace(node, overrides={**node.overrides, "batch_size": 10})
        out[node.executable] = command_line(node)
    return out


class Procs:
    """Node processes of one test; every one still running at the end is killed."""

    def __init__(self, domain_id: int, log_dir: Path) -> None:
        self.env = {**os.environ, "ROS_DOMAIN_ID": str(domain_id), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self.log_dir = log_dir
        self.all: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}-{len(self.all)}.log").open("wb")
        proc = subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.all.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(self.log_dir.glob("*.log")))

    def close(self) -> None:
        for proc in self.all:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def wait_for(condition: Callable[[], bool], timeout: float, what: str, procs: Procs) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{procs.logs()}")
        time.sleep(0.1)


def stored_keys(run_dir: Path) -> list[tuple[str, str, int]]:
    path = run_dir / "transitions"
    if not (path / "store.json").is_file():
        return []
    return [(k.robot, k.session, k.seq) for k in TransitionStore(path).batch_keys()]


def test_learner_killed_at_random_moments_loses_and_duplicates_nothing(ros_graph: Any, tmp_path: Path) -> None:
    from diagnostic_msgs.msg import DiagnosticArray

    from mbmpo_ros.qos import DIAGNOSTICS_QOS

    run_dir, config = tmp_path / "run", tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    cmds = node_commands(run_dir, config)
    controller_status: dict[str, str] = {}

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("mbmpo/controller/"):
                controller_status.update({kv.key: kv.value for kv in status.values})

    ros_graph.node("diag_probe").create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics,
                                                     DIAGNOSTICS_QOS)
    procs = Procs(ros_graph.domain_id, tmp_path)
    rng = random.Random(12)
    try:
        learner = procs.start("learner", cmds["learner"])
        procs.start("sim_robot", cmds["sim_robot"])
        controller = procs.start("controller", cmds["controller"])
        wait_for(lambda: len(stored_keys(run_dir)) >= 10, 60.0, "the first stored batches", procs)
        for _ in range(3):
            time.sleep(rng.uniform(0.2, 3.0))  # a random moment of the stream
            learner.send_signal(signal.SIGKILL)
            learner.wait(timeout=10)
            time.sleep(rng.uniform(0.0, 2.0))
            before = len(stored_keys(run_dir))
            learner = procs.start("learner", [*cmds["learner"], "-p", "resume:=true"])
            wait_for(lambda n=before: len(stored_keys(run_dir)) > n + 5, 60.0, "the restarted learner", procs)
        # Stop the robot: the controller holds (no new batches) and delivers what it still has.
        procs.all[1].send_signal(signal.SIGINT)
        procs.all[1].wait(timeout=20)

        def delivered() -> bool:
            ros_graph.spin_until(lambda: False, 0.5)
            made = int(controller_status.get("batches_made", "-1"))
            unacked = controller_status.get("batches_unacknowledged")
            return made > 0 and unacked == "0" and len(stored_keys(run_dir)) >= made

        wait_for(delivered, 60.0, "the controller's last batches to be acknowledged", procs)
        assert controller.poll() is None and learner.poll() is None, procs.logs()
        made, session = int(controller_status["batches_made"]), controller_status["session"]
        keys = stored_keys(run_dir)
        counts = Counter(seq for robot, sess, seq in keys if (robot, sess) == ("robot_0", session))
        assert sorted(counts) == list(range(made)), f"missing {sorted(set(range(made)) - set(counts))[:20]}"
        assert max(counts.values()) == 1, [seq for seq, n in counts.items() if n > 1][:20]
        assert len(keys) == made  # nothing from elsewhere
        assert made > 40 and int(controller_status["batches_dropped"]) == 0
        print(f"delivery: {made} batches made, {controller_status['batches_resent']} resent, "
              f"{controller_status['batches_sent']} sends")
    finally:
        procs.close()

