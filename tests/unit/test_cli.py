"""The mbmpo command line: one-line errors with exit code 2, and train -> resume -> export end to end."""

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from mbmpo_core.onnx_runtime import validate_policy_file
from mbmpo_ros.cli import main

TINY = """
task: InvertedPendulum-v5
ensemble: {num_models: 2, hidden_sizes: [32, 32], batch_size: 64, max_epochs: 3}
policy: {hidden_sizes: [8, 8]}
meta: {meta_batch_size: 2, rollouts_per_task: 3, meta_steps: 1}
loop: {random_steps: 100, steps_per_iter: 100, total_steps: 200, eval_episodes: 1, horizon: 20}
"""


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_unknown_task_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--task", "Nope-v0", "--no-progress"]) == 2
    line = error_line(capsys)
    assert "unknown task 'Nope-v0'; valid names: " in line and "HalfCheetah-v5" in line  # from the registry


def test_bad_task_entry_point_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--task", "mbmpo_no_such_module:make", "--no-progress"]) == 2
    assert error_line(capsys) == ("mbmpo: error: task entry point 'mbmpo_no_such_module:make' cannot be loaded "
                                  "(No module named 'mbmpo_no_such_module')")


def test_train_resolves_its_task_through_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from mbmpo_core import registry
    from mbmpo_ros import cli

    made = SimpleNamespace(name="Toy-v0")
    trained: list[tuple[str, object]] = []
    monkeypatch.setattr(registry, "_registered", {})
    registry.register("Toy-v0", lambda name, horizon: made if horizon == 20 else None)  # TINY's horizon

    def run_training(config: object, task: object, *args: object, **kwargs: object) -> int:
        trained.append((config.task, task))  # type: ignore[attr-defined]
        return 0

    monkeypatch.setattr(cli, "_run_training", run_training)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    assert main(["train", "--config", str(config), "--task", "Toy-v0", "--no-progress"]) == 0
    assert trained == [("Toy-v0", made)]


def test_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("meta: {max_kl: lots}\n")
    assert main(["train", "--config", str(bad), "--no-progress"]) == 2
    assert f"{bad}: 'meta.max_kl' must be float" in error_line(capsys)


def test_resume_of_a_directory_without_a_run_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--resume", str(tmp_path), "--no-progress"]) == 2
    assert "nothing to resume (no checkpoint, no stored transitions)" in error_line(capsys)


def test_cuda_without_gpu_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    assert main(["train", "--device", "cuda", "--no-progress"]) == 2
    assert "no CUDA GPU" in error_line(capsys)


def test_export_of_missing_run_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path / "none"), "-o", str(tmp_path / "p.onnx")]) == 2
    assert "no such run directory" in error_line(capsys)


def test_train_resume_export_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--run-dir", str(run), "--seed", "3", "--no-progress"]) == 0
    rows = (run / "progress.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("iteration,real_steps,return_pre,return_post")
    # Resume with a larger budget: one more iteration on top of the stored data and checkpoint.
    assert main(["train", "--resume", str(run), "--steps", "300", "--no-progress"]) == 0
    assert len((run / "progress.csv").read_text().splitlines()) == 4
    out = tmp_path / "exported.onnx"
    assert main(["export", str(run), "-o", str(out)]) == 0
    meta = validate_policy_file(out, expected_task="InvertedPendulum-v5")
    assert meta["learner_iteration"] == 3 and meta["horizon"] == 20
    assert np.isclose(float(meta["inner_lr"]), 1e-3)
    # Evaluate it on perturbed physics with two inner steps, then reject bad input with exit code 2.
    capsys.readouterr()
    assert main(["eval", str(out), "--task", "InvertedPendulum-v5", "--perturb", "mass_scale=1.5",
                 "--adapt-steps", "2", "--episodes", "2", "--adapt-episodes", "2"]) == 0
    printed = capsys.readouterr().out
    assert "theta" in printed and "after 2 inner step(s)" in printed
    assert main(["eval", str(out), "--task", "InvertedPendulum-v5", "--perturb", "mass=2"]) == 2
    assert "unknown perturbation key" in error_line(capsys)
    assert main(["eval", str(out), "--task", "Hopper-v5"]) == 2
    assert "expected 'Hopper-v5'" in error_line(capsys)


def test_evaluate_with_adaptation_moves_the_parameters(tmp_path: Path) -> None:
    from mbmpo_core.export import export_policy
    from mbmpo_core.onnx_runtime import OnnxPolicy
    from mbmpo_core.policy import GaussianMLPPolicy
    from mbmpo_ros.evaluate import evaluate_with_adaptation
    from sim import make_task

    task = make_task("InvertedPendulum-v5", horizon=30)
    path = tmp_path / "p.onnx"
    export_policy(GaussianMLPPolicy(task.obs_dim, task.act_dim, (8,)), path, task_name=task.name,
                  obs_names=task.obs_names, act_names=task.act_names, joint_names=task.joint_names,
                  action_low=task.action_low, action_high=task.action_high, control_rate_hz=1 / task.dt, horizon=30,
                  inner_lr=0.5, gamma=0.99, gae_lambda=1.0, iteration=0)
    policy = OnnxPolicy(path)
    env = task.make_env(seed=0)
    report = evaluate_with_adaptation(policy, env, task.action_low, task.action_high, episodes=2, adapt_steps=2,
                                      adapt_episodes=3)
    assert len(report.returns) == 3 and all(np.isfinite(report.returns))
    assert report.params is not None
    moved = sum(float(np.abs(report.params[k] - policy.params[k]).sum()) for k in policy.param_names)
    assert moved > 1e-3


class _StubLoop:
    """Stands for SimTrainingLoop: records what train built it with, trains nothing."""

    built: ClassVar[list[object]] = []

    def __init__(self, config: object, task: object, run_dir: Path, log: object = None, progress: object = None):
        self.real_steps = 0
        self.progress_fn = progress
        _StubLoop.built.append(config)

    def train(self, total_steps: int, on_iteration: object = None) -> None:
        pass

    def close(self) -> None:
        pass


def test_train_sets_threads_and_chooses_the_config_by_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from mbmpo_core import runtime, sim_loop
    from mbmpo_core.config import load_config

    monkeypatch.setattr(sim_loop, "SimTrainingLoop", _StubLoop)
    monkeypatch.setattr(runtime, "cuda_available", lambda: False)
    monkeypatch.setattr(runtime, "cpu_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    _StubLoop.built.clear()
    try:
        assert main(["train", "--run-dir", str(tmp_path / "a"), "--no-progress"]) == 0
        out = capsys.readouterr().out
        assert "config/cpu.yaml (the CPU profile: no CUDA device" in out
        assert "torch threads: 1 (2 CPU cores: one thread" in out and torch.get_num_threads() == 1
        cpu = load_config(Path(__file__).resolve().parents[2] / "config" / "cpu.yaml")
        assert _StubLoop.built == [cpu]
        assert main(["train", "--run-dir", str(tmp_path / "b"), "--threads", "2", "--no-progress"]) == 0
        assert "torch threads: 2 (asked for)" in capsys.readouterr().out and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    with pytest.raises(SystemExit, match="2"):
        main(["train", "--threads", "0", "--no-progress"])
    assert "argument --threads: must be a whole number >= 1, got '0'" in capsys.readouterr().err


def test_progress_lines_without_a_bar_are_rate_limited(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from mbmpo_core.meta_learner import ImproveProgress
    from mbmpo_ros import cli

    clock = [100.0]
    monkeypatch.setattr(cli.time, "monotonic", lambda: clock[0])
    show = cli._progress_display(bar=None, with_bar=False)

    def event(phase: str, epoch: int, step: int) -> ImproveProgress:
        return ImproveProgress(iteration=2, phase=phase, epoch=epoch, max_epochs=30, meta_step=step, meta_steps=20,
                               elapsed_s=clock[0] - 100.0, eta_s=95.0)

    show(event("fit", 0, 0))  # a phase's start is always shown
    clock[0] += 5.0
    show(event("fit", 1, 0))  # 5 s later: not yet
    show(event("meta", 9, 0))
    clock[0] += cli.PROGRESS_LINE_EVERY_S
    show(event("meta", 9, 3))
    assert capsys.readouterr().out.splitlines() == [
        "iteration 2: model fit, epoch 0/30, 0 s, ETA 1 min 35 s",
        "iteration 2: meta-step 0/20, 5 s, ETA 1 min 35 s",
        "iteration 2: meta-step 3/20, 35 s, ETA 1 min 35 s",
    ]
