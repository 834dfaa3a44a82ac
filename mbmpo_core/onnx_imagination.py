"""Imagined rollouts on the robot: one (identified) member of the ONNX ensemble, N rollouts batched.

The torch-free twin of :func:`mbmpo_core.imagination.imagine` for one task: the same action sampling
(``mean + exp(log_std) * N(0, 1)``, the raw sample recorded), the same executed action
(``clip(sample, action_low, action_high)``, which the model and the reward see), the same clips of the predicted
observation and the reward, and the same mask (1 while alive; the step on which ``done`` fires still counts).
numpy and onnxruntime only: this runs on the robot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from mbmpo_core.onnx_dynamics import LastLayer, OnnxEnsemble
from mbmpo_core.onnx_runtime import OnnxPolicy

RewardFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (obs, executed act, next_obs) -> [N]
DoneFn = Callable[[np.ndarray], np.ndarray]  # next_obs -> [N] bool


class Rollouts(NamedTuple):
    """obs: ``[N, H, obs_dim]``; act: ``[N, H, act_dim]`` raw policy samples; rewards, mask: ``[N, H]`` float64
    (rewards already multiplied by the mask)."""

    obs: np.ndarray
    act: np.ndarray
    rewards: np.ndarray
    mask: np.ndarray


def imagine(
    ensemble: OnnxEnsemble,
    member: int,
    last_layer: LastLayer | None,
    policy: OnnxPolicy,
    params: Mapping[str, np.ndarray] | None,
    starts: np.ndarray,
    horizon: int,
    reward_fn: RewardFn,
    done_fn: DoneFn | None,
    rng: np.random.Generator,
    action_low: Sequence[float] | np.ndarray,
    action_high: Sequence[float] | np.ndarray,
    obs_clip: float = 1e4,
    reward_clip: float = 1e4,
) -> Rollouts:
    """Roll the policy at ``params`` (None: the trained ones) out in ``member`` from ``starts [N, obs_dim]``.

    Args:
        last_layer: the members' last layer (e.g. :attr:`Identified.last_layer`); None: the trained one.
        reward_fn, done_fn: the task's numpy reward and termination (``done_fn`` None: only the horizon ends).
        rng: the action noise.
        obs_clip, reward_clip: the training config's ``meta.obs_clip`` / ``meta.reward_clip``.

    Raises:
        ValueError: a member out of range, starts of the wrong shape, or a horizon < 1.
    """
    if not 0 <= member < ensemble.num_models:
        raise ValueError(f"member {member} not in [0, {ensemble.num_models})")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    obs = np.asarray(starts, dtype=np.float32)
    if obs.ndim != 2 or obs.shape[1] != ensemble.obs_dim:
        raise ValueError(f"starts must be [N, {ensemble.obs_dim}], got {list(obs.shape)}")
    low, high = (np.asarray(b, dtype=np.float32) for b in (action_low, action_high))
    n = obs.shape[0]
    out = Rollouts(np.zeros((n, horizon, ensemble.obs_dim), np.float32),
                   np.zeros((n, horizon, ensemble.act_dim), np.float32), np.zeros((n, horizon)), np.zeros((n, horizon)))
    alive = np.ones(n)
    for t in range(horizon):
        act = policy.act(obs, params, deterministic=False, rng=rng)
        executed = np.clip(act, low, high)
        next_obs = np.clip(ensemble.predict(obs, executed, last_layer)[member], -obs_clip, obs_clip)
        reward = np.clip(np.asarray(reward_fn(obs, executed, next_obs), np.float64), -reward_clip, reward_clip)
        out.obs[:, t], out.act[:, t], out.rewards[:, t], out.mask[:, t] = obs, act, reward * alive, alive
        if done_fn is not None:
            alive = alive * ~np.asarray(done_fn(next_obs), dtype=bool)
        obs = next_obs
    return out
