"""Learner ingest logic without DDS: episode returns across batches, and returns per policy."""

from pathlib import Path

import numpy as np

from mbmpo_core.store import TransitionStore
from mbmpo_ros.ingest import EpisodeReturns, Ingest


def test_episode_returns_span_batches_and_time_limits() -> None:
    episodes = EpisodeReturns()
    # Episode 0 spans two batches and ends with done; episode 1 ends by a time limit (episode 2 starts).
    assert episodes.feed("r", np.array([0, 0]), np.array([1.0, 2.0]), np.array([False, False])) == []
    assert episodes.feed("r", np.array([0, 1, 1]), np.array([3.0, 4.0, 5.0]), np.array([True, False, False])) == [6.0]
    assert episodes.feed("r", np.array([2]), np.array([7.0]), np.array([True])) == [9.0, 7.0]
    assert episodes.feed("other", np.array([0]), np.array([1.0]), np.array([True])) == [1.0]


def test_take_returns_prefers_the_newest_policy(tmp_path: Path) -> None:
    ingest = Ingest(TransitionStore(tmp_path, 2, 1), obs_dim=2, act_dim=1)
    ingest._returns = [("warmup-random", 5.0), ("p1", 90.0), ("warmup-random", 7.0), ("p1", 100.0)]
    assert ingest.take_returns("p1") == [90.0, 100.0]
    assert ingest.take_returns("p1") == []  # taken
    ingest._returns = [("warmup-random", 5.0), ("warmup-random", 7.0)]
    assert ingest.take_returns("p2") == [5.0, 7.0]  # no episode of p2 finished yet: report what there is
