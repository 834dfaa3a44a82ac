"""Train MB-MPO over ROS 2: one learner plus, per robot namespace, a controller (and a sim_robot with sim:=true).

    ros2 launch mbmpo_ros train.launch.py sim:=true num_robots:=2 task:=InvertedPendulum-v5 run_dir:=runs/a

The node list is mbmpo_ros.graph.train_graph (the one `mbmpo launch` starts as processes too): robot namespaces
``<namespace_prefix><i>``, parameters from the package's config/learner.yaml, controller.yaml and sim_robot.yaml,
a few of them overridden by the launch arguments. A bad argument, config or task stops the launch before any
node starts.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from mbmpo_ros.graph import PACKAGE, TRAIN_ARGUMENTS, train_graph_from_launch


def _nodes(context):
    """The graph for the performed launch arguments (an OpaqueFunction: the robot count is only known here)."""
    values = {arg.name: LaunchConfiguration(arg.name).perform(context) for arg in TRAIN_ARGUMENTS}
    config_dir = Path(get_package_share_directory(PACKAGE)) / "config"
    return [_render(node) for node in train_graph_from_launch(config_dir, values)]


def _render(node):
    """A NodeDescription as a launch_ros Node: parameter files first, then the overrides."""
    return Node(package=node.package, executable=node.executable, name=node.name, namespace=node.namespace or None,
                output="screen", parameters=[*map(str, node.parameter_files), dict(node.overrides)])


def generate_launch_description():
    """Launch arguments, then the nodes (built by an OpaqueFunction)."""
    arguments = [DeclareLaunchArgument(arg.name, default_value=arg.default, description=arg.description)
                 for arg in TRAIN_ARGUMENTS]
    return LaunchDescription([*arguments, OpaqueFunction(function=_nodes)])
