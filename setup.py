"""ament_python package mbmpo_ros; also a plain pip package (``pip install -e .``) without ROS 2."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "mbmpo_ros"
ROS_WHEELS = [
    "ros-rclpy",
    "ros-std-msgs",
    "ros-sensor-msgs",
    "ros-diagnostic-msgs",
    "ros-std-srvs",
    "ros-lifecycle-msgs",  # the controller is a managed node (rclpy.lifecycle; ros2 lifecycle set)
    "ros-rmw-fastrtps-cpp",
]

setup(
    name=PACKAGE,
    version="0.1.0",
    description="MB-MPO (model-based meta-policy optimization) for real robots with ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10,<3.14",
    packages=find_packages(include=["mbmpo_core", "mbmpo_core.*", "sim", "sim.*", "mbmpo_ros", "mbmpo_ros.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    # A range that the CPU build torch==2.13.0 satisfies: install that first (README) so pip never pulls CUDA.
    install_requires=[
        "torch>=2.3",
        "numpy>=1.24",
        "pyyaml>=6",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "mujoco>=3.1",
        "gymnasium[mujoco]>=1.0",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "tensorboard>=2.14",
    ],
    extras_require={
        "ros": ROS_WHEELS,
        "test": [
            # pytest < 9: launch_testing's pytest plugin (ROS 2 launch 3.7) takes the `path` hook argument that
            # pytest 9 removed, and breaks every pytest run where it is installed (tests/ros/test_train_launch.py).
            "pytest>=7,<9", "ruff>=0.4", "mypy>=1.8", "types-PyYAML", "colcon-common-extensions", "ros-ament-package",
        ],
        "bench": ["stable-baselines3>=2.3", "sb3-contrib>=2.3"],
    },
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "mbmpo = mbmpo_ros.cli:main",
            "sim_robot = mbmpo_ros.sim_robot:main",
            "controller = mbmpo_ros.controller:main",
            "learner = mbmpo_ros.learner:main",
        ],
        # The MuJoCo tasks of sim/, resolved by name through mbmpo_core.registry.
        "mbmpo.tasks": [
            "HalfCheetah-v5 = sim.tasks:make_task",
            "Hopper-v5 = sim.tasks:make_task",
            "Walker2d-v5 = sim.tasks:make_task",
            "Swimmer-v5 = sim.tasks:make_task",
            "Ant-v5 = sim.tasks:make_task",
            "InvertedPendulum-v5 = sim.tasks:make_task",
            "Reacher-v5 = sim.tasks:make_task",
        ],
    },
)
