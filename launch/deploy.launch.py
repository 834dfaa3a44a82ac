"""Deploy a trained policy on a real robot: the controller only (the robot driver provides joint_states/command).

    ros2 launch mbmpo_ros deploy.launch.py namespace:=robot_0 task:=/path/to/arm_task.yaml \
        policy_file:=/path/to/run/policy.onnx
    ros2 lifecycle set /robot_0/controller configure
    ros2 lifecycle set /robot_0/controller activate        # actions ramp in over ramp_s

The node is mbmpo_ros.graph.deploy_graph, a managed (lifecycle) controller with the package's
config/controller.yaml: unconfigured until configured and activated (or autostart:=true), holding until a
validated policy arrives (policy_file, or the latched /mbmpo/policy from a learner or `mbmpo publish`).
A controller that exits with an error ends the launch with exit code 1.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration

from mbmpo_ros.graph import DEPLOY_ARGUMENTS, PACKAGE, deploy_graph_from_launch
from mbmpo_ros.launch_render import supervised


def _nodes(context):
    """The controller for the performed launch arguments (a bad task or value stops the launch here)."""
    values = {arg.name: LaunchConfiguration(arg.name).perform(context) for arg in DEPLOY_ARGUMENTS}
    config_dir = Path(get_package_share_directory(PACKAGE)) / "config"
    return supervised(deploy_graph_from_launch(config_dir, values))


def generate_launch_description():
    """Launch arguments, then the controller (built by an OpaqueFunction)."""
    arguments = [DeclareLaunchArgument(arg.name, default_value=arg.default, description=arg.description)
                 for arg in DEPLOY_ARGUMENTS]
    return LaunchDescription([*arguments, OpaqueFunction(function=_nodes)])
