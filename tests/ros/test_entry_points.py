"""Node executables: a bad parameter is one line on stderr and exit code 2, never a traceback."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.ros


@pytest.mark.parametrize("node", ["controller", "sim_robot", "learner"])
def test_unknown_task_parameter_is_one_line_exit_2(node: str, domain_id: int) -> None:
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain_id)}
    result = subprocess.run([sys.executable, "-m", f"mbmpo_ros.{node}", "--ros-args", "-p", "task:=Nope-v0"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stderr
    assert "unknown task 'Nope-v0'" in result.stderr and "Traceback" not in result.stderr, result.stderr
