"""The comparison study's shared pieces (benchmarks/): the evaluation marks every arm reads, the bootstrap interval
and sample-efficiency figures of the table, resuming a run only from its own checkpoint, and the MB-MPC planner's
choice of action."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import compare
import eval_protocol
from eval_protocol import MarkResult, RunClock
from mpc import RandomShootingPlanner

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_marks_are_dense_to_the_model_based_budget_then_sparse() -> None:
    marks = eval_protocol.evaluation_marks(1_000_000)
    assert marks[:21] == list(range(0, 100_001, 5_000))
    assert marks[21:29] == list(range(125_000, 300_001, 25_000))
    assert marks[29:] == list(range(350_000, 1_000_001, 50_000))
    # A short budget reads the same marks as a long one, so the 25k/50k/100k table cells exist for every arm.
    assert set(eval_protocol.evaluation_marks(100_000)) <= set(marks)
    assert set(compare.TABLE_MARKS) <= set(eval_protocol.evaluation_marks(100_000))
    assert eval_protocol.evaluation_marks(1_000, every=300) == [0, 300, 600, 900, 1_000]


@pytest.mark.parametrize("budget, every", [(0, None), (-5, None), (100, 0)])
def test_bad_budgets_are_refused(budget: int, every: int | None) -> None:
    with pytest.raises(ValueError, match="positive"):
        eval_protocol.evaluation_marks(budget, every)


def test_bootstrap_interval_brackets_the_mean_and_needs_two_seeds() -> None:
    values = np.array([100.0, 200.0, 300.0])
    low, high = compare.bootstrap_ci(values)
    assert 100.0 <= low < 200.0 < high <= 300.0
    # Resampling 3 seeds: the 2.5 % quantile of the mean is at most (100 + 100 + 200) / 3.
    assert low <= 400.0 / 3 + 1e-9
    assert compare.bootstrap_ci(np.array([5.0, 5.0])) == (5.0, 5.0)
    assert all(np.isnan(compare.bootstrap_ci(np.array([7.0]))))


def _curves(returns_by_seed: dict[int, list[float]], marks: list[int]) -> compare.ArmCurves:
    rows = {seed: [{"real_steps": float(m), "return_det": r, "wall_s": 3600.0, "cpu_s": 1800.0}
                   for m, r in zip(marks, returns, strict=False)] for seed, returns in returns_by_seed.items()}
    return compare.ArmCurves(compare.ARMS["trpo"], "Hopper-v5", rows, budget=marks[-1])


def test_steps_to_reach_reads_the_seed_mean_at_marks_every_seed_has() -> None:
    marks = [0, 50_000, 100_000, 150_000]
    curves = _curves({0: [0.0, 100.0, 300.0, 500.0], 1: [0.0, 300.0, 300.0, 500.0], 2: [0.0, 200.0]}, marks)
    # Seed 2 has only two marks, so the mean curve stops at 50k: mean 200 there.
    assert compare.steps_to_reach(curves, 200.0, "return_det") == 50_000
    assert compare.steps_to_reach(curves, 250.0, "return_det") is None
    assert curves.finished == [0, 1] and curves.unfinished == [2]
    np.testing.assert_allclose(curves.values_at(100_000, "return_det"), [300.0, 300.0])


def test_plots_draw_the_finished_seeds_once_any_is_finished() -> None:
    marks = [0, 50_000, 100_000]
    partial = _curves({0: [0.0, 100.0, 300.0], 1: [0.0, 300.0]}, marks)
    drawn_marks, mean, _ = partial.drawn().mean_curve("return_det")
    np.testing.assert_array_equal(drawn_marks, marks)  # seed 1, still running, does not cut the curve at 50k
    np.testing.assert_allclose(mean, [0.0, 100.0, 300.0])
    running = _curves({0: [0.0, 100.0], 1: [0.0, 300.0]}, marks)
    assert sorted(running.drawn().curves) == [0, 1]  # none finished: every seed, over the marks all reached


def test_a_checkpoint_of_another_run_is_not_resumed(tmp_path: Path) -> None:
    spec = compare.run_spec(compare.ARMS["ppo"], "Hopper-v5", 0, tmp_path, steps=2_000, mark_every=1_000)
    curve = eval_protocol.CurveLog(spec.curve_path)
    curve.append(0, MarkResult(np.zeros(2), np.ones(2)), RunClock())
    eval_protocol.save_state(tmp_path / "state.json", spec, curve, RunClock())
    assert eval_protocol.resume_state(tmp_path / "state.json", spec)["last_mark"] == 0
    longer = compare.run_spec(compare.ARMS["ppo"], "Hopper-v5", 0, tmp_path, steps=4_000, mark_every=1_000)
    with pytest.raises(SystemExit, match="remove"):
        eval_protocol.resume_state(tmp_path / "state.json", longer)
    assert compare.steps_done(spec) == 0 and not compare.is_finished(spec)


class ScaledEnsemble:
    """Member k moves coordinate 0 by (k + 1) * action 0: ``predict(obs [K, B, 2], act [K, B, 1]) -> [K, B, 2]``."""

    num_models = 3

    def predict(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        gain = torch.arange(1.0, self.num_models + 1).view(-1, 1, 1)
        return obs + torch.cat([gain * act, torch.zeros_like(act)], dim=-1)

    def predict_all(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        k = self.num_models
        return self.predict(obs.expand(k, -1, -1), act.expand(k, -1, -1))


class ForwardTask:
    """Reward: progress of coordinate 0; never done."""

    action_low, action_high = np.array([-1.0]), np.array([1.0])

    def reward(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        return next_obs[:, 0] - obs[:, 0]

    def done(self, next_obs: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(next_obs), dtype=torch.bool)


def _drawn_actions(seed: int, horizon: int, candidates: int) -> torch.Tensor:
    """The planner's action sequences [H, N, 1] for ``seed`` (uniform on [-1, 1])."""
    return -1.0 + 2.0 * torch.rand(horizon, candidates, 1, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("use", ["split", "mean"])
def test_planner_executes_the_first_action_of_the_best_sequence(use: str) -> None:
    ensemble, horizon = ScaledEnsemble(), 4
    planner = RandomShootingPlanner(ensemble, ForwardTask(), candidates=7, horizon=horizon, seed=3,  # type: ignore[arg-type]
                                    ensemble_use=use)
    n = planner.candidates
    assert n == (9 if use == "split" else 7)  # split deals the candidates to the 3 members: rounded up
    actions = _drawn_actions(3, horizon, n)
    if use == "split":
        gain = torch.arange(1.0, 4.0).repeat_interleave(n // 3)  # candidate i is member i // 3's
    else:
        gain = torch.full((n,), 2.0)  # the mean of the gains 1, 2, 3
    best = int(torch.argmax(gain * actions[:, :, 0].sum(dim=0)))
    action = planner.plan(np.zeros(2))
    assert action.shape == (1,)
    assert action[0] == pytest.approx(float(actions[0, best, 0]), abs=1e-6)


def test_planner_refuses_a_bad_size_or_ensemble_use() -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        RandomShootingPlanner(ScaledEnsemble(), ForwardTask(), candidates=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ensemble_use"):
        RandomShootingPlanner(ScaledEnsemble(), ForwardTask(), ensemble_use="vote")  # type: ignore[arg-type]


def test_status_of_an_unfinished_arm_says_how_far_each_seed_is_and_how_to_resume(tmp_path: Path) -> None:
    curves = _curves({0: [0.0, 1.0, 2.0, 3.0], 1: [0.0, 1.0]}, [0, 50_000, 100_000, 150_000])
    status = compare._status(compare.ARMS["trpo"], "Hopper-v5", curves, [0, 1, 2], compare.RESULTS)
    assert status == ("1/3 seeds done (seed 1 at 50k); "
                      "resume: `python benchmarks/compare.py run --arm trpo --task Hopper-v5 --seeds 1 2`")
    assert compare._status(compare.ARMS["trpo"], "Hopper-v5", curves, [0], tmp_path) == "1 seed done"


def test_a_run_stopped_short_of_its_budget_is_unfinished_unless_the_study_was_a_smoke_one(tmp_path: Path) -> None:
    header = "real_steps,return_stoch,return_det,std_stoch,std_det,wall_s,cpu_s,eval_wall_s\n"
    rows = "".join(f"{m},1.0,2.0,0.1,0.1,{m / 100},{m / 100},1.0\n" for m in (0, 50_000, 100_000))
    (tmp_path / "Hopper-v5").mkdir()
    (tmp_path / "Hopper-v5" / "ppo-s0.csv").write_text(header + rows)
    stopped = compare.load_curves(tmp_path, "Hopper-v5")["ppo"]
    assert (stopped.budget, stopped.finished, stopped.unfinished) == (1_000_000, [], [0])
    assert compare._status(compare.ARMS["ppo"], "Hopper-v5", stopped, [0], tmp_path).startswith(
        "0/1 seeds done (seed 0 at 100k); resume:")
    smoke = compare.load_curves(tmp_path, "Hopper-v5", steps=100_000)["ppo"]
    assert smoke.finished == [0]
