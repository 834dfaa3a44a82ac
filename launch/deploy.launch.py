"""Deploy a trained policy on a real robot: the controller only (the robot driver provides joint_states/command).

    ros2 launch mbmpo_ros deploy.launch.py namespace:=robot_0 task:=InvertedPendulum-v5

The node is mbmpo_ros.graph.deploy_graph, with the package's config/controller.yaml. The controller takes the
latched /mbmpo/policy (from a learner, or any node republishing a policy file).
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from mbmpo_ros.graph import DEPLOY_ARGUMENTS, PACKAGE, deploy_graph_from_launch


def _nodes(context):
    """The controller for the performed launch arguments (a bad task or value stops the launch here)."""
    values = {arg.name: LaunchConfiguration(arg.name).perform(context) for arg in DEPLOY_ARGUMENTS}
    config_dir = Path(get_package_share_directory(PACKAGE)) / "config"
    return [_render(node) for node in deploy_graph_from_launch(config_dir, values)]


def _render(node):
    """A NodeDescription as a launch_ros Node: parameter files first, then the overrides."""
    return Node(package=node.package, executable=node.executable, name=node.name, namespace=node.namespace or None,
                output="screen", parameters=[*map(str, node.parameter_files), dict(node.overrides)])


def generate_launch_description():
    """Launch arguments, then the controller (built by an OpaqueFunction)."""
    arguments = [DeclareLaunchArgument(arg.name, default_value=arg.default, description=arg.description)
                 for arg in DEPLOY_ARGUMENTS]
    return LaunchDescription([*arguments, OpaqueFunction(function=_nodes)])
