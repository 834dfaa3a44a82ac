"""Batched reward and termination rules of the gymnasium MuJoCo v5 tasks.

Every formula is written once and runs on both numpy arrays and torch tensors:
it only uses operators and methods the two libraries share (``+ - * /``,
comparisons, ``& | ~``, ``abs``, ``.sum(-1)``, ``.all(-1)``, ``.clip``), plus
the three tiny shims below for the few operations whose spelling differs.
Torch inputs stay on their device and dtype (no ``.numpy()`` round trip), so
the rules can score imagined model rollouts on a GPU.

Shapes: ``obs``/``next_obs`` are ``[..., obs_dim]``, ``act`` is
``[..., act_dim]``; rewards are ``[...]`` floats and ``done`` masks are
``[...]`` bools (usually ``[B]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

# torch is never imported here at run time: the on-robot controller computes rewards with numpy and must not
# load torch. Tensors are handled through their own methods (isfinite, new_zeros, to).
if TYPE_CHECKING:
    import torch

    Array = TypeVar("Array", np.ndarray, torch.Tensor)
else:
    Array = TypeVar("Array")


# --- array-namespace shims: the only places numpy and torch differ ---------


def _isfinite(x: Array) -> Array:
    """Elementwise finiteness mask, same shape and library as ``x``."""
    if isinstance(x, np.ndarray):
        return np.isfinite(x)
    return _tensor(x).isfinite()


def _no_done(x: Array) -> Array:
    """All-False mask ``[...]`` for ``x`` of shape ``[..., D]``."""
    if isinstance(x, np.ndarray):
        return np.zeros(x.shape[:-1], dtype=bool)
    return _tensor(x).new_zeros(x.shape[:-1]).bool()


def _as_float(mask: Array, like: Array) -> Array:
    """Bool mask -> 0/1 floats with the dtype (and device) of ``like``."""
    if isinstance(mask, np.ndarray) and isinstance(like, np.ndarray):
        return mask.astype(like.dtype)
    if not isinstance(mask, np.ndarray) and not isinstance(like, np.ndarray):
        return _tensor(mask).to(dtype=_tensor(like).dtype)
    raise TypeError("mask and like must both be numpy arrays or torch tensors")


def _tensor(x: Any) -> Any:
    if type(x).__module__.split(".")[0] != "torch":
        raise TypeError(f"expected a numpy array or a torch tensor, got {type(x).__name__}")
    return x


# --- shared terms ------------------------------------------------------------


def forward_velocity(obs: Array, next_obs: Array, x_index: int, dt: float) -> Array:
    """Finite-difference x velocity ``[...]`` over one control step ``dt``."""
    return (next_obs[..., x_index] - obs[..., x_index]) / dt


def ctrl_cost(act: Array, weight: float) -> Array:
    """Quadratic control cost ``weight * |act|^2``, shape ``[...]``."""
    return weight * (act * act).sum(-1)


def _open_range(x: Array, bounds: tuple[float, float]) -> Array:
    """Mask ``lo < x < hi`` (strict, as in Hopper/Walker2d v5)."""
    return (bounds[0] < x) & (x < bounds[1])


class HealthRule(Protocol):
    """Maps ``next_obs [..., obs_dim]`` to a healthy mask ``[...]``."""

    def __call__(self, obs: Array) -> Array: ...


class TaskRules(Protocol):
    """What a task needs from its reward/termination implementation."""

    def reward(self, obs: Array, act: Array, next_obs: Array) -> Array: ...

    def done(self, next_obs: Array) -> Array: ...


# --- health rules --------------------------------------------------------------


@dataclass(frozen=True)
class PlanarHealth:
    """Hopper/Walker2d v5 ``is_healthy``: torso height and pitch in open ranges.

    ``state_start`` (Hopper only) additionally bounds ``obs[..., state_start:]``
    by ``state_range``. The env checks *unclipped* qvel there while the v5
    observation clips qvel to [-10, 10], so a |qvel| > 100 blow-up is invisible
    from the observation; it never occurs under bounded actions in practice.
    """

    z_index: int
    angle_index: int
    z_range: tuple[float, float]
    angle_range: tuple[float, float]
    state_start: int | None = None
    state_range: tuple[float, float] = (-100.0, 100.0)

    def __call__(self, obs: Array) -> Array:
        ok = _open_range(obs[..., self.z_index], self.z_range)
        ok = ok & _open_range(obs[..., self.angle_index], self.angle_range)
        if self.state_start is not None:
            state = obs[..., self.state_start :]
            ok = ok & _open_range(state, self.state_range).all(-1)
        return ok


@dataclass(frozen=True)
class AntHealth:
    """Ant v5 ``is_healthy``: finite qpos/qvel and ``lo <= z <= hi`` (inclusive)."""

    z_index: int
    state: slice
    z_range: tuple[float, float]

    def __call__(self, obs: Array) -> Array:
        z = obs[..., self.z_index]
        finite = _isfinite(obs[..., self.state]).all(-1)
        return finite & (self.z_range[0] <= z) & (z <= self.z_range[1])


# --- task rules ----------------------------------------------------------------


@dataclass(frozen=True)
class Locomotion:
    """Forward-progress tasks (HalfCheetah, Hopper, Walker2d, Swimmer, Ant).

    reward = w_f * dx/dt + healthy_reward * healthy - w_c * |a|^2
             - w_contact * |clip(contact forces)|^2
    done   = not healthy   (never, when ``healthy`` is None)
    Terms are added in the env's order so float64 results match to ~1e-15.
    """

    x_index: int
    dt: float
    forward_weight: float
    ctrl_weight: float
    healthy_reward: float = 0.0
    healthy: HealthRule | None = None
    contact: slice | None = None
    contact_weight: float = 0.0
    contact_range: tuple[float, float] = (-1.0, 1.0)

    def reward(self, obs: Array, act: Array, next_obs: Array) -> Array:
        """Per-transition reward ``[...]``."""
        vel = forward_velocity(obs, next_obs, self.x_index, self.dt)
        rew = self.forward_weight * vel
        if self.healthy is not None:
            alive = _as_float(self.healthy(next_obs), rew)
            rew = rew + self.healthy_reward * alive
        cost = ctrl_cost(act, self.ctrl_weight)
        if self.contact is not None:
            # The observation already holds clipped forces; clip again so
            # model-predicted observations are scored like the env would.
            forces = next_obs[..., self.contact].clip(*self.contact_range)
            cost = cost + self.contact_weight * (forces * forces).sum(-1)
        return rew - cost

    def done(self, next_obs: Array) -> Array:
        """Termination mask ``[...]`` (not truncation)."""
        if self.healthy is None:
            return _no_done(next_obs)
        return ~self.healthy(next_obs)


@dataclass(frozen=True)
class Balance:
    """InvertedPendulum v5: +1 per step while alive; done on tilt or NaN/inf."""

    angle_index: int
    max_angle: float = 0.2

    def reward(self, obs: Array, act: Array, next_obs: Array) -> Array:
        """1.0 while not terminated, else 0.0; shape ``[...]``."""
        return _as_float(~self.done(next_obs), next_obs[..., self.angle_index])

    def done(self, next_obs: Array) -> Array:
        """Non-finite observation or ``|angle| > max_angle``; shape ``[...]``."""
        bad = ~_isfinite(next_obs).all(-1)
        return bad | (abs(next_obs[..., self.angle_index]) > self.max_angle)


@dataclass(frozen=True)
class Reach:
    """Reacher v5: ``-w_d * |fingertip - target| - w_c * |a|^2``, never done.

    v5 scores the distance *after* the step, and the observation's last two
    entries are that same fingertip-target vector (x, y); its z part is
    exactly 0 because fingertip and target sit at the same height.
    """

    vec: slice
    dist_weight: float = 1.0
    ctrl_weight: float = 1.0

    def reward(self, obs: Array, act: Array, next_obs: Array) -> Array:
        """Per-transition reward ``[...]``."""
        vec = next_obs[..., self.vec]
        dist = (vec * vec).sum(-1) ** 0.5
        return -dist * self.dist_weight - ctrl_cost(act, self.ctrl_weight)

    def done(self, next_obs: Array) -> Array:
        """Reacher never terminates: all-False ``[...]``."""
        return _no_done(next_obs)
