"""MetaLearner: learning from stored real data alone (no env), start states, reports, exact state round trip."""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import sim.tasks
from mbmpo_core.checkpoint import read_checkpoint, write_checkpoint
from mbmpo_core.config import Config, EnsembleConfig, LoopConfig, MetaConfig, PolicyConfig
from mbmpo_core.meta_learner import PHASES, ImproveProgress, MetaLearner, format_seconds
from mbmpo_core.report import PROGRESS_COLUMNS
from mbmpo_core.sampler import RealSampler, uniform_random_actions
from sim import make_task

TINY = Config(
    task="InvertedPendulum-v5",
    ensemble=EnsembleConfig(num_models=2, hidden_sizes=(32, 32), batch_size=64, max_epochs=5),
    policy=PolicyConfig(hidden_sizes=(16, 16)),
    meta=MetaConfig(meta_batch_size=4, rollouts_per_task=4, meta_steps=2),
    loop=LoopConfig(random_steps=200, steps_per_iter=200, total_steps=600, eval_episodes=1, horizon=20),
)
TASK = make_task(TINY.task, horizon=TINY.loop.horizon)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def real_data(steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random-action transitions of the real env, as the store returns them."""
    sampler = RealSampler([TASK.make_env(seed=seed)], TINY.loop.horizon, TASK.action_low, TASK.action_high,
                          seed=seed)
    batch = sampler.sample(uniform_random_actions(TASK.action_low, TASK.action_high, np.random.default_rng(seed)),
                           steps)
    return batch.transitions()


DATA_400 = real_data(400)  # made before any test forbids envs


@pytest.fixture()
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a MuJoCo env (for sampling, resets or start states) fails the test."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("built a MuJoCo env")

    monkeypatch.setattr(sim.tasks.Task, "make_env", refuse)
    monkeypatch.setattr(sim.tasks.Task, "sample_initial_obs", refuse)
    monkeypatch.setattr(sim.tasks, "_build_env", refuse)


def test_improve_learns_from_stored_data_without_any_env(no_env: None) -> None:
    data = DATA_400
    learner = MetaLearner(TINY, TASK)
    report = learner.improve(data)
    assert (report.iteration, learner.iteration, report.transitions) == (0, 1, 400)
    # The M = 4 adapted policies that collect next: one per meta-batch task, shaped like theta with a leading M.
    for name, theta in learner.policy.params().items():
        assert report.collect_params[name].shape == (4, *theta.shape), name
    weights = report.collect_params["l0.weight"]
    assert all(not torch.equal(weights[i], weights[j]) for i in range(4) for j in range(i))  # each its own step
    assert report.fit.valid_mse.shape == (2,) and np.all(np.isfinite(report.fit.valid_mse))
    assert np.isfinite(report.meta.outer_kl) and report.meta.outer_accepted in (0.0, 1.0)
    assert set(report.seconds) == set(PHASES) and all(s > 0 for s in report.seconds.values())
    # The observation normalizer is set from the first data (and kept afterwards).
    np.testing.assert_allclose(learner.policy.obs_mean.numpy(), data["obs"].mean(0), rtol=1e-5, atol=1e-6)
    mean_before = learner.policy.obs_mean.clone()
    assert learner.improve({k: v[:200] for k, v in data.items()}).iteration == 1
    torch.testing.assert_close(learner.policy.obs_mean, mean_before, rtol=0, atol=0)



def test_the_collecting_policies_are_adapted_from_the_final_theta() -> None:
    # With no inner step (ME-TRPO) every task's adapted policy is theta itself: the theta after the last outer
    # step, not the one before it, which the last meta-step adapted.
    learner = MetaLearner(replace(TINY, meta=replace(TINY.meta, inner_lr=0.0)), TASK)
    report = learner.improve(DATA_400)
    assert report.meta.outer_accepted == 1.0
    for name, theta in learner.policy.params().items():
        torch.testing.assert_close(report.collect_params[name], theta.detach().expand(4, *theta.shape), rtol=0,
                                   atol=0, msg=name)


def test_improve_reports_progress_at_every_model_epoch_and_meta_step() -> None:
    events: list[ImproveProgress] = []
    learner = MetaLearner(replace(TINY, meta=replace(TINY.meta, meta_steps=3)), TASK)
    report = learner.improve(DATA_400, progress=events.append)
    epochs = int(report.fit.epochs.max())
    fit = [e for e in events if e.phase == "fit"]
    meta = [e for e in events if e.phase == "meta"]
    assert [e.epoch for e in fit] == list(range(epochs + 1)) and fit[0].max_epochs == TINY.ensemble.max_epochs
    assert [e.meta_step for e in meta] == [0, 1, 2, 3] and all(e.meta_steps == 3 for e in meta)
    assert events == fit + meta and all(e.iteration == 0 for e in events)
    elapsed = [e.elapsed_s for e in events]
    assert elapsed == sorted(elapsed) and elapsed[-1] <= sum(report.seconds.values()) + 1.0
    assert np.isnan(fit[0].eta_s) and np.isfinite(meta[1].eta_s) and meta[-1].eta_s == 0.0
    assert meta[2].describe().startswith("iteration 0: meta-step 2/3, ")
    assert fit[1].describe().startswith(f"iteration 0: model fit, epoch 1/{TINY.ensemble.max_epochs}, ")
    # The next call's fit knows the meta-step pace: its ETA is finite from the first epoch on.
    later: list[ImproveProgress] = []
    learner.improve(DATA_400, progress=later.append)
    assert np.isfinite(later[1].eta_s) and later[0].iteration == 1


def test_model_fit_uses_the_fifo_tail() -> None:
    config = replace(TINY, ensemble=replace(TINY.ensemble, capacity=150))
    report = MetaLearner(config, TASK).improve(DATA_400)
    assert report.transitions == 150


def test_start_states_come_from_episode_starts_and_the_real_start_fraction_from_any_stored_state() -> None:
    stored = np.arange(100.0)[:, None].repeat(TASK.obs_dim, axis=1)  # row i = [i, i, i, i]
    starts = stored[::10]  # rows 0, 10, ..., 90
    config = replace(TINY, meta=replace(TINY.meta, real_start_fraction=0.25))
    learner = MetaLearner(config, TASK)
    drawn = learner.start_states(400, starts, stored).numpy()[:, 0]
    assert drawn.shape == (400,) and np.isin(drawn, stored[:, 0]).all()
    # 1 - 0.25 of them are episode starts; the 0.25 from any stored state are mostly not (9 in 10 rows are not).
    assert 0.15 < np.mean(drawn % 10 != 0) < 0.3
    # Mixed over the batch: each quarter (the tasks of one model, when reshaped [M, N]) gets its share of both.
    for quarter in drawn.reshape(4, 100):
        assert 0.05 < np.mean(quarter % 10 != 0) < 0.45
    all_stored = MetaLearner(replace(TINY, meta=replace(TINY.meta, real_start_fraction=1.0)), TASK)
    assert np.mean(all_stored.start_states(400, starts, stored).numpy()[:, 0] % 10 != 0) > 0.8


def test_without_episode_starts_imagination_starts_from_every_stored_state(no_env: None) -> None:
    data = {**DATA_400, "step": DATA_400["step"] + 1}  # no row with step == 0
    learner = MetaLearner(TINY, TASK)
    seen: list[np.ndarray] = []
    start_states = learner.start_states

    def spy(n: int, episode_starts: np.ndarray, stored_obs: np.ndarray) -> torch.Tensor:
        seen.append(episode_starts)
        return start_states(n, episode_starts, stored_obs)

    learner.start_states = spy  # type: ignore[method-assign]
    learner.improve(data)
    # Pre- and post-update rollouts of every meta-step, and the final adaptation's.
    assert len(seen) == 2 * TINY.meta.meta_steps + 1 and seen[0].shape == DATA_400["obs"].shape
    learner = MetaLearner(TINY, TASK)
    learner.start_states = spy  # type: ignore[method-assign]
    learner.improve(DATA_400)
    assert len(seen[-1]) == int(np.sum(DATA_400["step"] == 0)) > 1


def test_state_dict_round_trip_continues_exactly(tmp_path: Path) -> None:
    first, second = ({k: v[:200] for k, v in DATA_400.items()}, DATA_400)
    straight = MetaLearner(TINY, TASK)
    straight.improve(first)
    expected = straight.improve(second)
    interrupted = MetaLearner(TINY, TASK)
    interrupted.improve(first)
    assert int(interrupted.ensemble.state_dict()["_extra_state"]) == 1  # the fit count is the ensemble's own state
    write_checkpoint(tmp_path, interrupted.state_dict())
    resumed = MetaLearner(TINY, TASK)
    resumed.load_state_dict(read_checkpoint(tmp_path))
    got = resumed.improve(second)
    torch.testing.assert_close(resumed.policy.params_to_vector(), straight.policy.params_to_vector(), rtol=0, atol=0)
    np.testing.assert_array_equal(got.fit.valid_mse, expected.fit.valid_mse)
    assert got.meta == expected.meta and got.iteration == expected.iteration == 1


def test_state_of_another_config_is_one_clear_error() -> None:
    other = MetaLearner(replace(TINY, policy=PolicyConfig(hidden_sizes=(8,))), TASK)
    with pytest.raises(ValueError, match="does not fit this meta-learner"):
        MetaLearner(TINY, TASK).load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match=r"does not fit this meta-learner .*: KeyError"):
        MetaLearner(TINY, TASK).load_state_dict({"iteration": 1})


def test_progress_row_has_the_progress_columns_and_sums_the_phases() -> None:
    report = MetaLearner(replace(TINY, meta=replace(TINY.meta, meta_steps=0)), TASK).improve(DATA_400)
    row = report.progress_row(400, [1.0, 3.0], return_pre=5.0, seconds={"sample": 2.0, "eval": 1.0})
    assert set(row) <= set(PROGRESS_COLUMNS)
    assert (row["iteration"], row["real_steps"], row["return_train"], row["return_pre"]) == (0.0, 400.0, 2.0, 5.0)
    assert np.isnan(row["return_post"]) and np.isnan(row["outer_kl"])  # no meta-step ran
    assert row["time_total"] == pytest.approx(3.0 + sum(report.seconds.values()))
    evaluated = report.progress_row(400, real_returns={"return_pre": 1.0, "return_post_det": 2.0})
    assert set(evaluated) <= set(PROGRESS_COLUMNS)
    assert (evaluated["return_pre"], evaluated["return_post_det"]) == (1.0, 2.0)
    assert np.isnan(evaluated["return_post"]) and np.isnan(evaluated["return_adapted_real"])


def test_format_seconds() -> None:
    assert [format_seconds(s) for s in (4.4, 59.6, 185, 3725)] == ["4 s", "1 min 00 s", "3 min 05 s", "1 h 02 min"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: {k: v for k, v in d.items() if k != "step"}, r"lacks column\(s\) \['step'\]"),
    (lambda d: {**d, "act": d["act"][:, :0]}, "expected obs/next_obs"),
    (lambda d: {**d, "obs": np.where(np.arange(len(d["obs"]))[:, None] == 3, np.nan, d["obs"])}, "NaN"),
    (lambda d: {k: v[:1] for k, v in d.items()}, "at least 2 transitions"),
])
def test_bad_data_is_one_clear_error(change: object, message: str) -> None:
    learner = MetaLearner(TINY, TASK)
    with pytest.raises(ValueError, match=message):
        learner.improve(change(DATA_400))  # type: ignore[operator]
    assert learner.iteration == 0


def test_meta_learner_and_sim_loop_import_no_simulator() -> None:
    code = ("import sys, mbmpo_core.meta_learner, mbmpo_core.sim_loop; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('sim', 'gymnasium', 'mujoco', 'rclpy')]; "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
