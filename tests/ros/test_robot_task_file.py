"""A robot the simulator does not know, over real DDS: the worked example (examples/two_link_arm) — its task file,
its reward module, and the stand-in arm node speaking JointState in and Float64MultiArray forward commands out —
with the unchanged controller (and the learner), and no MuJoCo, gymnasium or torch on the robot side."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

pytest.importorskip("rclpy", reason="needs the ROS 2 wheels (pip install -e '.[ros]')")

from node_helpers import add_node, collect, params, start_controller

from mbmpo_ros.codec import decode_transitions
from mbmpo_ros.qos import TRANSITIONS_QOS

pytestmark = pytest.mark.ros
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "two_link_arm"
TASK_FILE = str(EXAMPLE / "task.yaml")
NS = "r1"  # node_helpers' namespace


def arm_module() -> Any:
    spec = importlib.util.spec_from_file_location("arm_robot", EXAMPLE / "arm_robot.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_arm(graph: Any, rate_hz: float = 100.0) -> Any:
    """The stand-in arm, free running at ``rate_hz`` (each tick is 0.05 s of arm time)."""
    return add_node(graph, arm_module().ArmRobot(context=graph.context, namespace=NS,
                                                  parameter_overrides=params(rate_hz=rate_hz)))


def test_controller_runs_the_arm_from_its_task_file(ros_graph: Any) -> None:
    from std_msgs.msg import Float64MultiArray

    from mbmpo_core.task_file import load_task_file

    batches = collect(ros_graph, f"/{NS}/mbmpo/transitions", Float64MultiArray, TRANSITIONS_QOS)
    arm = start_arm(ros_graph)
    ctrl = start_controller(ros_graph, task=TASK_FILE, horizon=0, rate_hz=200.0, batch_size=20)
    assert ctrl.task.name == "two_link_arm" and ctrl.task.horizon == 100  # horizon 0: the task file's
    assert ros_graph.spin_until(lambda: len(batches) >= 6 and arm.resets >= 1, timeout=30.0)
    assert arm.commands > 100 and arm.bad_commands == 0
    decoded = [decode_transitions(m, expected_obs_dim=4, expected_act_dim=2) for m in batches]
    obs, act, nxt = (np.concatenate([getattr(b, k) for b in decoded]) for k in ("obs", "act", "next_obs"))
    reward = np.concatenate([b.reward for b in decoded])
    task = load_task_file(TASK_FILE)
    np.testing.assert_allclose(reward, task.reward(obs, act, nxt))  # the file's reward module, on the robot
    assert np.all(np.abs(act) <= 1.0) and np.abs(act).max() > 0.5  # random warm-up within the file's bounds
    # The arm moved as commanded: joint positions integrate the (lagged) commanded velocities.
    assert np.abs(obs[:, :2]).max() > 0.05 and np.abs(obs[:, 2:]).max() > 0.05
    episodes = np.concatenate([b.episode for b in decoded])
    steps = np.concatenate([b.step for b in decoded])
    assert episodes.max() >= 1 and steps.max() == 99  # an episode of the file's 100 steps, then a reset


def test_arm_policy_from_the_learner_runs_on_the_controller(ros_graph: Any, tmp_path: Path) -> None:
    """Learner (torch: the file's reward on imagined rollouts) + controller + arm: the first policy trained on
    the arm's transitions is validated (task, observation and joint names from the file) and takes over."""
    from rclpy.parameter import Parameter

    from mbmpo_ros.learner import Learner

    config = tmp_path / "arm.yaml"
    config.write_text(yaml.safe_dump({
        "task": TASK_FILE,
        "ensemble": {"num_models": 2, "hidden_sizes": [16, 16], "batch_size": 64, "max_epochs": 3},
        "policy": {"hidden_sizes": [8]},
        "meta": {"meta_batch_size": 2, "rollouts_per_task": 4, "meta_steps": 1},
        "loop": {"random_steps": 150, "steps_per_iter": 10**6, "total_steps": 10**6, "horizon": 100},
    }))
    learner = Learner(context=ros_graph.context, namespace="", parameter_overrides=[
        Parameter("config", value=str(config)), Parameter("run_dir", value=str(tmp_path / "run")),
        Parameter("robots", value=[NS]), Parameter("shutdown_timeout_s", value=60.0)])
    add_node(ros_graph, learner)
    start_arm(ros_graph)
    ctrl = start_controller(ros_graph, task=TASK_FILE, horizon=100, rate_hz=200.0, batch_size=25, adapt=False)
    assert ros_graph.spin_until(lambda: learner.iteration >= 1, timeout=120.0), learner.state
    assert ros_graph.spin_until(lambda: ctrl.policy_id == learner.last_policy_id, timeout=20.0)
    assert ctrl.rejected_policies == 0 and ctrl.policy is not None
    assert ctrl.policy.metadata["task"] == "two_link_arm"
    assert ctrl.policy.metadata["joint_names"] == ["shoulder", "elbow"]
    steps = ctrl.book.step
    assert ros_graph.spin_until(lambda: ctrl.book.step > steps + 10 or ctrl.book.episodes_done > 1, timeout=10.0)


def test_robot_side_loads_no_simulator_and_no_torch(domain_id: int) -> None:
    """In a fresh interpreter: the arm and the controller on the task file, a few steps over DDS, then the
    loaded modules."""
    code = f"""
import json, sys, importlib.util
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from mbmpo_ros.controller import Controller
spec = importlib.util.spec_from_file_location("arm_robot", {str(EXAMPLE / "arm_robot.py")!r})
arm_module = importlib.util.module_from_spec(spec); spec.loader.exec_module(arm_module)
rclpy.init(domain_id={domain_id})
arm = arm_module.ArmRobot(namespace="r9", parameter_overrides=[Parameter("rate_hz", value=100.0)])
ctrl = Controller(namespace="r9", parameter_overrides=[Parameter("task", value={TASK_FILE!r}),
    Parameter("rate_hz", value=200.0), Parameter("warmup_policy", value="random")])
executor = SingleThreadedExecutor()
executor.add_node(arm); executor.add_node(ctrl)
for _ in range(2000):
    executor.spin_once(timeout_sec=0.01)
    if ctrl.book.step >= 20:
        break
bad = sorted({{m.split('.')[0] for m in sys.modules}} & {{'sim', 'mujoco', 'gymnasium', 'torch'}})
print(json.dumps({{"steps": ctrl.book.step, "bad": bad}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["steps"] >= 20 and report["bad"] == [], report
