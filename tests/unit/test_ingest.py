"""Learner ingest logic without DDS: episode returns across batches, returns per policy, exactly-once storage."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("std_msgs.msg", reason="ROS 2 message wheels (std_msgs) not installed")

from mbmpo_core.store import TransitionStore
from mbmpo_ros.codec import Ack, SeqKind, SeqStatus
from mbmpo_ros.ingest import EpisodeReturns, Ingest, StoredSeqs


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


# ------------------------------------------------------------------ exactly-once storage
def _batch(seq: int, session: str = "s1", robot: str = "robot_0", n: int = 3) -> Any:
    from mbmpo_ros.codec import TransitionBatch

    return TransitionBatch(obs=np.full((n, 2), float(seq)), act=np.zeros((n, 1)), next_obs=np.zeros((n, 2)),
                           reward=np.ones(n), done=np.zeros(n, bool), step=np.arange(n), episode=np.full(n, seq),
                           adapted=np.zeros(n, bool), robot=robot, policy_id="p", seq=seq, session=session)


def _handle(ingest: Ingest, *seqs: int, session: str = "s1") -> list[str]:
    from mbmpo_ros.codec import encode_transitions

    return [ingest.handle(encode_transitions(_batch(s, session)), "robot_0").kind for s in seqs]


def test_stored_seqs_ranges_classify_and_holes() -> None:
    seqs = StoredSeqs()
    assert seqs.classify(2) == SeqStatus(SeqKind.GAP, 2)  # seqs count from 0
    for s in (0, 1, 2, 5, 4, 9):
        seqs.add(s)
    assert seqs.highest == 9 and list(seqs.holes()) == [3, 6, 7, 8] and seqs.missing_count() == 4
    assert [seqs.classify(s).kind for s in (4, 3, 10, 12)] == [SeqKind.DUPLICATE, SeqKind.REORDERED, SeqKind.OK,
                                                               SeqKind.GAP]
    seqs.add(3)
    assert seqs._lo == [0, 9] and seqs._hi == [5, 9]  # merged: memory grows with holes, not batches
    assert seqs.ack_range(limit=2) == (7, (6, 7)) and seqs.ack_range() == (9, (6, 7, 8))


def test_huge_gap_is_cheap_and_the_ack_states_only_what_it_can_list() -> None:
    seqs = StoredSeqs()
    seqs.add(0)
    seqs.add(10**12)
    assert seqs.missing_count() == 10**12 - 1
    highest, missing = seqs.ack_range()
    assert missing == tuple(range(1, 257)) and highest == 256


def test_duplicates_are_dropped_across_restarts_and_gaps_reported(tmp_path: Path) -> None:
    ingest = Ingest(TransitionStore(tmp_path, 2, 1), obs_dim=2, act_dim=1, learner_id="L1")
    assert _handle(ingest, 0, 1, 3, 3) == ["accepted", "accepted", "accepted", "duplicate"]
    assert ingest.ack("robot_0", "s1") == Ack("robot_0", "s1", "L1", 3, (2,))
    assert ingest.holes() == {("robot_0", "s1"): 1}
    # A new learner on the same store (after kill -9): what is stored stays a duplicate; the hole can be filled.
    again = Ingest(TransitionStore(tmp_path), obs_dim=2, act_dim=1, learner_id="L2")
    assert again.newest_ack("robot_0") == Ack("robot_0", "s1", "L2", 3, (2,))
    assert _handle(again, 1, 2, 3, 4) == ["duplicate", "accepted", "duplicate", "accepted"]
    counters = again.counters["robot_0"]
    assert (counters.accepted, counters.duplicate, counters.reordered) == (2, 2, 1)
    assert again.holes() == {} and len(again.store) == 5 * 3
    # A restarted controller is a new session: its seq 0 is new data, not a duplicate.
    assert _handle(again, 0, session="s2") == ["accepted"] and counters.restarts == 1
    assert again.newest_ack("robot_0") == Ack("robot_0", "s2", "L2", 0, ())
    stored = [(k.session, k.seq) for k in TransitionStore(tmp_path).batch_keys()]
    assert sorted(stored) == [("s1", 0), ("s1", 1), ("s1", 2), ("s1", 3), ("s1", 4), ("s2", 0)]
