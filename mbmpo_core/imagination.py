"""Imagined rollouts: every task x rollout x step of a meta-batch, batched on the ensemble's device.

Task m is simulated by ensemble member ``m // (M // K)``: tasks of one model are contiguous, so a
[M, N, obs_dim] state reshapes to the ensemble's [K, (M/K)*N, obs_dim] layout with no copy and every
model gets exactly M/K tasks. The only Python loop is over the horizon.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mbmpo_core.ensemble import DynamicsEnsemble
from mbmpo_core.policy import GaussianMLPPolicy
from mbmpo_core.task import TaskSpec

Params = dict[str, torch.Tensor]


def task_models(meta_batch_size: int, num_models: int) -> torch.Tensor:
    """The ensemble member of each task: [M] long, each model exactly M/K times."""
    if meta_batch_size % num_models:
        raise ValueError(f"meta_batch_size {meta_batch_size} is not a multiple of num_models {num_models}")
    return torch.arange(meta_batch_size) // (meta_batch_size // num_models)


@dataclass
class Imagined:
    """obs: [M, N, H, obs_dim]; act: [M, N, H, act_dim] raw policy samples; rewards/mask: [M, N, H].

    mask is 1 while the trajectory is alive; the step on which ``done`` fires still counts, later ones do not.
    """

    obs: torch.Tensor
    act: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor


@torch.no_grad()
def imagine(ensemble: DynamicsEnsemble, policy: GaussianMLPPolicy, params: Params, task: TaskSpec,
            start_obs: torch.Tensor, horizon: int, obs_clip: float, reward_clip: float,
            generator: torch.Generator | None = None) -> Imagined:
    """Roll task-batched ``params`` (each [M, ...]) out in the ensemble from ``start_obs`` [M, N, obs_dim].

    Actions as on the real robot: the real path (:class:`~mbmpo_core.sampler.RealSampler`, the controller's
    safety chain) executes ``clip(sample, action_low, action_high)``, so the real physics, the stored ``act``
    the models learn from and the real reward (a gymnasium env charges the action passed to ``step``) all see
    the clipped action. The model and the model-space reward get the same; ``Imagined.act`` keeps the raw
    sample, whose log-probability the policy gradient needs.
    """
    num_tasks, num_rollouts, obs_dim = start_obs.shape
    num_models = ensemble.num_models
    task_models(num_tasks, num_models)  # validates the layout
    low = torch.as_tensor(task.action_low, dtype=start_obs.dtype, device=start_obs.device)
    high = torch.as_tensor(task.action_high, dtype=start_obs.dtype, device=start_obs.device)
    obs_seq, act_seq, rew_seq, mask_seq = [], [], [], []
    obs = start_obs
    alive = torch.ones(num_tasks, num_rollouts, dtype=start_obs.dtype, device=start_obs.device)
    for _ in range(horizon):
        act = policy.sample(obs, params, generator=generator)
        executed = torch.maximum(torch.minimum(act, high), low)
        next_obs = ensemble.predict(obs.reshape(num_models, -1, obs_dim),
                                    executed.reshape(num_models, -1, executed.shape[-1]))
        next_obs = next_obs.reshape(num_tasks, num_rollouts, obs_dim).clamp(-obs_clip, obs_clip)
        flat = (obs.reshape(-1, obs_dim), executed.reshape(-1, executed.shape[-1]), next_obs.reshape(-1, obs_dim))
        reward = task.reward(*flat).reshape(num_tasks, num_rollouts).clamp(-reward_clip, reward_clip)
        done = task.done(flat[2]).reshape(num_tasks, num_rollouts)
        obs_seq.append(obs)
        act_seq.append(act)
        rew_seq.append(reward * alive)
        mask_seq.append(alive)
        alive = alive * (~done).to(alive.dtype)
        obs = next_obs
    return Imagined(obs=torch.stack(obs_seq, dim=2), act=torch.stack(act_seq, dim=2),
                    rewards=torch.stack(rew_seq, dim=2), mask=torch.stack(mask_seq, dim=2))
