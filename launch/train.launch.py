"""Train MB-MPO over ROS 2: one learner plus, per robot namespace, a controller (and a sim_robot with sim:=true).

    ros2 launch mbmpo_ros train.launch.py sim:=true num_robots:=2 config:=quickstart.yaml run_dir:=runs/a

The node list is mbmpo_ros.graph.train_graph (the one `mbmpo launch` starts as processes too): robot namespaces
``<namespace_prefix><i>``, parameters from the package's config/learner.yaml, controller.yaml and sim_robot.yaml,
a few of them overridden by the launch arguments. A bare ``config:=NAME`` is looked up in the package's config/.
A bad argument, config or task stops the launch before any node starts (one line, exit code 1); a node that
exits with an error stops the others (exit code 1); the learner reaching its step budget ends the launch (0).
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration

from mbmpo_ros.graph import PACKAGE, TRAIN_ARGUMENTS, train_graph_from_launch
from mbmpo_ros.launch_render import supervised


def _nodes(context):
    """The graph for the performed launch arguments (an OpaqueFunction: the robot count is only known here)."""
    values = {arg.name: LaunchConfiguration(arg.name).perform(context) for arg in TRAIN_ARGUMENTS}
    config_dir = Path(get_package_share_directory(PACKAGE)) / "config"
    return supervised(train_graph_from_launch(config_dir, values), finisher="learner")


def generate_launch_description():
    """Launch arguments, then the nodes (built by an OpaqueFunction)."""
    arguments = [DeclareLaunchArgument(arg.name, default_value=arg.default, description=arg.description)
                 for arg in TRAIN_ARGUMENTS]
    return LaunchDescription([*arguments, OpaqueFunction(function=_nodes)])
