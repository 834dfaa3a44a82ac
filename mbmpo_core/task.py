"""What the algorithm needs from a task, without importing any simulator.

``sim.make_task`` returns objects of this shape; a real robot's task spec can too.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch


class Env(Protocol):
    """The gymnasium.Env methods the sampler uses."""

    def reset(self, *, seed: int | None = None) -> tuple[Any, dict[str, Any]]: ...

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]: ...

    def close(self) -> None: ...


class TaskSpec(Protocol):
    """A control task: dimensions, bounds, model-space reward and termination, and a real env."""

    name: str
    obs_dim: int
    act_dim: int
    horizon: int
    dt: float  # control period in seconds
    obs_names: list[str]
    act_names: list[str]
    joint_names: list[str]
    action_low: np.ndarray
    action_high: np.ndarray
    position_obs: tuple[int, ...]  # absolute-position coordinates: no input of the models or the policy

    def reward(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """obs: [B, obs_dim], act: [B, act_dim], next_obs: [B, obs_dim] -> [B]."""
        ...

    def done(self, next_obs: torch.Tensor) -> torch.Tensor:
        """next_obs: [B, obs_dim] -> [B] bool (termination, not time limit)."""
        ...

    def make_env(self, seed: int = 0, perturbation: dict[str, Any] | None = None) -> Any: ...

    def sample_initial_obs(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw n start observations from the env's reset distribution -> [n, obs_dim]."""
        ...
