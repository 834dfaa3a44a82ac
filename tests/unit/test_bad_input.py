"""Every bad file or argument of ``mbmpo train`` and ``mbmpo eval`` is one line (exit code 2), and what still works
works: a corrupt store.json or truncated checkpoint, a --run-dir that is a file or holds a run, counts in user
words, --steps below the warm-up; eval names the bad graph, runs with --adapt-steps 0 when only the adapt graph is
bad, and prints mean ± std over episodes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mbmpo_core.checkpoint import checkpoint_path
from mbmpo_core.store import TransitionStore
from mbmpo_ros.cli import main

TINY = """
task: InvertedPendulum-v5
ensemble: {num_models: 2, hidden_sizes: [16, 16], batch_size: 64, max_epochs: 2}
policy: {hidden_sizes: [8, 8]}
meta: {meta_batch_size: 2, rollouts_per_task: 2, meta_steps: 1}
loop: {random_steps: 100, steps_per_iter: 100, total_steps: 100, eval_episodes: 1, horizon: 20}
"""


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run (one iteration): checkpoint, store, policy.onnx and policy.adapt.onnx."""
    root = tmp_path_factory.mktemp("trained")
    (root / "tiny.yaml").write_text(TINY)
    assert main(["train", "--config", str(root / "tiny.yaml"), "--run-dir", str(root / "run"), "--no-progress"]) == 0
    return root / "run"


def copy_run(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_corrupt_store_json_is_one_line(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(trained, tmp_path / "run")
    (run / "transitions" / "store.json").write_text("{truncated")
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    line = error_line(capsys)
    assert line.startswith(f"mbmpo: error: {run / 'transitions' / 'store.json'}: unreadable store metadata"), line


def test_truncated_checkpoint_without_a_previous_one_is_one_line(trained: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(trained, tmp_path / "run")
    latest = checkpoint_path(run)
    latest.write_bytes(latest.read_bytes()[:500])
    assert main(["train", "--resume", str(run), "--steps", "200", "--no-progress"]) == 2
    assert re.match(rf"mbmpo: error: {re.escape(str(latest))}: unreadable checkpoint \(\w+", error_line(capsys))


@pytest.mark.parametrize("what", ["file", "run"])
def test_run_dir_that_is_a_file_or_holds_a_run_is_one_line(trained: Path, tmp_path: Path, what: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    target = trained
    if what == "file":
        target = tmp_path / "notes.txt"
        target.write_text("x")
    stored_before = len(TransitionStore(trained / "transitions"))
    assert main(["train", "--config", str(trained / "config.yaml"), "--run-dir", str(target), "--no-progress"]) == 2
    line = error_line(capsys)
    expected = ("is a file, not a run directory" if what == "file" else
                f"already holds a run (a checkpoint and 3 stored transition batches); continue it with --resume "
                f"{trained} or choose another run directory")
    assert line == f"mbmpo: error: --run-dir {target} {expected}"
    assert len(TransitionStore(trained / "transitions")) == stored_before  # nothing appended, nothing mixed


@pytest.mark.parametrize(("argv", "message"), [
    (["--steps", "abc"], "argument --steps: must be a whole number >= 1, got 'abc'"),
    (["--steps", "-5"], "argument --steps: must be a whole number >= 1, got '-5'"),
    (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
])
def test_argument_errors_speak_user_words(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.splitlines()[-1] == f"mbmpo train: error: {message}"
    assert "_positive_int" not in err


def test_steps_below_the_warm_up_warn_what_will_happen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY)
    assert main(["train", "--config", str(tmp_path / "tiny.yaml"), "--run-dir", str(tmp_path / "run"), "--steps",
                 "10", "--no-progress"]) == 0
    assert ("mbmpo: warning: 10 steps is below the warm-up (loop.random_steps = 100): the run collects 100 random "
            "steps, trains one iteration and stops") in capsys.readouterr().err
    assert len(TransitionStore(tmp_path / "run" / "transitions")) == 100


def _corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_eval_names_the_bad_graph_and_runs_without_it_when_not_adapting(trained: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(trained, tmp_path / "run")
    policy = str(run / "policy.onnx")
    _corrupt(run / "policy.adapt.onnx")
    assert main(["eval", policy, "--task", "InvertedPendulum-v5", "--episodes", "2"]) == 2
    assert error_line(capsys).startswith("mbmpo: error: policy.adapt.onnx: onnxruntime cannot load it")
    assert main(["eval", policy, "--task", "InvertedPendulum-v5", "--episodes", "3", "--adapt-steps", "0"]) == 0
    out = capsys.readouterr().out
    assert "mean ± std over 3 episodes" in out
    row = re.search(r"theta\s+return\s+(-?[\d.]+) ± ([\d.]+)", out)
    assert row is not None and float(row.group(1)) > 0 and np.isfinite(float(row.group(2))), out
    _corrupt(run / "policy.onnx")
    assert main(["eval", policy, "--task", "InvertedPendulum-v5", "--adapt-steps", "0"]) == 2
    assert error_line(capsys).startswith("mbmpo: error: policy.onnx: not a valid ONNX model")
