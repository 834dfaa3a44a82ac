"""launch_testing of launch/train.launch.py; needs ``launch_testing`` (ROS 2 distribution package, not on PyPI)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.ros
SKIP_REASON = "launch_testing is not installed (ROS 2 distribution package, not on PyPI)"

try:
    import launch_testing
    from launch import LaunchDescription
except ImportError:
    pytest.skip(SKIP_REASON, allow_module_level=True)


def generate_test_description():  # type: ignore[no-untyped-def]
    """The train launch file with one simulated robot, plus the ReadyToTest action."""
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    path = Path(__file__).resolve().parents[2] / "launch" / "train.launch.py"
    include = IncludeLaunchDescription(PythonLaunchDescriptionSource(str(path)),
                                       launch_arguments={"sim": "true", "num_robots": "1"}.items())
    return LaunchDescription([include, launch_testing.actions.ReadyToTest()])


def test_learner_publishes_diagnostics(ros_graph) -> None:  # type: ignore[no-untyped-def]
    from diagnostic_msgs.msg import DiagnosticArray

    from mbmpo_ros.qos import DIAGNOSTICS_QOS

    seen: list = []
    ros_graph.node("probe").create_subscription(DiagnosticArray, "/diagnostics", seen.append, DIAGNOSTICS_QOS)
    assert ros_graph.spin_until(lambda: any(s.name == "mbmpo/learner" for m in seen for s in m.status), 60.0)
