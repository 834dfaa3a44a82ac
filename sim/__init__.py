"""MuJoCo v5 tasks for MB-MPO: envs, batched observation-only rewards, perturbations.

Public API::

    from sim import make_task, TASK_NAMES
    task = make_task("HalfCheetah-v5", horizon=200)
    env = task.make_env(seed=0, perturbation={"mass_scale": 1.5})
    r = task.reward(obs, act, next_obs)   # [B]; numpy or torch in, same out
    d = task.done(next_obs)               # [B] bool
"""

from sim.perturb import PERTURBATION_KEYS, apply_perturbation
from sim.tasks import ANT_REWARD_ERROR_BOUND, TASK_NAMES, Task, make_task

__all__ = [
    "ANT_REWARD_ERROR_BOUND",
    "PERTURBATION_KEYS",
    "TASK_NAMES",
    "Task",
    "apply_perturbation",
    "make_task",
]
