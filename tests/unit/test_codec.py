"""Wire contract without DDS: round trips, validation, fuzzing, sequence tracking.

Messages are built directly (message classes need only the ROS wheels' Python types, no middleware);
the tests skip when the wheels are missing.
"""

from __future__ import annotations

import array
import copy
import hashlib

import numpy as np
import onnx
import pytest

pytest.importorskip("std_msgs.msg", reason="ROS 2 message wheels (std_msgs) not installed")

from mbmpo_core.bundle import PolicyBundle
from mbmpo_ros.codec import (
    ACK_MAX_MISSING,
    TRANSITION_COLUMNS,
    Ack,
    CodecError,
    SeqKind,
    SequenceTracker,
    TransitionBatch,
    arrays_to_joint_state,
    decode_ack,
    decode_command,
    decode_policy,
    decode_transitions,
    encode_ack,
    encode_command,
    encode_policy,
    encode_transitions,
    joint_state_to_arrays,
)


def make_batch(n: int = 7, obs_dim: int = 5, act_dim: int = 2, seed: int = 0, seq: int = 3) -> TransitionBatch:
    rng = np.random.default_rng(seed)
    return TransitionBatch(
        obs=rng.normal(size=(n, obs_dim)),
        act=rng.normal(size=(n, act_dim)),
        next_obs=rng.normal(size=(n, obs_dim)),
        reward=rng.normal(size=n),
        done=rng.random(n) < 0.3,
        step=np.arange(10, 10 + n),
        episode=np.full(n, 4),
        adapted=rng.random(n) < 0.5,
        robot="arm_1",
        policy_id=hashlib.sha256(b"p").hexdigest(),
        seq=seq,
        session="20250101-120000-a1b2c3",
    )


def assert_same(a: TransitionBatch, b: TransitionBatch) -> None:
    for name in TRANSITION_COLUMNS:
        x, y = getattr(a, name), np.asarray(getattr(b, name))
        assert x.dtype == {"done": bool, "adapted": bool, "step": np.int64, "episode": np.int64}.get(name, np.float64)
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert (a.robot, a.policy_id, a.seq, a.session) == (b.robot, b.policy_id, b.seq, b.session)


# ------------------------------------------------------------------------------------------ transitions
def test_transitions_round_trip() -> None:
    batch = make_batch()
    out = decode_transitions(encode_transitions(batch), expected_obs_dim=5, expected_act_dim=2)
    assert_same(out, batch)
    assert out.codec_version == 2 and out.n == 7 and out.obs_dim == 5 and out.act_dim == 2
    assert (out.session, out.seq) == (batch.session, batch.seq)
    stored = out.to_store_dict()
    assert set(stored) == {*TRANSITION_COLUMNS, "robot", "policy_id", "session", "seq"}
    assert stored["seq"].tolist() == [batch.seq] * 7


def test_decoded_arrays_do_not_alias_the_message() -> None:
    msg = encode_transitions(make_batch())
    out = decode_transitions(msg)
    msg.data[msg.layout.data_offset] = 123.0
    assert out.obs[0, 0] != 123.0


def test_extreme_but_exact_values_round_trip() -> None:
    batch = make_batch(n=2)
    batch.step = np.array([2**53 - 1, -(2**53) + 1])
    batch.episode = np.array([-1, -1])
    batch.obs[0, 0] = np.finfo(np.float64).max
    batch.robot, batch.policy_id = "", ""
    assert_same(decode_transitions(encode_transitions(batch)), batch)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda m: setattr(m.layout.dim[0], "label", "codec=1"), "unknown codec version"),
        (lambda m: setattr(m.layout.dim[1], "label", "robo=x"), "missing header label"),
        (lambda m: setattr(m.layout.dim[2], "label", "policy_id=x"), "missing header label"),
        (lambda m: m.layout.dim.pop(), "column labels"),
        (lambda m: setattr(m.layout.dim[5], "size", 6), "inconsistent"),
        (lambda m: setattr(m.layout.dim[6], "stride", 4), "inconsistent column widths"),
        (lambda m: m.data.pop(), "data has"),
        (lambda m: m.data.append(0.0), "data has"),
        (lambda m: m.data.__setitem__(10, float("nan")), "NaN"),
        (lambda m: m.data.__setitem__(10, float("inf")), "NaN"),
        (lambda m: setattr(m.layout, "data_offset", 0), "data_offset"),
        (lambda m: m.data.__setitem__(0, 1.5), "integers"),
        (lambda m: m.data.__setitem__(3, 2.0), "reserved flag"),
        (lambda m: m.data.__setitem__(1, 99.0), "disagree"),
    ],
)
def test_malformed_transitions_rejected(mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    msg = encode_transitions(make_batch())
    mutate(msg)
    with pytest.raises(CodecError, match=reason):
        decode_transitions(msg)


def _column_offset(msg, name: str) -> int:  # type: ignore[no-untyped-def]
    offset = msg.layout.data_offset
    for dim in msg.layout.dim[4:]:
        if dim.label == name:
            return offset
        offset += dim.size * dim.stride
    raise KeyError(name)


@pytest.mark.parametrize(("column", "value", "reason"), [("done", 0.5, "0 or 1"), ("adapted", 2.0, "0 or 1"),
                                                         ("step", 0.25, "integers")])
def test_bad_column_values_rejected(column: str, value: float, reason: str) -> None:
    msg = encode_transitions(make_batch())
    msg.data[_column_offset(msg, column) + 1] = value
    with pytest.raises(CodecError, match=reason):
        decode_transitions(msg)


def test_expected_dims_checked() -> None:
    msg = encode_transitions(make_batch(obs_dim=5, act_dim=2))
    with pytest.raises(CodecError, match="obs_dim is 5, expected 17"):
        decode_transitions(msg, expected_obs_dim=17)
    with pytest.raises(CodecError, match="act_dim is 2, expected 6"):
        decode_transitions(msg, expected_act_dim=6)


def test_encode_refuses_bad_batches() -> None:
    bad = make_batch()
    bad.reward = bad.reward.copy()
    bad.reward[2] = np.nan
    with pytest.raises(CodecError, match="reward"):
        encode_transitions(bad)
    short = make_batch()
    short.done = short.done[:-1]
    with pytest.raises(CodecError, match="done"):
        encode_transitions(short)
    with pytest.raises(CodecError, match="non-empty"):
        encode_transitions(make_batch(n=0))
    newline = make_batch()
    newline.robot = "a\nb"
    with pytest.raises(CodecError, match="robot"):
        encode_transitions(newline)


def _corrupt(msg, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """One random corruption of a transitions message (structure, labels, numbers or length)."""
    msg = copy.deepcopy(msg)
    kind = rng.integers(7)
    dims = msg.layout.dim
    if kind == 0:
        dims[rng.integers(len(dims))].label = "".join(chr(c) for c in rng.integers(32, 0x3000, rng.integers(0, 12)))
    elif kind == 1:
        dim = dims[rng.integers(len(dims))]
        setattr(dim, "size" if rng.random() < 0.5 else "stride", int(rng.integers(0, 2**32)))
    elif kind == 2:
        msg.data = msg.data[: rng.integers(len(msg.data))]
    elif kind == 3:
        idx = rng.integers(len(msg.data), size=rng.integers(1, 5))
        for i in idx:
            msg.data[i] = float(rng.choice([np.nan, np.inf, -np.inf, 0.5, -3.0, 1e300, 2.0**60]))
    elif kind == 4:
        msg.layout.data_offset = int(rng.integers(0, 10))
    elif kind == 5:
        del dims[rng.integers(len(dims))]
    else:
        raw = np.frombuffer(msg.data, dtype=np.uint8).copy()
        raw[rng.integers(raw.size, size=4)] = rng.integers(0, 256, 4)
        msg.data = array.array("d", raw.tobytes())
    return msg


def test_fuzzed_transitions_never_raise_anything_else() -> None:
    rng = np.random.default_rng(1)
    good = encode_transitions(make_batch(n=4, obs_dim=3, act_dim=2))
    accepted = 0
    for _ in range(400):
        msg = _corrupt(good, rng)
        try:
            out = decode_transitions(msg)
        except CodecError as exc:
            assert "\n" not in str(exc)
            continue
        accepted += 1
        # Whatever passes must be a consistent batch.
        assert out.obs.shape == out.next_obs.shape and out.act.shape[0] == out.n
        assert all(np.isfinite(getattr(out, c)).all() for c in ("obs", "act", "next_obs", "reward"))
    assert accepted < 400


# ------------------------------------------------------------------------------------------ sequences
def test_sequence_tracker_cases() -> None:
    tr = SequenceTracker()
    kinds = [tr.observe("a", s).kind for s in (5, 6, 7)]
    assert kinds == [SeqKind.OK] * 3
    assert tr.observe("a", 7).kind == SeqKind.DUPLICATE
    gap = tr.observe("a", 10)
    assert gap.kind == SeqKind.GAP and gap.missing == 2 and tr.missing("a") == [8, 9]
    assert tr.observe("a", 9).kind == SeqKind.REORDERED
    assert tr.observe("a", 9).kind == SeqKind.DUPLICATE
    assert tr.missing("a") == [8]
    assert tr.observe("b", 0).kind == SeqKind.OK  # robots are independent
    assert tr.observe("a", 11).kind == SeqKind.OK
    assert tr.observe("a", 0).kind == SeqKind.RESTART
    assert tr.observe("a", 1).kind == SeqKind.OK and tr.missing("a") == []


def test_sequence_tracker_bounds_pending() -> None:
    tr = SequenceTracker(max_pending=5)
    tr.observe("a", 0)
    status = tr.observe("a", 1_000_000)
    assert status.missing == 999_999 and len(tr.missing("a")) == 5
    assert tr.observe("a", 999_999).kind == SeqKind.REORDERED
    assert tr.observe("a", 3).kind == SeqKind.DUPLICATE  # forgotten: no longer told apart


# ------------------------------------------------------------------------------------------ acknowledgements
def test_ack_round_trip_and_what_it_says_is_stored() -> None:
    ack = Ack("robot_0", "20250101-120000-a1b2c3", "learner-9f", 41, (3, 17))
    msg = encode_ack(ack)
    assert [d.label for d in msg.layout.dim] == ["codec=1", "robot=robot_0", "session=20250101-120000-a1b2c3",
                                                 "learner=learner-9f"]
    assert list(msg.data) == [41, 3, 17]
    back = decode_ack(msg)
    assert back == ack
    assert [s for s in range(45) if back.stored(s)] == [s for s in range(42) if s not in (3, 17)]


def test_ack_that_cannot_list_its_holes_is_refused_on_both_sides() -> None:
    with pytest.raises(CodecError, match="at most 256"):
        encode_ack(Ack("r", "s", "l", 10_000, tuple(range(ACK_MAX_MISSING + 1))))
    msg = encode_ack(Ack("r", "s", "l", 10_000, tuple(range(ACK_MAX_MISSING))))
    msg.data.append(9_999)
    with pytest.raises(CodecError, match="values"):
        decode_ack(msg)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda m: setattr(m.layout.dim[0], "label", "codec=7"), "unknown codec version"),
        (lambda m: setattr(m.layout.dim[3], "label", "robot=x"), "missing header label"),
        (lambda m: m.layout.dim.pop(), "dims"),
        (lambda m: setattr(m, "data", array.array("q")), "values"),
        (lambda m: setattr(m, "data", array.array("q", [-1])), "out of range"),
        (lambda m: setattr(m, "data", array.array("q", [5, 3, 2])), "ascend"),
        (lambda m: setattr(m, "data", array.array("q", [5, 5])), "ascend"),
        (lambda m: setattr(m, "data", array.array("q", [5, -1])), "ascend"),
        (lambda m: setattr(m.layout.dim[2], "label", "session=" + "x" * 300), "printable"),
    ],
)
def test_malformed_acks_rejected(mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    msg = encode_ack(Ack("r", "s", "l", 7, (2,)))
    mutate(msg)
    with pytest.raises(CodecError, match=reason):
        decode_ack(msg)


# ------------------------------------------------------------------------------------------ policy
def _onnx_file(pid: str, adapt_file: str, size: int) -> bytes:
    """A serialized ONNX model carrying only the metadata the codec reads (the codec never runs a graph)."""
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []), doc_string="x" * size)
    onnx.helper.set_model_props(model, {"policy_id": pid, "adapt_file": adapt_file})
    return model.SerializeToString()


def _policy_bundle(pid: str = "abc123", size: int = 50_000) -> PolicyBundle:
    return PolicyBundle.from_files({"policy.onnx": _onnx_file(pid, "policy.adapt.onnx", size),
                                    "policy.adapt.onnx": _onnx_file(pid, "", size + 1)})


def test_policy_round_trip_and_corruption() -> None:
    bundle = _policy_bundle()
    msg = encode_policy(bundle)
    decoded = decode_policy(msg)
    assert decoded == bundle and list(decoded.files) == ["policy.onnx", "policy.adapt.onnx"]
    assert decoded.policy_id == "abc123"
    assert decoded.metadata == {"policy_id": "abc123", "adapt_file": "policy.adapt.onnx"}
    assert [str(d.label) for d in msg.layout.dim] == [
        "codec=1", "policy_id=abc123", f"sha256={hashlib.sha256(bytes(msg.data)).hexdigest()}",
        "file=policy.onnx", "file=policy.adapt.onnx"]
    assert [int(d.size) for d in msg.layout.dim[3:]] == [len(f) for f in bundle.files.values()]
    truncated = copy.deepcopy(msg)
    truncated.data = truncated.data[:-1]
    with pytest.raises(CodecError, match="truncated"):
        decode_policy(truncated)
    flipped = copy.deepcopy(msg)
    flipped.data[100] ^= 0xFF
    with pytest.raises(CodecError, match="sha256 mismatch"):
        decode_policy(flipped)
    version = copy.deepcopy(msg)
    version.layout.dim[0].label = "codec=9"
    with pytest.raises(CodecError, match="unknown codec version"):
        decode_policy(version)
    nolabels = copy.deepcopy(msg)
    nolabels.layout.dim = []
    with pytest.raises(CodecError, match="header labels"):
        decode_policy(nolabels)
    with pytest.raises(CodecError):
        encode_policy(PolicyBundle({"policy.onnx": b"x"}, {}, ""))
    evil = copy.deepcopy(msg)
    evil.layout.dim[3].label = "file=../../x.onnx"
    with pytest.raises(CodecError, match="file="):
        decode_policy(evil)
    twice = copy.deepcopy(msg)
    twice.layout.dim[4].label = twice.layout.dim[3].label
    with pytest.raises(CodecError, match="new file"):
        decode_policy(twice)


def test_policy_payload_must_be_the_policy_the_header_names() -> None:
    relabelled = encode_policy(_policy_bundle())
    relabelled.layout.dim[1].label = "policy_id=other"  # sha256 covers only the data: the label can lie
    with pytest.raises(CodecError, match="differs from the policy's"):
        decode_policy(relabelled)
    junk = encode_policy(PolicyBundle({"policy.onnx": b"\xff" * 64}, {}, "junk"))  # no ONNX model
    with pytest.raises(CodecError, match=r"policy\.onnx: not a valid ONNX model") as info:
        decode_policy(junk)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------ joints, commands
def test_joint_state_reorders_by_name() -> None:
    msg = arrays_to_joint_state(["b", "a", "c"], np.array([2.0, 1.0, 3.0]), np.array([20.0, 10.0, 30.0]), None)
    pos, vel, eff = joint_state_to_arrays(msg, ["a", "b"])
    np.testing.assert_array_equal(pos, [1.0, 2.0])
    np.testing.assert_array_equal(vel, [10.0, 20.0])
    assert np.isnan(eff).all()
    with pytest.raises(CodecError, match="effort"):
        joint_state_to_arrays(msg, ["a"], require=("position", "effort"))
    with pytest.raises(CodecError, match="lacks joints"):
        joint_state_to_arrays(msg, ["a", "z"])
    msg.velocity = array.array("d", [1.0, 2.0])
    with pytest.raises(CodecError, match="velocity has 2 values for 3 names"):
        joint_state_to_arrays(msg, ["a"])
    with pytest.raises(CodecError):
        arrays_to_joint_state(["a"], np.zeros(2), None, None)


def test_command_round_trip_and_validation() -> None:
    action = np.array([0.5, -1.0, 0.25])
    np.testing.assert_array_equal(decode_command(encode_command(action), 3), action)
    with pytest.raises(CodecError, match="expected 4"):
        decode_command(encode_command(action), 4)
    msg = encode_command(action)
    msg.data[1] = float("nan")
    with pytest.raises(CodecError, match="NaN"):
        decode_command(msg, 3)
    with pytest.raises(CodecError, match="NaN"):
        encode_command(np.array([np.inf]))
