"""Ctrl-C as ``ros2 launch`` delivers it (the terminal's SIGINT, then the one launch relays): every node process
stops within 5 s, exit code 0, no traceback; the learner too in the middle of an iteration, with its last
checkpoint intact."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("rclpy", reason="needs the ROS 2 wheels (pip install -e '.[ros]')")

from node_helpers import collect
from test_learner import TINY, real_batches

pytestmark = pytest.mark.ros
ROOT = Path(__file__).resolve().parents[2]
STOP_WITHIN_S = 5.0


def start(graph: Any, module: str, *ros_args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "ROS_DOMAIN_ID": str(graph.domain_id)}
    return subprocess.Popen([sys.executable, "-m", module, "--ros-args", *ros_args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def interrupt(proc: subprocess.Popen[str]) -> tuple[float, str]:
    """SIGINT twice, 0.2 s apart (the terminal's and the one launch relays); (seconds to exit, output)."""
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return time.monotonic() - started, out


def diagnostic_values(seen: list[Any], name: str) -> dict[str, str]:
    """The newest values of the status ``name`` on /diagnostics ({} if none yet)."""
    for msg in reversed(seen):
        for status in msg.status:
            if status.name == name:
                return {kv.key: kv.value for kv in status.values}
    return {}


@pytest.mark.parametrize("node", ["controller", "sim_robot"])
def test_node_stops_within_5s_of_ctrl_c_without_a_traceback(ros_graph: Any, node: str) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import JointState

    from mbmpo_ros.qos import DIAGNOSTICS_QOS, STATE_QOS

    states = collect(ros_graph, "/s1/joint_states", JointState, STATE_QOS)
    seen = collect(ros_graph, "/diagnostics", DiagnosticArray, DIAGNOSTICS_QOS)
    proc = start(ros_graph, f"mbmpo_ros.{node}", "-p", "task:=InvertedPendulum-v5", "-r", "__ns:=/s1")
    up = (lambda: diagnostic_values(seen, "mbmpo/controller/s1") != {}) if node == "controller" else (
        lambda: len(states) > 0)
    try:
        assert ros_graph.spin_until(up, timeout=60.0), f"{node} did not come up"
    finally:
        seconds, out = interrupt(proc)
    assert proc.returncode == 0 and seconds < STOP_WITHIN_S, (seconds, out[-3000:])
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]


def test_learner_stops_within_5s_mid_iteration_with_its_checkpoint_intact(ros_graph: Any, tmp_path: Path) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from std_msgs.msg import Float64MultiArray

    from mbmpo_core.checkpoint import read_checkpoint
    from mbmpo_ros.codec import encode_transitions
    from mbmpo_ros.qos import DIAGNOSTICS_QOS, TRANSITIONS_QOS

    # Slow enough that the iteration is still running 2 s (shutdown_timeout_s) after Ctrl-C: the exact KL Hessian
    # on every time step and 200 meta-steps (with the default first-order, subsampled step 30 meta-steps ended
    # within those 2 s and nothing was abandoned).
    config = tmp_path / "slow.yaml"
    config.write_text(yaml.safe_dump({**TINY, "meta": {**TINY["meta"], "meta_steps": 200, "kl_hessian": "exact",
                                                       "hvp_subsample": 1.0},
                                      "loop": {**TINY["loop"], "total_steps": 10**6}}))
    run = tmp_path / "run"
    seen = collect(ros_graph, "/diagnostics", DiagnosticArray, DIAGNOSTICS_QOS)
    pub = ros_graph.node("fake_controller").create_publisher(Float64MultiArray, "/robot_0/mbmpo/transitions",
                                                             TRANSITIONS_QOS)
    proc = start(ros_graph, "mbmpo_ros.learner", "-p", f"config:={config}", "-p", f"run_dir:={run}")
    batches = [encode_transitions(b) for b in real_batches(8)]  # 4 batches = 100 steps = one iteration

    def send(msgs: list[Any]) -> None:
        for msg in msgs:
            pub.publish(msg)
            ros_graph.spin_until(lambda: False, 0.01)

    def state() -> str:
        return diagnostic_values(seen, "mbmpo/learner").get("training_state", "")

    try:
        assert ros_graph.spin_until(lambda: pub.get_subscription_count() > 0, timeout=60.0), "learner not up"
        send(batches[:4])
        assert ros_graph.spin_until(lambda: diagnostic_values(seen, "mbmpo/learner").get("iteration") == "1"
                                    and state() == "waiting for data", timeout=120.0), state()
        send(batches[4:])
        assert ros_graph.spin_until(lambda: state() == "training iteration 1", timeout=30.0), state()
    finally:
        seconds, out = interrupt(proc)
    assert proc.returncode == 0 and seconds < STOP_WITHIN_S, (seconds, out[-3000:])
    assert "Traceback" not in out and "KeyboardInterrupt" not in out and "RCLError" not in out, out[-3000:]
    assert "abandoning the running iteration" in out, out[-3000:]
    with (run / "progress.csv").open() as f:
        assert [float(row["iteration"]) for row in csv.DictReader(f)] == [0.0]  # iteration 1 wrote nothing
    assert read_checkpoint(run, "cpu")["iteration"] == 1  # the checkpoint of iteration 0 loads as it was written
