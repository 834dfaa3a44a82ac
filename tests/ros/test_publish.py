"""Saved policies on a deployed robot: ``mbmpo publish`` (a process, latched over real DDS) and the controller's
``policy_file`` parameter; a policy that does not validate is refused with one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 wheels (pip install -e '.[ros]')")

from node_helpers import DEPLOY, TASK, collect, small_policy_bundle, start_controller, start_sim

from mbmpo_core.bundle import PolicyBundle
from mbmpo_ros.cli import main as cli_main
from mbmpo_ros.codec import decode_policy
from mbmpo_ros.qos import POLICY_QOS

pytestmark = pytest.mark.ros
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def saved_run(tmp_path: Path) -> tuple[Path, PolicyBundle]:
    """A run directory holding a small InvertedPendulum policy.onnx and its inner-step graph."""
    from sim import make_task

    bundle = small_policy_bundle(make_task(TASK, horizon=15), TASK, inner_lr=0.1)
    bundle.write(tmp_path / "run")
    return tmp_path / "run", bundle


def test_publish_latches_a_saved_policy_for_controllers_that_start_later(
        ros_graph: Any, saved_run: tuple[Path, PolicyBundle]) -> None:
    from std_msgs.msg import UInt8MultiArray

    run_dir, bundle = saved_run
    env = {**os.environ, "ROS_DOMAIN_ID": str(ros_graph.domain_id)}
    proc = subprocess.Popen([sys.executable, "-m", "mbmpo_ros.cli", "publish", str(run_dir), "--task", TASK],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        got = collect(ros_graph, "/mbmpo/policy", UInt8MultiArray, POLICY_QOS)
        assert ros_graph.spin_until(lambda: len(got) >= 1, timeout=30.0), "no policy from mbmpo publish"
        received = decode_policy(got[0])
        assert received.policy_id == bundle.policy_id and dict(received.files) == dict(bundle.files)
        # A deployed controller started afterwards gets the latched policy and acts on it.
        start_sim(ros_graph)
        ctrl = start_controller(ros_graph, **DEPLOY)
        assert ros_graph.spin_until(lambda: ctrl.policy_id == bundle.policy_id and ctrl.book.step > 3, timeout=15.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert f"published policy {bundle.policy_id[:12]} (task {TASK}" in out


def test_publish_refuses_a_policy_that_does_not_validate(tmp_path: Path, saved_run: tuple[Path, PolicyBundle],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _ = saved_run
    assert cli_main(["publish", str(run_dir), "--task", "Hopper-v5"]) == 2
    err = capsys.readouterr().err
    assert err == "mbmpo publish: error: policy.onnx: task 'InvertedPendulum-v5', expected 'Hopper-v5'\n"
    (tmp_path / "junk.onnx").write_bytes(os.urandom(300))
    assert cli_main(["publish", str(tmp_path / "junk.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mbmpo publish: error: junk.onnx: not a valid ONNX model") and err.count("\n") == 1
    assert cli_main(["publish", str(tmp_path / "empty_dir_that_is_missing")]) == 2
    assert "no policy file (expected a policy.onnx or a run directory)" in capsys.readouterr().err


def test_controller_starts_with_its_policy_file(ros_graph: Any, saved_run: tuple[Path, PolicyBundle]) -> None:
    run_dir, bundle = saved_run
    start_sim(ros_graph)
    ctrl = start_controller(ros_graph, **DEPLOY, policy_file=str(run_dir / "policy.onnx"))
    assert ros_graph.spin_until(lambda: ctrl.book.step > 3, timeout=10.0)
    assert ctrl.policy_id == bundle.policy_id and ctrl.hold_counts["no_policy"] == 0
    assert ctrl.policy is not None and ctrl.policy.can_adapt  # the inner-step graph came along


def test_controller_refuses_a_policy_file_of_another_task(ros_graph: Any, saved_run: tuple[Path, PolicyBundle],
                                                         tmp_path: Path) -> None:
    from sim import make_task

    small_policy_bundle(make_task("Hopper-v5", horizon=15), "Hopper-v5", inner_lr=0.1).write(tmp_path / "hopper")
    with pytest.raises(ValueError, match=r"^policy.onnx: task 'Hopper-v5', expected 'InvertedPendulum-v5'$"):
        start_controller(ros_graph, **DEPLOY, policy_file=str(tmp_path / "hopper"))
    env = {**os.environ, "ROS_DOMAIN_ID": str(ros_graph.domain_id)}
    result = subprocess.run([sys.executable, "-m", "mbmpo_ros.controller", "--ros-args", "-p", f"task:={TASK}",
                             "-p", f"policy_file:={tmp_path / 'nowhere'}"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("controller: error: ") and "no policy file" in result.stderr
