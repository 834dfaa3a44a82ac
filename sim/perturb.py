"""Physics perturbations of a built MuJoCo gymnasium env (dynamics shift for meta-RL).

``apply_perturbation(env, {"mass_scale": 1.5}, seed=0)`` edits
``env.unwrapped.model`` in place. Keys (all multiplicative on the current
model, so apply once to a freshly built env, then ``env.reset()``):

* ``mass_scale``: float, or ``{body_name: float}``. Scales body mass *and*
  rotational inertia together (a uniform density change), so bodies stay
  physically consistent.
* ``damping_scale``: float, or ``{joint_name: float}``; scales ``dof_damping``.
* ``friction_scale``: float, or ``{geom_name: float}``; scales all three
  ``geom_friction`` coefficients (sliding, torsional, rolling).
* ``gear_scale``: float, or ``{actuator index|name: float}``; scales
  ``actuator_gear`` (the actuator's force/torque gain for joint transmissions).
* ``disable_actuator``: actuator index or name (or a list of them); sets its
  gear to 0 so commanding it has no effect.
* ``weaken_actuator``: ``{actuator index|name: factor in [0, 1]}``.
* ``mass_scale_range`` / ``damping_scale_range`` / ``friction_scale_range`` /
  ``gear_scale_range``: ``[lo, hi]``; draws one uniform factor per body / dof /
  geom / actuator. The draw for each key uses its own generator seeded by
  ``(seed, key)``, so results do not depend on key order; ``seed=None`` draws
  fresh randomness.
* ``draw_seed``: int >= 0; seeds the ``*_range`` draws instead of ``seed``, so
  one physics draw is rebuilt identically in envs reset with different seeds
  (the training loop's domain randomisation).

Unknown keys or bad values raise ``ValueError`` naming the key.
"""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

_Handler = Callable[[mujoco.MjModel, str, Any, np.random.Generator], None]


def apply_perturbation(env: gym.Env, perturbation: Mapping[str, Any] | None, seed: int | None = None) -> None:
    """Apply ``perturbation`` to ``env.unwrapped.model`` in place.

    Validates every key before touching the model, so a bad dict leaves the
    env unchanged. Afterwards MuJoCo's derived constants (subtree masses,
    actuator reference lengths, ...) are recomputed with ``mj_setConst``;
    that call scribbles on ``data``, so reset the env before stepping.
    """
    if not perturbation:
        return
    if not isinstance(perturbation, Mapping):
        raise ValueError(f"perturbation must be a dict, got {type(perturbation).__name__}")
    unknown = sorted(k for k in perturbation if k not in PERTURBATION_KEYS)
    if unknown:
        raise ValueError(f"unknown perturbation key(s) {unknown}; valid keys: {sorted(PERTURBATION_KEYS)}")
    if seed is not None and (isinstance(seed, bool) or int(seed) < 0):
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    if _DRAW_SEED in perturbation:
        seed = _draw_seed(perturbation[_DRAW_SEED])
    model: mujoco.MjModel = env.unwrapped.model  # type: ignore[attr-defined]
    data: mujoco.MjData = env.unwrapped.data  # type: ignore[attr-defined]
    # Edit a copy first: a ValueError halfway through must not leave a
    # half-perturbed model behind.
    scratch = copy.deepcopy(model)
    for key, value in perturbation.items():
        if key != _DRAW_SEED:
            _HANDLERS[key](scratch, key, value, _key_rng(seed, key))
    for field in _EDITED_FIELDS:
        getattr(model, field)[...] = getattr(scratch, field)
    mujoco.mj_setConst(model, data)


# --- value parsing -------------------------------------------------------------


def _scalar(key: str, value: Any, lo: float, hi: float = math.inf) -> float:
    """A finite real in ``[lo, hi]`` or ValueError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{key}: expected a number, got {value!r}")
    out = float(value)
    if not (math.isfinite(out) and lo <= out <= hi):
        raise ValueError(f"{key}: value {out} outside [{lo}, {hi}]")
    return out


def _range(key: str, value: Any, lo: float) -> tuple[float, float]:
    """A ``[low, high]`` pair with ``lo <= low <= high``."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"{key}: expected [low, high], got {value!r}")
    low, high = _scalar(key, value[0], lo), _scalar(key, value[1], lo)
    if low > high:
        raise ValueError(f"{key}: low {low} > high {high}")
    return low, high


def _index(model: mujoco.MjModel, key: str, obj: mujoco.mjtObj, count: int, ref: Any) -> int:
    """Resolve an int index or a name of a MuJoCo object of type ``obj``; a string of digits that names no
    object is an index (JSON, e.g. the sim_robot's ``perturbation`` parameter, has only string keys)."""
    if isinstance(ref, str) and ref.isdigit() and mujoco.mj_name2id(model, obj, ref) < 0:
        ref = int(ref)
    if isinstance(ref, (int, np.integer)) and not isinstance(ref, bool):
        if not 0 <= int(ref) < count:
            raise ValueError(f"{key}: index {ref} out of range [0, {count})")
        return int(ref)
    if isinstance(ref, str):
        idx = mujoco.mj_name2id(model, obj, ref)
        if idx < 0:
            raise ValueError(f"{key}: no {obj.name[6:].lower()} named {ref!r}")
        return int(idx)
    raise ValueError(f"{key}: expected an index or a name, got {ref!r}")


def _factors(model: mujoco.MjModel, key: str, value: Any, obj: mujoco.mjtObj, count: int, lo: float) -> np.ndarray:
    """Per-object factors ``[count]`` from a scalar or a ``{ref: factor}`` dict."""
    if isinstance(value, Mapping):
        out = np.ones(count)
        for ref, factor in value.items():
            out[_index(model, key, obj, count, ref)] *= _scalar(key, factor, lo)
        return out
    return np.full(count, _scalar(key, value, lo))


# --- handlers: one per key -----------------------------------------------------


def _scale_mass(model: mujoco.MjModel, f: np.ndarray) -> None:
    """Scale mass and inertia ``[nbody]`` together (density change)."""
    model.body_mass[:] *= f
    model.body_inertia[:] *= f[:, None]


def _mass(model: mujoco.MjModel, key: str, value: Any, rng: np.random.Generator) -> None:
    _scale_mass(model, _factors(model, key, value, mujoco.mjtObj.mjOBJ_BODY, model.nbody, 1e-9))


def _dof_factors(model: mujoco.MjModel, joint_factors: np.ndarray) -> np.ndarray:
    """Expand per-joint factors ``[njnt]`` to per-dof factors ``[nv]``."""
    return joint_factors[model.dof_jntid]


def _damping(model: mujoco.MjModel, key: str, value: Any, rng: np.random.Generator) -> None:
    f = _factors(model, key, value, mujoco.mjtObj.mjOBJ_JOINT, model.njnt, 0.0)
    model.dof_damping[:] *= _dof_factors(model, f)


def _friction(model: mujoco.MjModel, key: str, value: Any, rng: np.random.Generator) -> None:
    f = _factors(model, key, value, mujoco.mjtObj.mjOBJ_GEOM, model.ngeom, 0.0)
    model.geom_friction[:] *= f[:, None]


def _gear(model: mujoco.MjModel, key: str, value: Any, rng: np.random.Generator) -> None:
    f = _factors(model, key, value, mujoco.mjtObj.mjOBJ_ACTUATOR, model.nu, 0.0)
    model.actuator_gear[:] *= f[:, None]


def _weaken(model: mujoco.MjModel, key: str, value: Any, rng: np.random.Generator) -> None:
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"{key}: expected {{actuator index|name: factor}}, got {value!r}")
    for ref, factor in value.items():
        idx = _index(model, key, mujoco.mjtObj.mjOBJ_ACTUATOR, model.nu, ref)
        model.actuator_gear[idx] *= _scalar(key, factor, 0.0, 1.0)


def _disable(model: mujoco.MjModel, key: str, value: Any, rng: np.random.Generator) -> None:
    refs = value if isinstance(value, (list, tuple)) else [value]
    if not refs:
        raise ValueError(f"{key}: empty actuator list")
    for ref in refs:
        model.actuator_gear[_index(model, key, mujoco.mjtObj.mjOBJ_ACTUATOR, model.nu, ref)] = 0.0


def _draw(key: str, value: Any, lo: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniform factors from the ``[low, high]`` range in ``value``."""
    low, high = _range(key, value, lo)
    return rng.uniform(low, high, size=n)


def _mass_range(model: mujoco.MjModel, key: str, value: Any, rng: np.random.Generator) -> None:
    _scale_mass(model, _draw(key, value, 1e-9, model.nbody, rng))


def _damping_range(model: mujoco.MjModel, key: str, value: Any, rng: np.random.Generator) -> None:
    model.dof_damping[:] *= _draw(key, value, 0.0, model.nv, rng)


def _friction_range(model: mujoco.MjModel, key: str, value: Any, rng: np.random.Generator) -> None:
    model.geom_friction[:] *= _draw(key, value, 0.0, model.ngeom, rng)[:, None]


def _gear_range(model: mujoco.MjModel, key: str, value: Any, rng: np.random.Generator) -> None:
    model.actuator_gear[:] *= _draw(key, value, 0.0, model.nu, rng)[:, None]


_HANDLERS: dict[str, _Handler] = {
    "mass_scale": _mass,
    "damping_scale": _damping,
    "friction_scale": _friction,
    "gear_scale": _gear,
    "disable_actuator": _disable,
    "weaken_actuator": _weaken,
    "mass_scale_range": _mass_range,
    "damping_scale_range": _damping_range,
    "friction_scale_range": _friction_range,
    "gear_scale_range": _gear_range,
}

_DRAW_SEED = "draw_seed"  # not a change of the model: the seed of the *_range draws
PERTURBATION_KEYS: tuple[str, ...] = (*_HANDLERS, _DRAW_SEED)

# The model arrays the handlers may change (copied back after validation).
_EDITED_FIELDS = ("body_mass", "body_inertia", "dof_damping", "geom_friction", "actuator_gear")


def _draw_seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 0:
        raise ValueError(f"{_DRAW_SEED}: expected a non-negative int, got {value!r}")
    return int(value)


def _key_rng(seed: int | None, key: str) -> np.random.Generator:
    """Generator for one key: seeded by (seed, key) so key order is irrelevant."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([int(seed), zlib.crc32(key.encode())])
