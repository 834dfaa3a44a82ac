"""Building blocks of the in-process node tests: a lockstep sim_robot, a controller, probes, exported policies."""

from __future__ import annotations

from typing import Any

from rclpy.parameter import Parameter

from mbmpo_core.bundle import PolicyBundle
from mbmpo_ros.controller import Controller
from mbmpo_ros.sim_robot import SimRobot

TASK = "InvertedPendulum-v5"
NS = "r1"


def add_node(graph: Any, node: Any) -> Any:
    """Put ``node`` on the graph's executor (the graph destroys it at the end of the test)."""
    graph.nodes.append(node)
    graph.executor.add_node(node)
    return node


def params(**values: Any) -> list[Parameter]:
    return [Parameter(k, value=v) for k, v in values.items()]


def start_sim(graph: Any, **overrides: Any) -> SimRobot:
    """A lockstep sim_robot on TASK in namespace NS."""
    values = params(task=TASK, lockstep=True, lockstep_timeout_s=0.2, **overrides)
    return add_node(graph, SimRobot(context=graph.context, namespace=NS, parameter_overrides=values))


TRAINING = {"warmup_policy": "random", "learner": True}  # what train.launch.py sets on a simulated robot


def start_controller(graph: Any, **overrides: Any) -> Controller:
    """A fast training controller (200 Hz, 15-step episodes, batches of 8, random warm-up, batches kept for a
    learner) on TASK in namespace NS; ``start_controller(graph, **DEPLOY)`` for the deploy defaults."""
    values = {"task": TASK, "horizon": 15, "rate_hz": 200.0, "batch_size": 8, "state_timeout_s": 0.3, **TRAINING,
              **overrides}
    return add_node(graph, Controller(context=graph.context, namespace=NS, parameter_overrides=params(**values)))


DEPLOY = {"warmup_policy": "hold", "learner": False}  # config/controller.yaml's defaults


def collect(graph: Any, topic: str, msg_type: Any, qos: Any) -> list[Any]:
    """Every message received on ``topic`` by a probe node, in arrival order."""
    got: list[Any] = []
    graph.node("probe_" + topic.strip("/").replace("/", "_")).create_subscription(msg_type, topic, got.append, qos)
    return got


def small_policy_bundle(task: Any, task_name: str, inner_lr: float) -> PolicyBundle:
    """A fresh (8,) policy exported in memory with its inner-step graph (what a learner publishes)."""
    from mbmpo_core.export import export_bundle
    from mbmpo_core.policy import GaussianMLPPolicy

    policy = GaussianMLPPolicy(task.obs_dim, task.act_dim, hidden_sizes=(8,))
    return export_bundle(
        policy, task_name=task_name, obs_names=task.obs_names, act_names=task.act_names,
        joint_names=task.joint_names, action_low=task.action_low, action_high=task.action_high,
        control_rate_hz=1.0 / task.dt, horizon=15, inner_lr=inner_lr, gamma=0.99, gae_lambda=1.0, iteration=0,
    )
