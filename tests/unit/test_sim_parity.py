"""sim tasks: observation-only reward/done reproduce the MuJoCo v5 simulator.

For every task, 2000 uniform-random-action steps (resetting on termination or
truncation) are scored with ``task.reward``/``task.done`` in one batch and
compared with what ``env.step`` returned; the same batch through float64 torch
must agree with numpy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium.spaces import Box

from sim import ANT_REWARD_ERROR_BOUND, TASK_NAMES, make_task
from sim.tasks import Task

STEPS = 2000
EXACT_TOL = 1e-5
# Tasks whose random rollouts must terminate at least once, so done is tested.
TERMINATING = {"Hopper-v5", "Walker2d-v5", "Ant-v5", "InvertedPendulum-v5"}


@dataclass(frozen=True)
class Rollout:
    """Stacked transitions: obs/next_obs [N, obs_dim], act [N, act_dim], rew/term [N]."""

    obs: np.ndarray
    act: np.ndarray
    next_obs: np.ndarray
    rew: np.ndarray
    term: np.ndarray


@functools.cache
def task_of(name: str) -> Task:
    return make_task(name, horizon=200)


@functools.cache
def rollout(name: str, steps: int = STEPS, seed: int = 0) -> Rollout:
    """Random-action transitions from the real env; the terminal obs is kept as next_obs."""
    env = task_of(name).make_env(seed=seed)
    obs, _ = env.reset(seed=seed)
    rows = []
    for _ in range(steps):
        act = env.action_space.sample()
        next_obs, rew, term, trunc, _ = env.step(act)
        rows.append((obs, act, next_obs, rew, term))
        obs = env.reset()[0] if term or trunc else next_obs
    env.close()
    cols = [np.asarray(c) for c in zip(*rows, strict=True)]
    # Actions are float32 in the env; score them as the float64 values it applied.
    return Rollout(cols[0], cols[1].astype(np.float64), cols[2], cols[3].astype(np.float64), cols[4])


@pytest.mark.parametrize("name", TASK_NAMES)
def test_numpy_reward_and_done_match_simulator(name: str) -> None:
    task, ro = task_of(name), rollout(name)
    err = np.abs(task.reward(ro.obs, ro.act, ro.next_obs) - ro.rew)
    if name == "Ant-v5":
        # Forward term differs by the RK4-stage xpos lag (see sim.tasks docstring);
        # measured max 0.16, p99 0.037, mean 0.004 over 200k steps.
        assert err.max() <= ANT_REWARD_ERROR_BOUND
        assert err.mean() <= 0.01
    else:
        assert err.max() <= EXACT_TOL
    done = task.done(ro.next_obs)
    assert done.dtype == np.bool_ and done.shape == (STEPS,)
    np.testing.assert_array_equal(done, ro.term)
    if name in TERMINATING:
        assert ro.term.any(), "rollout never terminated: done parity untested"


@pytest.mark.parametrize("name", TASK_NAMES)
def test_torch_float64_matches_numpy(name: str) -> None:
    task, ro = task_of(name), rollout(name)
    obs, act, nxt = (torch.from_numpy(a) for a in (ro.obs, ro.act, ro.next_obs))
    rew_t, done_t = task.reward(obs, act, nxt), task.done(nxt)
    assert isinstance(rew_t, torch.Tensor) and rew_t.dtype == torch.float64
    assert isinstance(done_t, torch.Tensor) and done_t.dtype == torch.bool
    np.testing.assert_allclose(rew_t.numpy(), task.reward(ro.obs, ro.act, ro.next_obs), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(done_t.numpy(), task.done(ro.next_obs))


@pytest.mark.parametrize("name", TASK_NAMES)
def test_names_and_spaces(name: str) -> None:
    task = task_of(name)
    env = task.make_env(seed=0)
    obs_space, act_space = env.observation_space, env.action_space
    u: Any = env.unwrapped
    assert isinstance(obs_space, Box) and isinstance(act_space, Box)
    assert len(task.obs_names) == task.obs_dim == obs_space.shape[0]
    assert len(set(task.obs_names)) == task.obs_dim
    assert len(task.act_names) == len(task.joint_names) == task.act_dim == act_space.shape[0]
    np.testing.assert_array_equal(task.action_low, act_space.low)
    np.testing.assert_array_equal(task.action_high, act_space.high)
    assert task.dt == pytest.approx(u.dt) and task.name == name and task.horizon == 200
    env.close()


def test_named_obs_entries_point_at_the_right_state() -> None:
    for name, entry, field, idx in [
        ("HalfCheetah-v5", "qpos.rootx", "qpos", 0),
        ("Hopper-v5", "qvel.foot_joint", "qvel", 5),
        ("Ant-v5", "qpos.root.z", "qpos", 2),
        ("Ant-v5", "qvel.root.vx", "qvel", 0),
        ("Ant-v5", "qpos.hip_1", "qpos", 7),
        ("InvertedPendulum-v5", "qpos.hinge", "qpos", 1),
    ]:
        task = task_of(name)
        env = task.make_env(seed=1)
        obs, *_ = env.step(env.action_space.sample())
        u: Any = env.unwrapped
        expected = getattr(u.data, field)[idx]
        assert obs[task.obs_names.index(entry)] == pytest.approx(expected), (name, entry)
        env.close()
    reacher = task_of("Reacher-v5")
    env = reacher.make_env(seed=1)
    obs, *_ = env.step(env.action_space.sample())
    u = env.unwrapped
    tip = (u.get_body_com("fingertip") - u.get_body_com("target"))[:2]
    np.testing.assert_allclose(obs[reacher.obs_names.index("fingertip_to_target.x") :][:2], tip)
    assert reacher.joint_names == ["joint0", "joint1"]
    assert task_of("HalfCheetah-v5").joint_names == ["bthigh", "bshin", "bfoot", "fthigh", "fshin", "ffoot"]


@pytest.mark.parametrize("name", ["HalfCheetah-v5", "Ant-v5", "InvertedPendulum-v5", "Reacher-v5"])
def test_dtype_device_and_kind_preserved(name: str) -> None:
    task, ro = task_of(name), rollout(name)
    sl = slice(0, 16)
    obs32, act32, nxt32 = (a[sl].astype(np.float32) for a in (ro.obs, ro.act, ro.next_obs))
    rew32 = task.reward(obs32, act32, nxt32)
    assert isinstance(rew32, np.ndarray) and rew32.dtype == np.float32 and rew32.shape == (16,)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        obs, act, nxt = (torch.as_tensor(a, device=device) for a in (obs32, act32, nxt32))
        rew, done = task.reward(obs, act, nxt), task.done(nxt)
        assert rew.dtype == torch.float32 and rew.device.type == device and rew.shape == (16,)
        assert done.dtype == torch.bool and done.device.type == device and done.shape == (16,)


# v5 Walker2d only checks torso z and pitch, so a NaN elsewhere does not end it.
@pytest.mark.parametrize(
    ("name", "col"), [("InvertedPendulum-v5", 3), ("Ant-v5", 20), ("Hopper-v5", 8), ("Walker2d-v5", 1)]
)
def test_non_finite_observations_terminate(name: str, col: int) -> None:
    task, ro = task_of(name), rollout(name)
    bad = ro.next_obs[:4].copy()
    bad[:, col] = np.nan
    assert task.done(bad).all()
    assert task.done(torch.from_numpy(bad)).all()


def test_unknown_task_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"HalfCheetah-v5.*Reacher-v5"):
        make_task("Humanoid-v5")
    with pytest.raises(ValueError, match="horizon"):
        make_task("Hopper-v5", horizon=0)


@pytest.mark.parametrize("horizon", [7, 200])
def test_time_limit_is_the_horizon(horizon: int) -> None:
    env = make_task("HalfCheetah-v5", horizon=horizon).make_env(seed=0)
    env.reset(seed=0)
    truncs = [env.step(env.action_space.sample())[3] for _ in range(horizon)]
    assert truncs == [False] * (horizon - 1) + [True]
    env.close()


def test_sample_initial_obs_follows_reset_distribution() -> None:
    task = task_of("HalfCheetah-v5")
    a = task.sample_initial_obs(500, np.random.default_rng(3))
    b = task.sample_initial_obs(500, np.random.default_rng(3))
    assert a.shape == (500, task.obs_dim) and a.dtype == np.float64
    np.testing.assert_array_equal(a, b)
    # v5 HalfCheetah reset: qpos ~ init + U(-0.1, 0.1), qvel ~ 0.1 * N(0, 1).
    qpos, qvel = a[:, :9], a[:, 9:]
    assert np.abs(qpos[:, 0]).max() <= 0.1 and qpos[:, 0].std() == pytest.approx(0.2 / 12**0.5, rel=0.15)
    assert qvel.std() == pytest.approx(0.1, rel=0.1)
    assert len(np.unique(a[:, 0])) == 500
    first = task.make_env(seed=0).reset(seed=int(np.random.default_rng(3).integers(2**31 - 1)))[0]
    np.testing.assert_array_equal(a[0], first)
    assert task.sample_initial_obs(0, np.random.default_rng(0)).shape == (0, task.obs_dim)
    ant = task_of("Ant-v5").sample_initial_obs(3, np.random.default_rng(0))
    assert ant.shape == (3, 107) and np.all(ant[:, 29:] == 0.0)  # no contact forces at reset


def test_position_obs_are_the_planar_root_coordinates() -> None:
    expected = {"HalfCheetah-v5": ["qpos.rootx"], "Ant-v5": ["qpos.root.x", "qpos.root.y"],
                "InvertedPendulum-v5": [], "Reacher-v5": []}
    for name, names in expected.items():
        task = make_task(name, horizon=10)
        assert [task.obs_names[i] for i in task.position_obs] == names
