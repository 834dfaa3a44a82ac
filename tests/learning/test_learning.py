"""Learning regression: MB-MPO must pass a return threshold within a fixed real-step budget.

InvertedPendulum-v5, horizon 100 (return = steps balanced, at most 100), 2000 real steps (1000 random +
one iteration of 1000). A random policy balances ~8 steps; the threshold is 90.

The CPU profile (config/cpu.yaml, what ``mbmpo train`` runs without a config on a machine without CUDA) on
InvertedPendulum-v5 at its horizon 200: return >= 150 within 4000 real steps (2000 random + one iteration).
Returns are the loop's ``return_pre`` / ``return_post``: stochastic returns of theta and of its adapted policies.
"""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mbmpo_core.config import load_config
from mbmpo_core.runtime import apply_threads, choose_threads
from mbmpo_core.sampler import RealSampler, uniform_random_actions
from mbmpo_core.sim_loop import SimTrainingLoop
from sim import make_task

CONFIG = Path(__file__).with_name("inverted_pendulum.yaml")
CPU_PROFILE = Path(__file__).resolve().parents[2] / "config" / "cpu.yaml"
THRESHOLD = 90.0
CPU_PROFILE_THRESHOLD = 150.0

pytestmark = pytest.mark.learning


def test_random_policy_is_below_threshold() -> None:
    task = make_task("InvertedPendulum-v5", horizon=100)
    sampler = RealSampler([task.make_env(seed=0)], 100, task.action_low, task.action_high)
    batch = sampler.sample(uniform_random_actions(task.action_low, task.action_high, np.random.default_rng(0)),
                           1000, whole_episodes=True)
    assert np.mean(batch.episode_returns) < 30.0


@pytest.fixture(autouse=True)
def threads_for_the_machine() -> None:
    apply_threads(choose_threads())  # one thread on a 2-core machine: more threads oversubscribe it


def test_mbmpo_learns_inverted_pendulum_within_2000_steps(tmp_path: Path) -> None:
    config = load_config(CONFIG)
    loop = SimTrainingLoop(config, make_task(config.task, horizon=config.loop.horizon), tmp_path, log=lambda _: None)
    loop.train(config.loop.total_steps)
    rows = loop.progress.rows()
    assert rows[-1]["real_steps"] <= 2000
    assert rows[-1]["return_pre"] >= THRESHOLD, rows
    assert rows[-1]["return_post"] >= THRESHOLD, rows


def test_the_cpu_profile_learns_inverted_pendulum_within_4000_steps(tmp_path: Path) -> None:
    config = load_config(CPU_PROFILE, task="InvertedPendulum-v5")
    config = replace(config, loop=replace(config.loop, total_steps=4000))
    loop = SimTrainingLoop(config, make_task(config.task, horizon=config.loop.horizon), tmp_path, log=lambda _: None)
    loop.train(config.loop.total_steps)
    rows = loop.progress.rows()
    assert [r["real_steps"] for r in rows] == [2000.0, 4000.0]
    assert rows[-1]["return_pre"] >= CPU_PROFILE_THRESHOLD, rows
    assert rows[-1]["return_post"] >= CPU_PROFILE_THRESHOLD, rows
