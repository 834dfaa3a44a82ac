"""A cheap task whose physics change is worth adapting to: a thruster that must hover at a height against gravity.

The state is height and vertical velocity ``[x, v]``; the action ``u`` in [-1, 1] is the thrust command. One
control step of ``dt`` seconds: ``v' = v + dt * (gain * u / mass - G - damping * v)``, ``x' = x + dt * v'``. The
reward is ``-|x' - 1| - 0.05 u^2``: rise to and hold x = 1.

Why this task: holding the height takes the thrust ``u* = G * mass / gain``, which a policy that sees only ``[x, v]``
cannot infer. Under a heavier body or a weaker thruster the meta-policy's hover thrust is too low and it settles
below the goal (a steady-state offset that costs every step); shifting the action mean recovers most of the loss,
and a model fitted on a few real episodes identifies the change (an offset and a gain of the velocity change).
Simulating it costs microseconds, so learning and adaptation tests take seconds to a minute.

Perturbations (``make_env(perturbation=...)``) use the names of :mod:`sim.perturb`, so the training loop's
``randomize`` section works unchanged: ``mass_scale``, ``damping_scale``, ``gear_scale`` (multiply ``mass``,
``damping``, ``gain``), their ``*_range`` forms (``[lo, hi]``: one uniform draw) and ``draw_seed`` (seeds the
draws instead of the env's seed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NAME = "HoverPointMass"
DT, GAIN, MASS, DAMPING, G, GOAL = 0.1, 2.0, 1.0, 0.5, 0.5, 1.0
_SCALES = {"gear_scale": "gain", "mass_scale": "mass", "damping_scale": "damping"}


def physics(perturbation: Mapping[str, Any] | None, seed: int | None) -> dict[str, float]:
    """``{gain, mass, damping}`` of a perturbation dict; ``ValueError`` (one line) on an unknown key."""
    values = {"gain": GAIN, "mass": MASS, "damping": DAMPING}
    perturbation = dict(perturbation or {})
    rng = np.random.default_rng(perturbation.pop("draw_seed", seed))
    for key, value in sorted(perturbation.items()):
        name = key.removesuffix("_range")
        if name not in _SCALES:
            raise ValueError(f"{NAME}: unknown perturbation key {key!r}; valid: {sorted(_SCALES)}, their _range, "
                             "draw_seed")
        values[_SCALES[name]] *= float(rng.uniform(*value)) if key.endswith("_range") else float(value)
    return values


class HoverPointMassEnv:
    """The gymnasium.Env methods the sampler and the evaluation use (reset/step/close), in numpy."""

    def __init__(self, horizon: int, gain: float, mass: float, damping: float, seed: int | None) -> None:
        self.horizon, self.gain, self.mass, self.damping = horizon, gain, mass, damping
        self.rng = np.random.default_rng(seed)
        self.state = np.zeros(2)
        self.t = 0

    def reset(self, *, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.state = np.array([self.rng.uniform(-0.2, 0.2), 0.0])
        self.t = 0
        return self.state.copy(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        u = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
        x, v = self.state
        v = v + DT * (self.gain * u / self.mass - G - self.damping * v)
        x = x + DT * v
        obs = np.array([x, v])
        reward = float(task_reward(self.state[None], np.array([[u]]), obs[None])[0])
        self.state = obs
        self.t += 1
        return obs.copy(), reward, False, self.t >= self.horizon, {}

    def close(self) -> None:
        pass


def task_reward(obs: Any, act: Any, next_obs: Any) -> Any:
    """``[B]`` rewards of ``obs [B, 2] --act [B, 1]--> next_obs [B, 2]``; numpy or torch."""
    return -abs(next_obs[..., 0] - GOAL) - 0.05 * (act * act).sum(-1)


def task_done(next_obs: Any) -> Any:
    """Never terminates: ``[B]`` False."""
    return next_obs[..., 0] != next_obs[..., 0]


@dataclass(frozen=True, eq=False)
class HoverPointMass:
    """The :class:`mbmpo_core.task.TaskSpec` of the hovering point mass."""

    horizon: int = 50
    name: str = NAME
    dt: float = DT
    obs_names: list[str] = field(default_factory=lambda: ["x", "v"])
    act_names: list[str] = field(default_factory=lambda: ["force"])
    joint_names: list[str] = field(default_factory=lambda: ["slider"])
    action_low: np.ndarray = field(default_factory=lambda: np.array([-1.0]))
    action_high: np.ndarray = field(default_factory=lambda: np.array([1.0]))
    position_obs: tuple[int, ...] = ()

    @property
    def obs_dim(self) -> int:
        return 2

    @property
    def act_dim(self) -> int:
        return 1

    def reward(self, obs: Any, act: Any, next_obs: Any) -> Any:
        return task_reward(obs, act, next_obs)

    def done(self, next_obs: Any) -> Any:
        return task_done(next_obs)

    def make_env(self, seed: int | None = 0, perturbation: Mapping[str, Any] | None = None) -> HoverPointMassEnv:
        env = HoverPointMassEnv(self.horizon, **physics(perturbation, seed), seed=seed)
        env.reset(seed=seed)
        return env

    def sample_initial_obs(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.stack([rng.uniform(-0.2, 0.2, n), np.zeros(n)], axis=1)


def make_hover_task(name: str = NAME, horizon: int | None = None) -> HoverPointMass:
    """The registry's factory (``registry.register(NAME, make_hover_task)``): ``factory(name, horizon=...)``."""
    return HoverPointMass(horizon=horizon or 50)
