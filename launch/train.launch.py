"""Train MB-MPO over ROS 2: one learner plus, per robot namespace, a controller (and a sim_robot with sim:=true).

    ros2 launch mbmpo_ros train.launch.py sim:=true num_robots:=2 task:=InvertedPendulum-v5 run_dir:=runs/a

Robot namespaces are ``<namespace_prefix><i>`` (robot_0, robot_1, ...). Parameters come from the package's
config/learner.yaml, controller.yaml and sim_robot.yaml; the launch arguments override a few of them.
"""

import os

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "mbmpo_ros"


def _param_file(name):
    return os.path.join(get_package_share_directory(PACKAGE), "config", name)


def _task_and_horizon(config, task):
    """The learner config's task (unless the launch argument names one) and episode horizon: every node must
    run the same task, or the controllers reject the learner's policies."""
    with open(config or _param_file("default.yaml")) as f:
        cfg = yaml.safe_load(f) or {}
    return task or cfg.get("task", "HalfCheetah-v5"), int(cfg.get("loop", {}).get("horizon", 200))


def _robot_nodes(context):
    """The learner and N robots; an OpaqueFunction because N is only known when the launch runs."""
    num_robots = int(LaunchConfiguration("num_robots").perform(context))
    prefix = LaunchConfiguration("namespace_prefix").perform(context)
    config = LaunchConfiguration("config").perform(context)
    task, horizon = _task_and_horizon(config, LaunchConfiguration("task").perform(context))
    namespaces = [f"{prefix}{i}" for i in range(num_robots)]
    learner_overrides = {"robots": namespaces, "run_dir": LaunchConfiguration("run_dir").perform(context),
                         "config": config, "task": task}
    robot_overrides = {"task": task}
    nodes = [Node(package=PACKAGE, executable="learner", name="learner", output="screen",
                  parameters=[_param_file("learner.yaml"), learner_overrides])]
    for i, ns in enumerate(namespaces):
        nodes.append(Node(package=PACKAGE, executable="controller", name="controller", namespace=ns,
                          output="screen", parameters=[_param_file("controller.yaml"),
                                                  {**robot_overrides, "seed": i, "horizon": horizon}]))
        nodes.append(Node(package=PACKAGE, executable="sim_robot", name="sim_robot", namespace=ns, output="screen",
                          condition=IfCondition(LaunchConfiguration("sim")),
                          parameters=[_param_file("sim_robot.yaml"), {**robot_overrides, "seed": i}]))
    return nodes


def generate_launch_description():
    """Launch arguments, then the nodes (built by an OpaqueFunction)."""
    return LaunchDescription([
        DeclareLaunchArgument("sim", default_value="true", description="start a MuJoCo sim_robot per robot"),
        DeclareLaunchArgument("config", default_value="", description="mbmpo YAML config ('' = default.yaml)"),
        DeclareLaunchArgument("task", default_value="", description="task name ('' = the config's)"),
        DeclareLaunchArgument("num_robots", default_value="1", description="number of robot namespaces"),
        DeclareLaunchArgument("namespace_prefix", default_value="robot_", description="robot i is <prefix><i>"),
        DeclareLaunchArgument("run_dir", default_value="", description="learner run directory ('' = new one)"),
        OpaqueFunction(function=_robot_nodes),
    ])
