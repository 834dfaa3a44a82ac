"""sim.perturb: physics perturbations change exactly the intended model values."""

from __future__ import annotations

import functools
import json
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import pytest

from sim import PERTURBATION_KEYS, apply_perturbation, make_task
from sim.tasks import Task


@functools.cache
def cheetah() -> Task:
    return make_task("HalfCheetah-v5", horizon=50)


def model_of(env: gym.Env) -> Any:
    return env.unwrapped.model  # type: ignore[attr-defined]


def fresh(perturbation: dict[str, Any] | None = None, seed: int | None = 0) -> Any:
    """Model of a newly built HalfCheetah env with ``perturbation`` applied."""
    return model_of(cheetah().make_env(seed=seed, perturbation=perturbation))


def actuator_id(model: Any, name: str) -> int:
    return int(mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, name))


def test_mass_scale_scales_mass_and_inertia() -> None:
    base, pert = fresh(), fresh({"mass_scale": 1.5})
    np.testing.assert_allclose(pert.body_mass, 1.5 * base.body_mass)
    np.testing.assert_allclose(pert.body_inertia, 1.5 * base.body_inertia)
    # mj_setConst refreshed derived quantities.
    np.testing.assert_allclose(pert.body_subtreemass, 1.5 * base.body_subtreemass)


def test_per_name_scales_touch_only_named_elements() -> None:
    base = fresh()
    pert = fresh({"mass_scale": {"torso": 2.0}, "damping_scale": {"bthigh": 0.5}, "friction_scale": {"floor": 3.0}})
    torso = mujoco.mj_name2id(base, mujoco.mjtObj.mjOBJ_BODY, "torso")
    expected_mass = base.body_mass.copy()
    expected_mass[torso] *= 2.0
    np.testing.assert_allclose(pert.body_mass, expected_mass)
    dof = base.jnt_dofadr[mujoco.mj_name2id(base, mujoco.mjtObj.mjOBJ_JOINT, "bthigh")]
    expected_damping = base.dof_damping.copy()
    expected_damping[dof] *= 0.5
    np.testing.assert_allclose(pert.dof_damping, expected_damping)
    floor = mujoco.mj_name2id(base, mujoco.mjtObj.mjOBJ_GEOM, "floor")
    expected_friction = base.geom_friction.copy()
    expected_friction[floor] *= 3.0
    np.testing.assert_allclose(pert.geom_friction, expected_friction)


def test_global_damping_friction_gear_scales() -> None:
    base = fresh()
    pert = fresh({"damping_scale": 2.0, "friction_scale": 0.5, "gear_scale": 0.8})
    np.testing.assert_allclose(pert.dof_damping, 2.0 * base.dof_damping)
    np.testing.assert_allclose(pert.geom_friction, 0.5 * base.geom_friction)
    np.testing.assert_allclose(pert.actuator_gear, 0.8 * base.actuator_gear)
    np.testing.assert_array_equal(pert.body_mass, base.body_mass)


def test_disable_and_weaken_actuators_by_index_or_name() -> None:
    base = fresh()
    pert = fresh({"disable_actuator": "fshin", "weaken_actuator": {0: 0.5, "bfoot": 0.25}})
    gear = base.actuator_gear.copy()
    gear[actuator_id(base, "fshin")] = 0.0
    gear[0] *= 0.5
    gear[actuator_id(base, "bfoot")] *= 0.25
    np.testing.assert_allclose(pert.actuator_gear, gear)
    assert np.all(fresh({"disable_actuator": [1, 2]}).actuator_gear[1:3] == 0.0)


def test_actuator_index_as_json_string_key() -> None:
    """The sim_robot's perturbation parameter is JSON, whose keys are strings: "0" is actuator 0."""
    base = fresh()
    pert = fresh(json.loads('{"weaken_actuator": {"0": 0.3}, "disable_actuator": ["2"]}'))
    gear = base.actuator_gear.copy()
    gear[0] *= 0.3
    gear[2] = 0.0
    np.testing.assert_allclose(pert.actuator_gear, gear)
    with pytest.raises(ValueError, match="out of range"):
        fresh({"weaken_actuator": {"99": 0.5}})


def rollout_qpos(env: gym.Env, ctrl: np.ndarray, steps: int = 20) -> np.ndarray:
    """qpos [nq] after ``steps`` constant-``ctrl`` steps from the seed-0 reset state."""
    env.reset(seed=0)
    for _ in range(steps):
        env.step(ctrl.astype(np.float32))
    return np.array(env.unwrapped.data.qpos)  # type: ignore[attr-defined]


@pytest.mark.parametrize("actuator", [3, "fthigh"])
def test_disabled_actuator_has_no_effect(actuator: int | str) -> None:
    only_it = np.zeros(6)
    only_it[3] = 1.0  # "fthigh" is actuator 3
    idle = np.zeros(6)
    base = cheetah().make_env(seed=0)
    assert not np.allclose(rollout_qpos(base, only_it), rollout_qpos(base, idle))  # the test can fail
    dead = cheetah().make_env(seed=0, perturbation={"disable_actuator": actuator})
    np.testing.assert_array_equal(rollout_qpos(dead, only_it), rollout_qpos(dead, idle))


def test_ranges_are_seeded_bounded_and_order_independent() -> None:
    pert = {"mass_scale_range": [0.5, 1.5], "friction_scale_range": (0.8, 1.2), "damping_scale_range": [1.0, 2.0]}
    base, a, b = fresh(), fresh(pert, seed=7), fresh(pert, seed=7)
    for field in ("body_mass", "body_inertia", "geom_friction", "dof_damping", "actuator_gear"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    reordered = fresh(dict(reversed(list(pert.items()))), seed=7)
    np.testing.assert_array_equal(reordered.body_mass, a.body_mass)
    assert not np.array_equal(fresh(pert, seed=8).body_mass, a.body_mass)
    moving = base.body_mass > 0  # the world body has zero mass
    ratio = a.body_mass[moving] / base.body_mass[moving]
    assert np.all((ratio >= 0.5) & (ratio <= 1.5)) and np.unique(ratio).size == ratio.size
    fric = a.geom_friction[:, 0] / base.geom_friction[:, 0]
    assert np.all((fric >= 0.8) & (fric <= 1.2))
    gear = fresh({"gear_scale_range": [0.9, 1.0]}, seed=1).actuator_gear[:, 0] / base.actuator_gear[:, 0]
    assert np.all((gear >= 0.9) & (gear <= 1.0))


def test_perturbation_changes_dynamics() -> None:
    ctrl = np.full(6, 0.5)
    heavy = cheetah().make_env(seed=0, perturbation={"mass_scale": 2.0})
    assert not np.allclose(rollout_qpos(cheetah().make_env(seed=0), ctrl), rollout_qpos(heavy, ctrl))


@pytest.mark.parametrize(
    ("perturbation", "key"),
    [
        ({"mass_scael": 1.2}, "mass_scael"),
        ({"mass_scale": -1.0}, "mass_scale"),
        ({"mass_scale": 0.0}, "mass_scale"),
        ({"mass_scale": "big"}, "mass_scale"),
        ({"mass_scale": True}, "mass_scale"),
        ({"mass_scale": float("nan")}, "mass_scale"),
        ({"mass_scale": {"no_such_body": 2.0}}, "mass_scale"),
        ({"damping_scale": {"bthigh": -0.1}}, "damping_scale"),
        ({"friction_scale": [1.0, 2.0]}, "friction_scale"),
        ({"gear_scale": float("inf")}, "gear_scale"),
        ({"disable_actuator": 6}, "disable_actuator"),
        ({"disable_actuator": "nope"}, "disable_actuator"),
        ({"disable_actuator": 1.5}, "disable_actuator"),
        ({"weaken_actuator": 0.5}, "weaken_actuator"),
        ({"weaken_actuator": {0: 1.5}}, "weaken_actuator"),
        ({"mass_scale_range": [1.5, 0.5]}, "mass_scale_range"),
        ({"mass_scale_range": [0.5]}, "mass_scale_range"),
        ({"friction_scale_range": 1.0}, "friction_scale_range"),
    ],
)
def test_bad_perturbations_name_the_key_and_leave_model_untouched(perturbation: dict[str, Any], key: str) -> None:
    env = cheetah().make_env(seed=0)
    model = model_of(env)
    before = {f: getattr(model, f).copy() for f in ("body_mass", "dof_damping", "geom_friction", "actuator_gear")}
    # A valid key first proves that nothing is applied when a later key fails.
    with pytest.raises(ValueError, match=key):
        apply_perturbation(env, {"mass_scale": 3.0, **perturbation}, seed=0)
    for field, value in before.items():
        np.testing.assert_array_equal(getattr(model, field), value)
    with pytest.raises(ValueError, match=key):
        cheetah().make_env(seed=0, perturbation=perturbation)


def test_empty_perturbation_is_a_no_op_and_keys_are_listed() -> None:
    np.testing.assert_array_equal(fresh({}).body_mass, fresh(None).body_mass)
    assert set(PERTURBATION_KEYS) >= {"mass_scale", "disable_actuator", "weaken_actuator", "mass_scale_range"}
    ant = make_task("Ant-v5", horizon=10).make_env(seed=0, perturbation={"mass_scale": 1.3, "gear_scale": 0.7})
    assert ant.step(ant.action_space.sample())[0].shape == (107,)


def test_identity_perturbation_keeps_dynamics_bit_exact() -> None:
    # Guards against side effects of the mj_setConst refresh.
    ctrl = np.linspace(-1.0, 1.0, 6)
    same = cheetah().make_env(seed=0, perturbation={"mass_scale": 1.0, "gear_scale": 1.0})
    np.testing.assert_array_equal(rollout_qpos(same, ctrl), rollout_qpos(cheetah().make_env(seed=0), ctrl))
