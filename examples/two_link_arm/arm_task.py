"""Reward and termination of the two-link arm example: bring the joints to a target configuration.

Written once for numpy arrays (the controller on the robot) and torch tensors (the learner's imagined rollouts):
only operators and methods both libraries share (``+ - * abs``, ``.sum(-1)``, ``.any(-1)``), no imports.
Observation ``[qpos.shoulder, qpos.elbow, qvel.shoulder, qvel.elbow]``, action ``[velocity.shoulder,
velocity.elbow]`` (see task.yaml).
"""

from typing import Any

TARGET = (0.8, -0.6)  # rad
WORKSPACE = 2.5  # |joint angle| beyond this ends the episode (the arm's hard stops are at 3.0)
CONTROL_COST = 0.01


def reward(obs: Any, act: Any, next_obs: Any) -> Any:
    """obs [B, 4], act [B, 2], next_obs [B, 4] -> [B]: minus the squared distance to the target after the step,
    minus a small control cost."""
    shoulder = next_obs[..., 0] - TARGET[0]
    elbow = next_obs[..., 1] - TARGET[1]
    return -(shoulder * shoulder + elbow * elbow) - CONTROL_COST * (act * act).sum(-1)


def done(next_obs: Any) -> Any:
    """next_obs [B, 4] -> [B] bool: a joint left the workspace."""
    return (abs(next_obs[..., :2]) > WORKSPACE).any(-1)
