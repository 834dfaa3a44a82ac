"""The launch files under the real ``ros2 launch`` and ``ros2 lifecycle`` (ros2cli, launch_ros: ROS 2 distribution
packages, not on PyPI; ``/work/shared/tools/make_rosvenv.sh`` builds an environment with them; skipped elsewhere):
a bad argument stops the launch before any node starts, a node exiting with an error stops the launch with a
non-zero exit, and a deployed controller obeys ``ros2 lifecycle set``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from launch_env import ament_prefix

pytestmark = pytest.mark.ros
ROS2 = shutil.which("ros2", path=str(Path(sys.executable).parent)) or shutil.which("ros2")
try:
    import ros2launch  # noqa: F401
    import ros2lifecycle  # noqa: F401
except ImportError:
    pytest.skip("ros2 launch / ros2 lifecycle are not installed (ros2cli, launch_ros: ROS 2 distribution packages, "
                "not on PyPI)", allow_module_level=True)
if ROS2 is None:
    pytest.skip("no ros2 command", allow_module_level=True)


@pytest.fixture
def env(domain_id: int) -> dict[str, str]:
    return {**os.environ, **ament_prefix(), "ROS_DOMAIN_ID": str(domain_id),
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "OMP_NUM_THREADS": "1"}


def ros2(env: dict[str, str], *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    assert ROS2 is not None
    return subprocess.run([ROS2, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(("argument", "message"), [
    ("task:=NoSuchTask", "unknown task 'NoSuchTask'"),
    ("num_robots:=0", "the number of robots must be >= 1, got 0"),
    ("sim:=maybe", "launch argument sim must be true or false, got 'maybe'"),
    ("config:=nope.yaml", "config 'nope.yaml' is neither in "),
])
def test_a_bad_argument_stops_the_launch_before_any_node(env: dict[str, str], argument: str, message: str) -> None:
    result = ros2(env, "launch", "mbmpo_ros", "train.launch.py", argument)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert f"[ERROR] [launch]: Caught exception in launch (see debug for traceback): {message}" in out, out
    assert "process started" not in out and "Traceback" not in out, out


def test_a_node_exiting_with_an_error_stops_the_launch_non_zero(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "checkpoint.pt").write_bytes(b"an earlier run")
    result = ros2(env, "launch", "mbmpo_ros", "train.launch.py", "config:=quickstart", f"run_dir:={tmp_path / 'run'}")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "set resume:=true to continue it" in out and "learner exited with code 2; stopping the launch" in out, out
    assert out.count("process has finished cleanly") == 2 and "Traceback" not in out, out  # controller, sim_robot


def test_deployed_controller_obeys_ros2_lifecycle_set(env: dict[str, str], tmp_path: Path) -> None:
    from node_helpers import small_policy_bundle

    from sim import make_task

    small_policy_bundle(make_task("InvertedPendulum-v5", horizon=15), "InvertedPendulum-v5", 0.1).write(tmp_path)
    assert ROS2 is not None
    launch = subprocess.Popen([ROS2, "launch", "mbmpo_ros", "deploy.launch.py", f"policy_file:={tmp_path}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    robot = subprocess.Popen([sys.executable, "-m", "mbmpo_ros.sim_robot", "--ros-args", "-r", "__ns:=/robot_0"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        node = "/robot_0/controller"
        assert wait_for(lambda: "unconfigured" in ros2(env, "lifecycle", "get", node).stdout, 60.0)
        refused = ros2(env, "lifecycle", "set", node, "activate")  # must configure first
        assert refused.returncode == 1 and "Unknown transition requested" in refused.stderr, refused
        for transition, state in (("configure", "inactive"), ("activate", "active"), ("deactivate", "inactive")):
            assert "Transitioning successful" in ros2(env, "lifecycle", "set", node, transition).stdout, transition
            assert ros2(env, "lifecycle", "get", node).stdout.startswith(state), transition
    finally:
        out = stop(launch)
        stop(robot)
    assert launch.returncode == 0 and "Traceback" not in out, out
    assert "validated" in out  # the policy file, before any transition


def wait_for(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def stop(proc: subprocess.Popen[Any]) -> str:
    """Ctrl-C to the process group (as a terminal sends it); its output."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    return out or ""
