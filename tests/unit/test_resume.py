"""Resumable from any moment: the warm-up is stored as it is collected, a run resumes from its first stored batch,
the checkpoint records what stored data it covers, a truncated latest checkpoint falls back to the previous one,
and a resume reconciles the step count with the store (saying how much corruption cost)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mbmpo_core.checkpoint import (
    check_fresh_or_resume,
    checkpoint_path,
    existing_run,
    previous_checkpoint_path,
    read_checkpoint,
    write_checkpoint,
)
from mbmpo_core.config import Config, EnsembleConfig, LoopConfig, MetaConfig, PolicyConfig
from mbmpo_core.sim_loop import SimTrainingLoop
from mbmpo_core.store import TransitionStore, reconcile, store_coverage
from sim import make_task

TINY = Config(
    task="InvertedPendulum-v5",
    ensemble=EnsembleConfig(num_models=2, hidden_sizes=(16, 16), batch_size=64, max_epochs=2),
    policy=PolicyConfig(hidden_sizes=(8, 8)),
    meta=MetaConfig(meta_batch_size=2, rollouts_per_task=2, meta_steps=1),
    loop=LoopConfig(random_steps=200, steps_per_iter=100, total_steps=400, eval_episodes=1, horizon=20),
)
PER_BATCH = 2 * 20  # warm-up batch: one episode (horizon) per env, one env per model


class Killed(Exception):
    """Stands for kill -9 at a chosen moment (nothing after it runs)."""


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def make_loop(run_dir: Path, log: list[str] | None = None) -> SimTrainingLoop:
    sink = log if log is not None else []
    return SimTrainingLoop(TINY, make_task(TINY.task, horizon=20), run_dir, log=sink.append)


def kill_on_call(monkeypatch: pytest.MonkeyPatch, obj: Any, name: str, call: int) -> None:
    """Make the ``call``-th call of ``obj.name`` (1-based) raise Killed instead of running."""
    original, calls = getattr(obj, name), [0]

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == call:
            raise Killed
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapped)


def chunk_payloads(run_dir: Path) -> list[bytes]:
    return [np.ascontiguousarray(b["obs"]).tobytes() for b in TransitionStore(run_dir / "transitions").iter_batches()]


def test_warm_up_is_stored_batch_by_batch_and_a_kill_in_it_resumes_without_duplicates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loop = make_loop(tmp_path)
    kill_on_call(monkeypatch, loop.store, "append", call=4)  # killed while storing the 4th warm-up batch
    with pytest.raises(Killed):
        loop.train(200)
    assert len(TransitionStore(tmp_path / "transitions")) == 3 * PER_BATCH and not checkpoint_path(tmp_path).exists()
    log: list[str] = []
    resumed = make_loop(tmp_path, log)
    resumed.resume()
    assert resumed.real_steps == 120 and "warm-up continues from the 120 stored transitions" in log[-1]
    resumed.train(200)
    payloads = chunk_payloads(tmp_path)
    assert len(payloads) == 5 and len(set(payloads)) == 5  # the rest of the warm-up, no replayed episodes
    assert len(resumed.store) == 200 and resumed.real_steps == 200 and resumed.learner.iteration == 1


def test_a_kill_in_the_first_fit_keeps_the_warm_up_usable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loop = make_loop(tmp_path)
    kill_on_call(monkeypatch, loop.learner, "improve", call=1)
    with pytest.raises(Killed):
        loop.train(200)
    resumed = make_loop(tmp_path)
    resumed.resume()
    assert resumed.real_steps == 200
    resumed.train(200)  # no more random steps: iteration 0 trains on the stored warm-up
    assert len(resumed.store) == 200 and resumed.learner.iteration == 1
    assert [r["real_steps"] for r in resumed.progress.rows()] == [200.0]


def test_data_stored_after_the_checkpoint_is_used_and_never_collected_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loop = make_loop(tmp_path)
    kill_on_call(monkeypatch, loop.learner, "improve", call=2)  # iteration 1's data is stored, its fit killed
    with pytest.raises(Killed):
        loop.train(400)
    log: list[str] = []
    resumed = make_loop(tmp_path, log)
    resumed.resume()
    assert resumed.real_steps == 300 and "100 transitions stored after the checkpoint are kept" in log[-1]
    assert resumed.collection_stored  # iteration 1 trains on what the killed run collected for it
    resumed.train(400)
    payloads = chunk_payloads(tmp_path)
    assert len(resumed.store) == 400 and len(set(payloads)) == len(payloads)  # the checkpoint's streams not replayed
    assert [(r["iteration"], r["real_steps"]) for r in resumed.progress.rows()] == [(0, 200), (1, 300), (2, 400)]


def test_truncated_latest_checkpoint_falls_back_to_the_previous_with_a_warning(tmp_path: Path) -> None:
    loop = make_loop(tmp_path)
    loop.train(300)  # iterations 0 and 1: two checkpoints
    loop.close()
    assert torch.load(previous_checkpoint_path(tmp_path), weights_only=True)["iteration"] == 1
    latest = checkpoint_path(tmp_path)
    latest.write_bytes(latest.read_bytes()[:1000])
    log: list[str] = []
    resumed = make_loop(tmp_path, log)
    resumed.resume()
    assert any(line.startswith("warning:") and "unreadable checkpoint" in line and "previous checkpoint" in line
               for line in log), log
    # Iteration 1 resumes from the previous checkpoint; iteration 1's data (stored after it) is kept and used.
    assert resumed.learner.iteration == 1 and resumed.real_steps == 300
    assert "100 transitions stored after the checkpoint are kept" in log[-1]
    assert [r["iteration"] for r in resumed.progress.rows()] == [0.0]


def test_resume_reconciles_the_step_count_with_what_the_store_holds(tmp_path: Path) -> None:
    loop = make_loop(tmp_path)
    loop.train(300)
    loop.close()
    second_chunk = sorted((tmp_path / "transitions").glob("chunk-*.mbt"))[1]
    second_chunk.write_bytes(second_chunk.read_bytes()[:-5])
    log: list[str] = []
    with pytest.warns(RuntimeWarning, match="corrupt chunk"):
        resumed = make_loop(tmp_path, log)
    resumed.resume()
    assert resumed.real_steps == 300 - PER_BATCH
    assert log[-1] == (f"resume: {PER_BATCH} transitions the checkpoint covered are lost to corruption; real steps "
                       f"300 -> {300 - PER_BATCH} (what the store holds)")
    resumed.train(400)  # the lost steps are collected again
    assert resumed.real_steps == len(resumed.store) == 400 + 60


def test_checkpoint_keeps_the_previous_one_and_records_its_coverage(tmp_path: Path) -> None:
    store = TransitionStore(tmp_path / "transitions", 2, 1)
    batch = {"obs": np.zeros((3, 2)), "act": np.zeros((3, 1)), "next_obs": np.zeros((3, 2)), "reward": np.zeros(3),
             "done": np.zeros(3, bool)}
    store.append(batch)
    write_checkpoint(tmp_path, {"iteration": 1, "own": store_coverage(store)})
    store.append(batch)
    write_checkpoint(tmp_path, {"iteration": 2, "own": store_coverage(store)})
    assert read_checkpoint(previous_checkpoint_path(tmp_path))["iteration"] == 1
    state = read_checkpoint(tmp_path)
    assert state["iteration"] == 2 and state["own"] == {"transitions": 6, "chunk": 1}
    store.append(batch)
    account = reconcile(state["own"], store)
    assert (account.held, account.lost, account.newer) == (9, 0, 3)
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no temp files left
    checkpoint_path(tmp_path).unlink()  # killed between the two renames of a later write
    with pytest.warns(RuntimeWarning, match="previous checkpoint"):
        assert read_checkpoint(tmp_path)["iteration"] == 1


def test_a_directory_that_holds_a_run_needs_resume(tmp_path: Path) -> None:
    assert existing_run(tmp_path / "new") == "" and existing_run(tmp_path) == ""
    check_fresh_or_resume(tmp_path / "new", resume=False, how_to_resume="--resume X")
    TransitionStore(tmp_path / "transitions", 2, 1).append(
        {"obs": np.zeros((1, 2)), "act": np.zeros((1, 1)), "next_obs": np.zeros((1, 2)), "reward": np.zeros(1),
         "done": np.zeros(1, bool)})
    assert existing_run(tmp_path) == "1 stored transition batch"
    with pytest.raises(ValueError, match=r"already holds a run \(1 stored transition batch\); continue it with "
                                         r"--resume X or choose another run directory"):
        check_fresh_or_resume(tmp_path, resume=False, how_to_resume="--resume X")
    with pytest.raises(ValueError, match="nothing to resume"):
        check_fresh_or_resume(tmp_path / "new", resume=True, how_to_resume="--resume X")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a run directory"):
        existing_run(tmp_path / "file")
