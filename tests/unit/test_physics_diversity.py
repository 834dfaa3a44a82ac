"""Tasks that contain physics: per-env domain randomisation in the simulated loop, the ``physics`` column, and an
ensemble fit whose members lean towards their own physics group (``ensemble.member_emphasis``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mbmpo_core.config import (
    Config,
    ConfigError,
    EnsembleConfig,
    LoopConfig,
    MetaConfig,
    PolicyConfig,
    RandomizeConfig,
    load_config,
)
from mbmpo_core.ensemble import DynamicsEnsemble
from mbmpo_core.meta_learner import MetaLearner
from mbmpo_core.registry import make_task
from mbmpo_core.sim_loop import PHYSICS_NAME, SimTrainingLoop, physics_draws
from mbmpo_core.store import TransitionStore, robot_groups
from sim import apply_perturbation

RANDOMIZED = Config(
    task="InvertedPendulum-v5",
    ensemble=EnsembleConfig(num_models=2, hidden_sizes=(16, 16), batch_size=64, max_epochs=3, member_emphasis=4.0),
    policy=PolicyConfig(hidden_sizes=(8, 8)),
    meta=MetaConfig(meta_batch_size=4, rollouts_per_task=2, meta_steps=1),
    loop=LoopConfig(random_steps=80, steps_per_iter=80, total_steps=160, eval_episodes=1, horizon=20),
    randomize=RandomizeConfig(mass_scale_range=(0.5, 2.0), damping_scale_range=(0.5, 2.0)),
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_loop(run_dir: Path, config: Config = RANDOMIZED) -> SimTrainingLoop:
    return SimTrainingLoop(config, make_task(config.task, horizon=config.loop.horizon), run_dir, log=lambda _: None)


def body_mass(env: Any) -> np.ndarray:
    return np.array(env.unwrapped.model.body_mass)


# ------------------------------------------------------------------ ensemble fit
def two_physics(n: int = 1200) -> tuple[np.ndarray, ...]:
    """One input distribution, two physics: next = obs + gain * act with gain +1 (group 0) or -1 (group 1);
    obs [n, 2], act [n, 1], next_obs [n, 2], groups [n] (alternating)."""
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((n, 2))
    act = rng.uniform(-1.0, 1.0, (n, 1))
    groups = np.arange(n) % 2
    gain = np.where(groups == 0, 1.0, -1.0)[:, None]
    return obs, act, obs + gain * act, groups


def group_errors(ens: DynamicsEnsemble, obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray,
                 groups: np.ndarray) -> np.ndarray:
    """[K, G] one-step MSE of model k on the rows of group g."""
    pred = ens.predict_all(obs, act).numpy()  # [K, N, obs_dim]
    err = ((pred - next_obs[None]) ** 2).mean(axis=2)
    return np.stack([err[:, groups == g].mean(axis=1) for g in (0, 1)], axis=1)


def fitted(emphasis: float, groups: np.ndarray | None) -> DynamicsEnsemble:
    obs, act, next_obs, _ = two_physics()
    ens = DynamicsEnsemble(2, 1, num_models=2, hidden_sizes=(32,), batch_size=100, member_emphasis=emphasis,
                           seed=3)
    ens.fit(obs, act, next_obs, epochs=30, early_stop=False, groups=groups)
    return ens


def test_fit_with_groups_moves_each_member_towards_its_group() -> None:
    obs, act, next_obs, groups = two_physics()
    plain = group_errors(fitted(1.0, groups), obs, act, next_obs, groups)
    emphasised = group_errors(fitted(9.0, groups), obs, act, next_obs, groups)
    # Without emphasis both members fit the average physics: each group's error is the same for both members.
    assert np.allclose(plain[:, 0], plain[:, 1], rtol=0.3)
    # With emphasis 9 (90 % of a member's loss on its own group) member k predicts group k's physics ...
    for k in (0, 1):
        assert emphasised[k, k] < 0.5 * plain[k, k]
        assert emphasised[k, k] < 0.5 * emphasised[k, 1 - k]
    # ... so the members disagree where the physics differ: spread along physics.
    pred = fitted(9.0, groups).predict_all(obs, act).numpy()
    spread = pred.std(axis=0).mean()
    assert spread > 3 * fitted(1.0, groups).predict_all(obs, act).numpy().std(axis=0).mean()


def test_emphasis_one_is_the_plain_fit_exactly() -> None:
    _, _, _, groups = two_physics()
    plain, grouped = fitted(1.0, None), fitted(1.0, groups)
    for a, b in zip(plain.state_dict().values(), grouped.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_row_weights() -> None:
    ens = DynamicsEnsemble(2, 1, num_models=3, hidden_sizes=(4,), member_emphasis=5.0)
    w = ens.row_weights(np.array([0, 1, 2, 3, -1]), 5)
    assert w is not None
    assert w.tolist() == [[5, 1, 1, 5, 1], [1, 5, 1, 1, 1], [1, 1, 5, 1, 1]]
    assert ens.row_weights(None, 5) is None
    with pytest.raises(ValueError, match=r"groups must be \[5\] int"):
        ens.row_weights(np.zeros(5), 5)
    with pytest.raises(ValueError, match=r"groups must be \[5\] int"):
        ens.row_weights(np.zeros(4, dtype=int), 5)
    with pytest.raises(ValueError, match="member_emphasis"):
        DynamicsEnsemble(2, 1, member_emphasis=0.0)


def test_emphasis_survives_save_and_load(tmp_path: Path) -> None:
    ens = DynamicsEnsemble(2, 1, num_models=2, hidden_sizes=(4,), member_emphasis=2.5)
    ens.save(tmp_path / "m.pt")
    assert DynamicsEnsemble.load(tmp_path / "m.pt").member_emphasis == 2.5


def test_improve_passes_the_physics_column_to_the_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    config = replace(RANDOMIZED, meta=replace(RANDOMIZED.meta, meta_steps=0),
                     ensemble=replace(RANDOMIZED.ensemble, capacity=30))
    learner = MetaLearner(config, make_task(config.task, horizon=20))
    seen: dict[str, Any] = {}
    real_fit = learner.ensemble.fit

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(learner.ensemble, "fit", spy)
    rng = np.random.default_rng(0)
    n = 50
    data = {"obs": rng.standard_normal((n, 4)), "act": rng.standard_normal((n, 1)),
            "next_obs": rng.standard_normal((n, 4)), "step": np.arange(n) % 10, "physics": np.arange(n) % 2}
    learner.improve(data)
    assert seen["groups"].tolist() == (np.arange(20, 50) % 2).tolist()  # the FIFO tail's rows
    with pytest.raises(ValueError, match="'physics' must be"):
        learner.improve({**data, "physics": np.zeros(n)})


# --------------------------------------------------------------------- sim loop
def test_sim_loop_records_each_rows_physics_draw(tmp_path: Path) -> None:
    loop = make_loop(tmp_path)
    assert loop.env_physics.tolist() == [0, 1, 0, 1]  # env m runs draw m % K
    loop.iteration()  # warm-up + one improve
    loop._collect()  # and one collection by the adapted policies
    data = TransitionStore(tmp_path / "transitions").load_all()
    assert len(data["obs"]) == 160
    assert np.bincount(data["physics"]).tolist() == [80, 80]
    # Envs 0 and 2 share draw 0, and differ from draw 1; the evaluation envs are nominal.
    masses = [body_mass(env) for env in loop.sampler.envs]
    nominal = body_mass(loop.task.make_env(seed=0))
    assert np.array_equal(masses[0], masses[2]) and np.array_equal(masses[1], masses[3])
    assert not np.allclose(masses[0], masses[1]) and not np.allclose(masses[0][1:], nominal[1:])
    assert all(np.array_equal(body_mass(env), nominal) for env in loop.eval_sampler.envs)
    # physics.json says which physics each draw has.
    record = json.loads((tmp_path / PHYSICS_NAME).read_text())
    assert record["evaluation"] == "nominal" and record["randomize"]["mass_scale_range"] == [0.5, 2.0]
    first = record["draws"][0]
    assert first["collection_envs"] == [0, 2]
    assert first["factors"]["mass"][1:] == pytest.approx(masses[0][1:] / nominal[1:], abs=1e-4)
    assert 0.5 <= min(first["factors"]["mass"][1:]) and max(first["factors"]["mass"][1:]) <= 2.0


def test_whole_robot_or_per_object_draws(tmp_path: Path) -> None:
    draws = physics_draws(RANDOMIZED)
    assert len(draws) == 2 and set(draws[0]) == {"mass_scale", "damping_scale"}
    # Each range is cut into K = 2 halves, and the K draws take one factor in each (Latin hypercube).
    for key in ("mass_scale", "damping_scale"):
        assert sorted(d[key] < 1.25 for d in draws) == [False, True]
        assert all(0.5 <= d[key] <= 2.0 for d in draws)
    five = physics_draws(replace(RANDOMIZED, ensemble=replace(RANDOMIZED.ensemble, num_models=5)))
    slices = sorted(int((d["mass_scale"] - 0.5) / 0.3) for d in five)
    assert slices == [0, 1, 2, 3, 4]
    per_object = replace(RANDOMIZED, randomize=replace(RANDOMIZED.randomize, per_object=True))
    loop = make_loop(tmp_path, per_object)
    nominal = body_mass(loop.task.make_env(seed=0))
    factors = body_mass(loop.sampler.envs[0])[1:] / nominal[1:]
    assert factors.std() > 0.05 and 0.5 <= factors.min() and factors.max() <= 2.0  # one factor per body
    whole = body_mass(make_loop(tmp_path / "whole").sampler.envs[0])[1:] / nominal[1:]
    assert whole == pytest.approx(np.full_like(whole, draws[0]["mass_scale"]))  # one factor for the robot


def test_a_resumed_loop_rebuilds_the_same_physics(tmp_path: Path) -> None:
    loop = make_loop(tmp_path)
    again = make_loop(tmp_path)
    for a, b in zip(loop.sampler.envs, again.sampler.envs, strict=True):
        assert np.array_equal(body_mass(a), body_mass(b))
    assert physics_draws(RANDOMIZED) == physics_draws(RANDOMIZED)
    assert physics_draws(replace(RANDOMIZED, seed=1)) != physics_draws(RANDOMIZED)


def test_randomisation_off_stores_no_draw(tmp_path: Path) -> None:
    config = replace(RANDOMIZED, randomize=RandomizeConfig())
    loop = make_loop(tmp_path, config)
    loop._collect()
    assert physics_draws(config) == [] and not (tmp_path / PHYSICS_NAME).exists()
    assert set(TransitionStore(tmp_path / "transitions").load_all()["physics"].tolist()) == {-1}


# ------------------------------------------------------------------ draw seeds
def test_draw_seed_rebuilds_a_draw_in_envs_of_any_seed() -> None:
    task = make_task("InvertedPendulum-v5", horizon=20)
    draw = {"mass_scale_range": [0.5, 2.0], "draw_seed": 7}
    a, b = task.make_env(seed=1, perturbation=draw), task.make_env(seed=2, perturbation=draw)
    c = task.make_env(seed=1, perturbation={"mass_scale_range": [0.5, 2.0]})
    assert np.array_equal(body_mass(a), body_mass(b)) and not np.array_equal(body_mass(a), body_mass(c))
    with pytest.raises(ValueError, match="draw_seed: expected a non-negative int"):
        apply_perturbation(a, {"draw_seed": -1})


# ---------------------------------------------------------------------- config
def test_defaults_keep_todays_behaviour() -> None:
    c = Config()
    assert c.ensemble.member_emphasis == 1.0 and c.randomize.ranges() == {}


def test_randomize_section_loads(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("randomize: {mass_scale_range: [0.5, 1.5], gear_scale_range: [0.3, 1]}\n"
                    "ensemble: {member_emphasis: 3}\n")
    c = load_config(path)
    assert c.randomize.ranges() == {"mass_scale_range": [0.5, 1.5], "gear_scale_range": [0.3, 1.0]}
    assert c.ensemble.member_emphasis == 3.0


@pytest.mark.parametrize(("text", "key"), [
    ("randomize: {mass_scale_range: [1.5, 0.5]}", "randomize.mass_scale_range"),
    ("randomize: {damping_scale_range: [0.5]}", "randomize.damping_scale_range"),
    ("randomize: {gear_scale_range: [0, 1]}", "randomize.gear_scale_range"),
    ("randomize: {friction_scale_range: [0.5, .inf]}", "randomize.friction_scale_range"),
    ("randomize: {mass_scale_range: 2}", "randomize.mass_scale_range"),
    ("randomize: {mass_range: [0.5, 2]}", "randomize.mass_range"),
    ("ensemble: {member_emphasis: 0}", "ensemble.member_emphasis"),
    ("ensemble: {member_emphasis: .nan}", "ensemble.member_emphasis"),
])
def test_bad_randomisation_is_one_line(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=f"'{key}'") as err:
        load_config(path)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ many robots
def test_rows_of_each_robot_form_a_group() -> None:
    robots = np.array(["b", "b", "a", "", "c", "a"])
    assert robot_groups({"physics": np.full(6, -1), "robot": robots}).tolist() == [0, 0, 1, -1, 2, 1]
    # Rows that say their physics draw (a randomised simulated run) keep it.
    assert robot_groups({"physics": np.array([0, 1, -1]), "robot": robots[:3]}).tolist() == [0, 1, -1]
    assert robot_groups({"physics": np.zeros(0, dtype=int), "robot": np.zeros(0, dtype=str)}).tolist() == []
