"""Where a run executes: the thread count chosen for the machine, and the default config chosen by device."""

from pathlib import Path

import pytest

from mbmpo_core import runtime
from mbmpo_core.config import load_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 1), (4, 1), (6, 3), (16, 8), (64, 8)])
def test_threads_follow_the_cores(cores: int, threads: int) -> None:
    choice = runtime.choose_threads(0, cores=cores, environ={})
    assert choice.threads == threads and f"{cores} CPU cores" in choice.reason


def test_an_explicit_request_then_omp_num_threads_win() -> None:
    assert runtime.choose_threads(3, cores=2, environ={"OMP_NUM_THREADS": "1"}) == runtime.ThreadChoice(3, "asked for")
    assert runtime.choose_threads(0, cores=2, environ={"OMP_NUM_THREADS": "2"}).threads == 2
    assert runtime.choose_threads(0, cores=2, environ={"OMP_NUM_THREADS": "lots"}).threads == 1  # not a count
    assert runtime.choose_threads(0, cores=2, environ={}).describe().startswith("torch threads: 1 (2 CPU cores")
    with pytest.raises(ValueError, match="threads must be >= 0"):
        runtime.choose_threads(-1)


def test_apply_threads_sets_torch() -> None:
    import torch

    before = torch.get_num_threads()
    try:
        runtime.apply_threads(runtime.ThreadChoice(1, "test"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_default_config_is_chosen_by_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert runtime.default_config(CONFIG_DIR, "cuda:1") == runtime.DefaultConfig(
        CONFIG_DIR / "default.yaml", "cuda:1", "the paper's config on cuda:1")
    cpu = runtime.default_config(CONFIG_DIR, "cpu")
    assert cpu.path == CONFIG_DIR / "cpu.yaml" and cpu.device == "cpu" and "CPU profile" in cpu.describe()
    monkeypatch.setattr(runtime, "cuda_available", lambda: True)
    assert runtime.default_config(CONFIG_DIR).path.name == "default.yaml"
    monkeypatch.setattr(runtime, "cuda_available", lambda: False)
    assert runtime.default_config(CONFIG_DIR) == cpu


def test_the_cpu_profile_trains_the_paper_task_with_less_compute() -> None:
    paper, cpu = load_config(CONFIG_DIR / "default.yaml"), load_config(CONFIG_DIR / "cpu.yaml")
    # The launch graph reads task and horizon from default.yaml: the profile must agree on them.
    assert (cpu.task, cpu.loop.horizon, cpu.loop.total_steps) == (paper.task, paper.loop.horizon, 100_000)
    assert cpu.policy == paper.policy and cpu.meta.inner_lr == paper.meta.inner_lr
    imagined = [c.meta.meta_batch_size * c.meta.rollouts_per_task * c.meta.meta_steps for c in (cpu, paper)]
    assert imagined[0] * 7 < imagined[1] and cpu.ensemble.hidden_sizes < paper.ensemble.hidden_sizes
    # One episode per task and iteration, as in the paper's config.
    assert cpu.loop.steps_per_iter == cpu.meta.meta_batch_size * cpu.loop.horizon
    assert load_config(CONFIG_DIR.parent / "benchmarks" / "cpu_small.yaml", task=cpu.task) == cpu
