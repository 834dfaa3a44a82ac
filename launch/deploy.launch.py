"""Deploy a trained policy on a real robot: the controller only (the robot driver provides joint_states/command).

    ros2 launch mbmpo_ros deploy.launch.py namespace:=robot_0 task:=InvertedPendulum-v5

The controller takes the latched /mbmpo/policy (from a learner, or any node republishing a policy file).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "mbmpo_ros"


def generate_launch_description():
    """One controller in ``namespace`` with config/controller.yaml; ``task`` and ``explore`` overridable."""
    params = os.path.join(get_package_share_directory(PACKAGE), "config", "controller.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="robot_0", description="robot namespace"),
        DeclareLaunchArgument("task", default_value="InvertedPendulum-v5", description="task name"),
        DeclareLaunchArgument("explore", default_value="false", description="sample actions (true) or act on the mean"),
        Node(package=PACKAGE, executable="controller", name="controller", output="screen",
             namespace=LaunchConfiguration("namespace"),
             parameters=[params, {"task": LaunchConfiguration("task"), "explore": LaunchConfiguration("explore")}]),
    ])
