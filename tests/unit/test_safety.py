"""Pure controller logic: observation builder, safety chain, episode bookkeeping (no ROS, no torch; that the
controller path never loads torch is tests/unit/test_layering.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mbmpo_ros.codec import CodecError
from mbmpo_ros.safety import (
    EpisodeBook,
    HoldMode,
    HoldReason,
    SafetyChain,
    hold_reason,
    obs_from_joint_state,
    position_indices,
)


def _js(names: list[str], pos: list[float], vel: list[float] | None = None,
        effort: list[float] | None = None) -> SimpleNamespace:
    return SimpleNamespace(name=names, position=pos, velocity=vel or [], effort=effort or [])


def test_obs_by_exact_name_any_order() -> None:
    msg = _js(["b", "a", "c"], [2.0, 1.0, 3.0])
    np.testing.assert_array_equal(obs_from_joint_state(msg, ["a", "b", "c"]), [1.0, 2.0, 3.0])


def test_obs_from_real_joints_qpos_qvel() -> None:
    msg = _js(["hinge", "slider"], [0.1, 0.2], [1.0, 2.0])
    obs = obs_from_joint_state(msg, ["qpos.slider", "qpos.hinge", "qvel.slider", "qvel.hinge"])
    np.testing.assert_array_equal(obs, [0.2, 0.1, 2.0, 1.0])


def test_obs_effort_and_only_the_arrays_used_are_checked() -> None:
    msg = _js(["a", "b"], [0.1, 0.2], [], [5.0, -6.0])  # no velocities: none asked for
    np.testing.assert_array_equal(obs_from_joint_state(msg, ["effort.b", "qpos.a", "effort.a"]), [-6.0, 0.1, 5.0])
    with pytest.raises(CodecError, match="effort has 1 values for 2 names"):
        obs_from_joint_state(_js(["a", "b"], [0.1, 0.2], None, [1.0]), ["effort.a"])


def test_obs_missing_or_bad_lengths_raise() -> None:
    with pytest.raises(CodecError, match="lacks"):
        obs_from_joint_state(_js(["a"], [1.0]), ["a", "b"])
    with pytest.raises(CodecError, match="position"):
        obs_from_joint_state(_js(["a", "b"], [1.0]), ["a"])
    with pytest.raises(CodecError, match="velocity"):
        obs_from_joint_state(_js(["j"], [1.0]), ["qvel.j"])
    with pytest.raises(CodecError, match="duplicated"):
        obs_from_joint_state(_js(["a", "a"], [1.0, 2.0]), ["a"])


def test_obs_nan_passes_through_and_is_held() -> None:
    obs = obs_from_joint_state(_js(["a"], [float("nan")]), ["a"])
    assert hold_reason(False, False, obs) is HoldReason.BAD_OBS


def test_hold_reason_priority() -> None:
    ok = np.zeros(2)
    assert hold_reason(False, False, ok) is None
    assert hold_reason(True, True, None) is HoldReason.ESTOP
    assert hold_reason(False, True, ok) is HoldReason.STALE
    assert hold_reason(False, False, None) is HoldReason.BAD_OBS
    assert hold_reason(False, False, np.array([np.inf, 0.0])) is HoldReason.BAD_OBS


def test_chain_clips_and_rate_limits() -> None:
    chain = SafetyChain(np.array([-1.0, -1.0]), np.array([1.0, 1.0]), rate_limit=0.3, obs_clip=5.0)
    np.testing.assert_array_equal(chain.clip_obs(np.array([10.0, -10.0, 1.0])), [5.0, -5.0, 1.0])
    act, reason = chain.filter(np.array([5.0, -0.1]))
    assert reason is None
    np.testing.assert_allclose(act, [0.3, -0.1])
    act, _ = chain.filter(np.array([5.0, 5.0]))
    np.testing.assert_allclose(act, [0.6, 0.2])


def test_chain_nan_action_holds_and_resets_reference() -> None:
    chain = SafetyChain(np.array([-1.0]), np.array([1.0]), rate_limit=0.5)
    chain.filter(np.array([0.4]))
    act, reason = chain.filter(np.array([np.nan]))
    assert reason is HoldReason.BAD_ACTION
    np.testing.assert_array_equal(act, [0.0])
    act, _ = chain.filter(np.array([1.0]))  # rate limited from the hold, not from 0.4
    np.testing.assert_allclose(act, [0.5])


def test_hold_action_inside_bounds_excluding_zero() -> None:
    chain = SafetyChain(np.array([0.5]), np.array([1.0]))
    np.testing.assert_array_equal(chain.hold(), [0.5])


def test_position_hold_holds_the_last_measured_positions_clipped() -> None:
    obs_names = ["qpos.shoulder", "qpos.elbow", "qvel.shoulder", "qvel.elbow"]
    index = position_indices(obs_names, ["elbow", "shoulder"])
    chain = SafetyChain(np.array([-1.0, -1.0]), np.array([1.0, 1.0]), rate_limit=0.1, position_index=index)
    assert chain.mode is HoldMode.POSITION
    assert chain.hold() is None  # nothing measured yet: nothing safe to command
    chain.observe(np.array([0.3, 2.5, 9.0, 9.0]))
    chain.observe(np.array([np.nan, 0.0, 0.0, 0.0]))  # a bad measurement does not move the hold target
    np.testing.assert_array_equal(chain.hold(), [1.0, 0.3])  # elbow 2.5 clipped into its bound
    act, reason = chain.filter(np.array([0.0, 0.0]))  # rate limited from the held positions
    assert reason is None
    np.testing.assert_allclose(act, [0.9, 0.2])


def test_position_hold_needs_every_commanded_joint_position() -> None:
    np.testing.assert_array_equal(position_indices(["x", "qvel.a", "a"], ["a"]), [2])
    with pytest.raises(ValueError, match=r"missing: \['b'\]"):
        position_indices(["qpos.a", "qvel.b"], ["a", "b"])
    zero = SafetyChain(np.array([-1.0]), np.array([1.0]))
    assert zero.mode is HoldMode.ZERO and zero.hold() is not None


def _book(horizon: int = 3, batch_size: int = 2) -> EpisodeBook:
    return EpisodeBook(horizon, lambda o, a, n: n[:, 0] - o[:, 0], lambda n: n[:, 0] > 100, batch_size, robot="r")


def test_book_pairs_batches_and_ends_at_horizon() -> None:
    book = _book()
    ended = []
    for t in range(4):
        obs = np.array([float(t)])
        ended.append(book.observe(obs))
        book.act(obs, np.array([t * 0.1]), "p")
    assert ended == [False, False, False, True]
    batches = book.take_batches()
    assert [b.seq for b in batches] == [0, 1] and [b.n for b in batches] == [2, 1]
    np.testing.assert_array_equal(batches[0].step, [0, 1])
    np.testing.assert_allclose(batches[1].next_obs[:, 0], [3.0])
    np.testing.assert_allclose(batches[0].reward, [1.0, 1.0])
    book.new_episode()
    assert book.last_return == 3.0 and book.episode == 1 and book.step == 0
    assert not book.observe(np.array([0.0]))  # no open transition after a new episode


def test_book_done_policy_change_and_drop() -> None:
    book = _book(horizon=100, batch_size=10)
    book.observe(np.array([0.0]))
    book.act(np.array([0.0]), np.array([0.0]), "old")
    book.observe(np.array([1.0]))
    book.act(np.array([1.0]), np.array([0.0]), "new")
    book.observe(np.array([2.0]))  # row of "new": the "old" row goes out first, alone
    book.act(np.array([2.0]), np.array([0.0]), "new")
    book.drop_pending()
    assert not book.observe(np.array([50.0]))  # dropped: no row spanning the hold
    book.act(np.array([50.0]), np.array([0.0]), "new")
    assert book.observe(np.array([500.0]))  # done
    batches = book.take_batches()
    assert [(b.policy_id, b.n) for b in batches] == [("old", 1), ("new", 2)]
    assert batches[1].done.tolist() == [False, True]

