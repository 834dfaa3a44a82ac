"""Real-environment sampling: E environments stepped in lockstep, one action call per tick for all of them.

Used for the random warm-up, for data collection by the adapted policies, and for evaluation. Nothing here
knows which simulator (or robot) is behind the env.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mbmpo_core.task import Env

# obs: [E, obs_dim] -> raw actions [E, act_dim] (before clipping to the action bounds)
ActFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class RealBatch:
    """Transitions from real envs, in the order they happened per env.

    obs/next_obs: [N, obs_dim]; act: [N, act_dim] executed (clipped) action; act_raw: [N, act_dim] the policy's
    sample (log-probabilities are taken of it); reward: [N]; done: [N] termination (not time limit);
    env: [N] which env (and hence which policy) produced the row; episode: [N] per-env episode counter;
    step: [N] step index inside its episode. ``episode_returns`` are the returns of the episodes that ended in
    this batch, in the order they ended, and ``episode_envs`` the env of each.
    """

    obs: np.ndarray
    act: np.ndarray
    act_raw: np.ndarray
    next_obs: np.ndarray
    reward: np.ndarray
    done: np.ndarray
    env: np.ndarray
    episode: np.ndarray
    step: np.ndarray
    episode_returns: list[float] = field(default_factory=list)
    episode_envs: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.reward.shape[0])

    def transitions(self) -> dict[str, np.ndarray]:
        """The columns the transition store keeps."""
        return {
            "obs": self.obs,
            "act": self.act,
            "next_obs": self.next_obs,
            "reward": self.reward,
            "done": self.done,
            "episode": self.episode,
            "step": self.step,
        }

    def mean_return_over_envs(self) -> float:
        """The mean over envs of each env's mean episode return (envs with no finished episode left out; NaN if
        none finished): with one policy per env, the return averaged over the policies (tasks)."""
        returns = np.asarray(self.episode_returns, dtype=np.float64)
        envs = np.asarray(self.episode_envs, dtype=np.int64)
        if len(returns) == 0:
            return float("nan")
        return float(np.mean([returns[envs == e].mean() for e in np.unique(envs)]))


class RealSampler:
    """Steps ``envs`` in lockstep; each env restarts its episode at termination or after ``horizon`` steps.

    The reset of env ``i``'s ``k``-th episode is seeded by ``(seed, i, k)``; ``episode_counters`` (``[E]``, the
    ``k`` of each env's next episode) may be rewound to replay the same start states with another policy.
    """

    def __init__(self, envs: Sequence[Env], horizon: int, action_low: np.ndarray, action_high: np.ndarray,
                 seed: int = 0) -> None:
        self.envs = list(envs)
        self.horizon = horizon
        self.low = np.asarray(action_low, dtype=np.float64)
        self.high = np.asarray(action_high, dtype=np.float64)
        self._seed = seed
        self._episode = np.zeros(len(self.envs), dtype=np.int64)

    @property
    def episode_counters(self) -> np.ndarray:
        """``[E]`` index of each env's next episode (the array itself: assign into it to rewind)."""
        return self._episode

    def _reset(self, i: int) -> np.ndarray:
        # Distinct, reproducible seeds per env and episode.
        seed = int(self._seed * 1_000_003 + i * 10_007 + int(self._episode[i]))
        obs, _ = self.envs[i].reset(seed=seed)
        return np.asarray(obs, dtype=np.float64)

    def sample(self, act_fn: ActFn, num_steps: int, whole_episodes: bool = False) -> RealBatch:
        """Collect at least ``num_steps`` transitions over all envs (exactly, unless ``whole_episodes``).

        The envs step in lockstep, so each contributes ``num_steps // E`` rows (the first ``num_steps % E`` envs
        one more): with one policy per env, every policy collects the same share. Episodes start fresh at every
        call, so each call's data is a set of episode prefixes (or whole episodes when ``whole_episodes``: then
        each env runs until its current episode ends and the total may exceed ``num_steps``).
        """
        return self._run(act_fn, num_steps=num_steps, whole_episodes=whole_episodes)

    def sample_episodes(self, act_fn: ActFn, per_env: int) -> RealBatch:
        """Exactly ``per_env`` whole episodes in every env (each ends at termination or at the horizon)."""
        if per_env < 1:
            raise ValueError(f"per_env must be >= 1, got {per_env}")
        return self._run(act_fn, episodes_per_env=per_env)

    def _run(self, act_fn: ActFn, num_steps: int = 0, whole_episodes: bool = False,
             episodes_per_env: int = 0) -> RealBatch:
        """:meth:`sample` (``num_steps``) or :meth:`sample_episodes` (``episodes_per_env`` > 0)."""
        num_envs = len(self.envs)
        finished = np.zeros(num_envs, dtype=np.int64)  # episodes ended per env in this call
        obs = np.stack([self._reset(i) for i in range(num_envs)])
        steps = np.zeros(num_envs, dtype=np.int64)
        ret = np.zeros(num_envs)
        active = np.ones(num_envs, dtype=bool)
        rows: list[dict[str, Any]] = []
        returns: list[float] = []
        return_envs: list[int] = []
        while active.any():
            raw = np.asarray(act_fn(obs), dtype=np.float64).reshape(num_envs, -1)
            act = np.clip(raw, self.low, self.high)
            for i in map(int, np.flatnonzero(active)):
                next_obs, reward, terminated, truncated, _ = self.envs[i].step(act[i])
                next_obs = np.asarray(next_obs, dtype=np.float64)
                rows.append({"obs": obs[i].copy(), "act": act[i], "act_raw": raw[i], "next_obs": next_obs,
                             "reward": float(reward), "done": bool(terminated), "env": i,
                             "episode": int(self._episode[i]), "step": int(steps[i])})
                ret[i] += float(reward)
                steps[i] += 1
                obs[i] = next_obs
                if terminated or truncated or steps[i] >= self.horizon:
                    returns.append(float(ret[i]))
                    return_envs.append(i)
                    ret[i], steps[i] = 0.0, 0
                    self._episode[i] += 1
                    finished[i] += 1
                    if episodes_per_env:
                        done_here = finished[i] >= episodes_per_env
                    else:
                        done_here = whole_episodes and len(rows) >= num_steps
                    if done_here:
                        active[i] = False
                    else:
                        obs[i] = self._reset(i)
                if not episodes_per_env and not whole_episodes and len(rows) >= num_steps:
                    active[:] = False
                    break
        return _stack(rows, returns, return_envs)


def _stack(rows: list[dict[str, Any]], returns: list[float], return_envs: list[int]) -> RealBatch:
    def col(key: str, dtype: Any) -> np.ndarray:
        return np.asarray([r[key] for r in rows], dtype=dtype)

    return RealBatch(obs=col("obs", np.float64), act=col("act", np.float64), act_raw=col("act_raw", np.float64),
                     next_obs=col("next_obs", np.float64), reward=col("reward", np.float64),
                     done=col("done", bool), env=col("env", np.int64), episode=col("episode", np.int64),
                     step=col("step", np.int64), episode_returns=returns, episode_envs=return_envs)


def uniform_random_actions(low: np.ndarray, high: np.ndarray, rng: np.random.Generator) -> ActFn:
    """An ActFn drawing uniform actions inside the bounds (the random warm-up policy)."""

    def act(obs: np.ndarray) -> np.ndarray:
        return rng.uniform(low, high, size=(obs.shape[0], len(low)))

    return act
