"""The mbmpo wire contract: every message the nodes exchange is encoded and decoded here.

Custom ``.msg`` packages cannot be built from the ROS 2 wheels on PyPI, so only standard interfaces are
used, wrapped in versioned layouts. The core of the module packs numpy arrays into ``array.array`` buffers
and back (no per-element Python loops); message classes are imported lazily inside the ``encode_*`` /
``arrays_to_*`` functions, so decoding logic can be unit-tested with any object that has the same fields.

Transition batches (``<ns>/mbmpo/transitions``, ``std_msgs/Float64MultiArray``), codec version 2::

    layout.dim[0]  label "codec=2"              size 0  stride 0   (always first, in every version)
    layout.dim[1]  label "robot=<id>"           size 0  stride 0
    layout.dim[2]  label "session=<id>"         size 0  stride 0   (one run of the controller; version 2)
    layout.dim[3]  label "policy_id=<id>"       size 0  stride 0
    layout.dim[4:] label <column>               size N  stride <row width>
                   columns in this order: obs (obs_dim), act (act_dim), next_obs (obs_dim), reward (1),
                   done (1), step (1), episode (1), adapted (1)
    layout.data_offset = 4
    data[0:4]      seq, first episode, first step, flags (bit 0: any row adapted; other bits reserved = 0)
    data[4:]       the columns, row-major, concatenated in dim order

``seq`` counts a controller's batches from 0 in each session, so (robot, session, seq) names a batch for good:
the learner stores each once, whatever is sent again.

Acknowledgements (``<ns>/mbmpo/transitions_ack``, ``std_msgs/Int64MultiArray``, latched), codec version 1: what
the learner has persisted of one robot's session::

    layout.dim[0]  label "codec=1"
    layout.dim[1]  label "robot=<id>"
    layout.dim[2]  label "session=<id>"
    layout.dim[3]  label "learner=<id>"         (one run of the learner: a new id means "send again what I lack")
    data[0]        the highest stored seq of the session
    data[1:]       the seqs below it not stored, ascending (ACK_MAX_MISSING at most: with more, the learner
                   acknowledges less, up to the first seq it cannot list)

Why ``Float64MultiArray`` and not a byte array: CDR serializes float64 sequences with their byte order
stated on the wire, so heterogeneous hosts need no endianness convention of ours; observations and actions
are float64 already, so the body is one ``concatenate`` + one buffer copy each way; integers (seq, step,
episode) are exact up to 2**53 (checked on decode); ``ros2 topic echo`` shows readable numbers. A byte
payload would save ~4 % (bools as one byte) but add a private binary format to keep in sync.

Policies (``/mbmpo/policy``, ``std_msgs/UInt8MultiArray``), codec version 1 (a
:class:`~mbmpo_core.bundle.PolicyBundle` in, the same bundle out)::

    layout.dim[0]  label "codec=1"            size 0       stride 0
    layout.dim[1]  label "policy_id=<id>"     size 0       stride 0
    layout.dim[2]  label "sha256=<64 hex>"    size 0       stride 0    (of all of data)
    layout.dim[3:] label "file=<name>.onnx"   size nbytes  stride nbytes   one per file, policy graph first
    data           the files' bytes, concatenated in dim order: policy.onnx (its metadata_props hold the
                   policy's own contract) and the inner-step graph it names (policy.adapt.onnx)

Commands (``<ns>/command``, ``std_msgs/Float64MultiArray``): ``data`` = the action, one dim labelled
``"action"``; receivers check only the length, like a ros2_control forward command controller.
"""

from __future__ import annotations

import array
import hashlib
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from mbmpo_core.bundle import PolicyBundle, PolicyValidationError, is_plain_file_name

TRANSITIONS_CODEC_VERSION = 2  # 2: the session label
POLICY_CODEC_VERSION = 1
ACK_CODEC_VERSION = 1
ACK_MAX_MISSING = 256  # missing seqs an ack lists at most (the newest): one ack stays a few kB

# Order of the per-row columns on the wire; widths are resolved by _column_widths().
TRANSITION_COLUMNS: tuple[str, ...] = ("obs", "act", "next_obs", "reward", "done", "step", "episode", "adapted")
_HEADER_LABELS = ("codec", "robot", "session", "policy_id")
_ACK_LABELS = ("codec", "robot", "session", "learner")
_DATA_HEADER_LEN = 4  # seq, first episode, first step, flags
_FLAG_ADAPTED = 1
_MAX_EXACT_INT = 2**53  # float64 holds every integer up to this exactly
_MAX_ID_LEN = 256
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class CodecError(ValueError):
    """A message does not follow the wire contract; the text is a one-line reason."""


# ------------------------------------------------------------------------------------------ transitions
@dataclass
class TransitionBatch:
    """A batch of transitions of one robot, as numpy arrays, plus the metadata the wire carries.

    Shapes: ``obs, next_obs: [N, obs_dim]``, ``act: [N, act_dim]`` (float64), ``reward: [N]`` float64,
    ``done, adapted: [N]`` bool, ``step, episode: [N]`` int64. ``seq`` is the batch's number in the
    controller's ``session`` (0, 1, ... per session, one per published batch).
    """

    obs: np.ndarray
    act: np.ndarray
    next_obs: np.ndarray
    reward: np.ndarray
    done: np.ndarray
    step: np.ndarray
    episode: np.ndarray
    adapted: np.ndarray
    robot: str = ""
    policy_id: str = ""
    seq: int = 0
    session: str = ""
    codec_version: int = field(default=TRANSITIONS_CODEC_VERSION)

    @property
    def n(self) -> int:
        """Number of transitions."""
        return int(self.obs.shape[0])

    @property
    def obs_dim(self) -> int:
        """Observation width."""
        return int(self.obs.shape[1])

    @property
    def act_dim(self) -> int:
        """Action width."""
        return int(self.act.shape[1])

    def to_store_dict(self) -> dict[str, Any]:
        """The batch as ``mbmpo_core.store.TransitionStore.append`` expects it."""
        cols = {name: getattr(self, name) for name in TRANSITION_COLUMNS}
        return {**cols, "robot": self.robot, "policy_id": self.policy_id, "session": self.session,
                "seq": np.full(self.n, self.seq, dtype=np.int64)}


def _check_id(kind: str, value: str) -> None:
    """Ids travel in labels: keep them short, single-line text."""
    if not isinstance(value, str):
        raise CodecError(f"{kind} must be a str, got {type(value).__name__}")
    if len(value) > _MAX_ID_LEN or not value.isprintable():
        raise CodecError(f"{kind} must be printable and at most {_MAX_ID_LEN} characters")


def _column_widths(obs_dim: int, act_dim: int) -> dict[str, int]:
    widths = dict.fromkeys(TRANSITION_COLUMNS, 1)
    widths.update(obs=obs_dim, next_obs=obs_dim, act=act_dim)
    return widths


def _as_column(batch: TransitionBatch, name: str, n: int, width: int) -> np.ndarray:
    """One column as float64 [n, width] (or [n]); raises CodecError naming the column."""
    values = np.asarray(getattr(batch, name))
    expected = (n, width) if name in ("obs", "act", "next_obs") else (n,)
    if values.shape != expected:
        raise CodecError(f"column {name} has shape {values.shape}, expected {expected}")
    out = values.astype(np.float64, copy=False)
    if not np.isfinite(out).all():
        raise CodecError(f"column {name} has NaN or Inf")
    return out


def encode_transitions(batch: TransitionBatch) -> Any:
    """Encode ``batch`` as a ``std_msgs/Float64MultiArray`` (layout in the module docstring).

    Raises CodecError for an empty batch, inconsistent shapes, NaN/Inf, or ids that cannot travel.
    """
    from std_msgs.msg import Float64MultiArray, MultiArrayDimension

    obs = np.asarray(batch.obs)
    act = np.asarray(batch.act)
    if obs.ndim != 2 or act.ndim != 2 or obs.shape[0] == 0:
        raise CodecError(f"obs and act must be non-empty [N, dim] arrays, got {obs.shape} and {act.shape}")
    n, widths = obs.shape[0], _column_widths(obs.shape[1], act.shape[1])
    _check_id("robot", batch.robot)
    _check_id("session", batch.session)
    _check_id("policy_id", batch.policy_id)
    if not 0 <= batch.seq < _MAX_EXACT_INT:
        raise CodecError(f"seq {batch.seq} out of range [0, 2**53)")
    columns = [_as_column(batch, name, n, widths[name]) for name in TRANSITION_COLUMNS]
    # Integers and bools must survive the float64 trip exactly; decode would reject them otherwise.
    for i in (5, 6):
        _exact_ints(columns[i], TRANSITION_COLUMNS[i])
    for i in (4, 7):
        _exact_bools(columns[i], TRANSITION_COLUMNS[i])
    adapted = bool(np.any(columns[-1]))
    header = np.array([batch.seq, columns[6][0], columns[5][0], _FLAG_ADAPTED if adapted else 0], np.float64)
    msg = Float64MultiArray()
    dims = [MultiArrayDimension(label=f"codec={TRANSITIONS_CODEC_VERSION}")]
    dims.append(MultiArrayDimension(label=f"robot={batch.robot}"))
    dims.append(MultiArrayDimension(label=f"session={batch.session}"))
    dims.append(MultiArrayDimension(label=f"policy_id={batch.policy_id}"))
    dims += [MultiArrayDimension(label=name, size=n, stride=widths[name]) for name in TRANSITION_COLUMNS]
    msg.layout.dim = dims
    msg.layout.data_offset = _DATA_HEADER_LEN
    msg.data = _concat_float64([header, *(c.reshape(-1) for c in columns)])
    return msg


def _concat_float64(parts: list[np.ndarray]) -> array.array:
    """Concatenate straight into the ``array.array('d')`` the message keeps (one write, no temporaries)."""
    out = array.array("d", bytes(8 * sum(p.size for p in parts)))
    np.concatenate(parts, out=np.frombuffer(out, dtype=np.float64))
    return out


def _float64_buffer(values: np.ndarray) -> array.array:
    """numpy -> ``array.array('d')`` with one memcpy: the message setter keeps it without a per-item check."""
    out = array.array("d")
    out.frombytes(np.ascontiguousarray(values, dtype=np.float64).tobytes())
    return out


def _float_view(values: Any, what: str) -> np.ndarray:
    """A 1-D float64 view of a message's float64 sequence: zero-copy for ``array('d')``, the type rclpy gives."""
    if isinstance(values, array.array) and values.typecode == "d":
        return np.frombuffer(values, dtype=np.float64) if len(values) else np.zeros(0)
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CodecError(f"{what} is not a float64 sequence") from exc
    if arr.ndim != 1:
        raise CodecError(f"{what} is not a flat sequence")
    return arr


def _parse_labels(dims: Sequence[Any], keys: Sequence[str]) -> dict[str, str]:
    """Read ``key=value`` labels of the first ``len(keys)`` dims, in order."""
    if len(dims) < len(keys):
        raise CodecError(f"layout has {len(dims)} dims, expected at least {len(keys)} header labels")
    out: dict[str, str] = {}
    for dim, key in zip(dims, keys, strict=False):
        label = str(dim.label)
        name, sep, value = label.partition("=")
        if not sep or name != key:
            raise CodecError(f"missing header label {key}=..., got {label[:40]!r}")
        out[key] = value
    return out


def _check_version(labels: dict[str, str], supported: int) -> int:
    if labels["codec"] != str(supported):
        raise CodecError(f"unknown codec version {labels['codec'][:20]!r} (this build reads {supported})")
    return supported


def _exact_ints(values: np.ndarray, what: str) -> np.ndarray:
    """float64 -> int64, refusing fractions and values float64 cannot hold exactly."""
    if not (np.all(np.abs(values) < _MAX_EXACT_INT) and np.all(values == np.floor(values))):
        raise CodecError(f"{what} must hold integers below 2**53")
    return values.astype(np.int64)


def _exact_bools(values: np.ndarray, what: str) -> np.ndarray:
    if not np.all((values == 0.0) | (values == 1.0)):
        raise CodecError(f"{what} must be 0 or 1")
    return values != 0.0


def _column_dims(dims: Sequence[Any]) -> tuple[int, dict[str, int]]:
    """Validate the column dims; returns N and the width of each column."""
    names = tuple(str(d.label) for d in dims)
    if names != TRANSITION_COLUMNS:
        raise CodecError(f"column labels {list(names)[:10]} differ from {list(TRANSITION_COLUMNS)}")
    n = int(dims[0].size)
    if n <= 0 or any(int(d.size) != n for d in dims):
        raise CodecError(f"inconsistent or zero row counts {[int(d.size) for d in dims]}")
    widths = {name: int(d.stride) for name, d in zip(names, dims, strict=True)}
    expected = _column_widths(widths["obs"], widths["act"])
    if widths != expected or widths["obs"] <= 0 or widths["act"] <= 0:
        raise CodecError(f"inconsistent column widths {widths}")
    return n, widths


def decode_transitions(
    msg: Any, expected_obs_dim: int | None = None, expected_act_dim: int | None = None
) -> TransitionBatch:
    """Decode a transitions message; raises CodecError (one-line reason) unless it is fully valid.

    Checks: codec version, header labels, column labels/rows/widths, total length, expected dims,
    finite floats, integral seq/step/episode, 0/1 done/adapted, header consistent with the columns.
    """
    dims = list(msg.layout.dim)
    labels = _parse_labels(dims, _HEADER_LABELS)
    version = _check_version(labels, TRANSITIONS_CODEC_VERSION)
    n, widths = _column_dims(dims[len(_HEADER_LABELS) :])
    for name, expected in (("obs_dim", expected_obs_dim), ("act_dim", expected_act_dim)):
        got = widths[name[:3]]
        if expected is not None and got != expected:
            raise CodecError(f"{name} is {got}, expected {expected}")
    if int(msg.layout.data_offset) != _DATA_HEADER_LEN:
        raise CodecError(f"data_offset is {msg.layout.data_offset}, expected {_DATA_HEADER_LEN}")
    data = _float_view(msg.data, "data")
    body_len = n * sum(widths.values())
    if data.shape[0] != _DATA_HEADER_LEN + body_len:
        raise CodecError(f"data has {data.shape[0]} values, layout says {_DATA_HEADER_LEN + body_len}")
    if not np.isfinite(data).all():
        raise CodecError("data has NaN or Inf")
    cols = _split_columns(data[_DATA_HEADER_LEN:], n, widths)
    seq, episode0, step0, flags = (int(v) for v in _exact_ints(data[:_DATA_HEADER_LEN], "header"))
    batch = TransitionBatch(**cols, robot=labels["robot"], policy_id=labels["policy_id"], seq=seq,
                            session=labels["session"], codec_version=version)
    _check_header(batch, seq, episode0, step0, flags)
    return batch


def _split_columns(body: np.ndarray, n: int, widths: dict[str, int]) -> dict[str, np.ndarray]:
    """Cut the body into typed, owned column arrays (copies: the message buffer may be reused)."""
    cols: dict[str, np.ndarray] = {}
    start = 0
    for name in TRANSITION_COLUMNS:
        stop = start + n * widths[name]
        chunk = body[start:stop]
        start = stop
        if name in ("obs", "act", "next_obs"):
            cols[name] = chunk.reshape(n, widths[name]).copy()
        elif name in ("step", "episode"):
            cols[name] = _exact_ints(chunk, name)
        elif name in ("done", "adapted"):
            cols[name] = _exact_bools(chunk, name)
        else:
            cols[name] = chunk.copy()
    return cols


def _check_header(batch: TransitionBatch, seq: int, episode0: int, step0: int, flags: int) -> None:
    if seq < 0:
        raise CodecError(f"negative seq {seq}")
    if flags & ~_FLAG_ADAPTED:
        raise CodecError(f"reserved flag bits set: {flags:#x}")
    if (episode0, step0) != (int(batch.episode[0]), int(batch.step[0])):
        raise CodecError("header episode/step disagree with the first row")
    if bool(flags & _FLAG_ADAPTED) != bool(batch.adapted.any()):
        raise CodecError("header adapted flag disagrees with the adapted column")
    _check_id("robot", batch.robot)
    _check_id("session", batch.session)
    _check_id("policy_id", batch.policy_id)


def new_session_id() -> str:
    """A fresh session (or learner run) id: the start time, readable, and 24 random bits against collisions."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


# ------------------------------------------------------------------------------------------ acknowledgements
@dataclass(frozen=True)
class Ack:
    """What a learner has persisted of one robot's session: every seq <= ``highest`` except ``missing``
    (ascending). ``learner`` names the learner's run: a new one has lost what was in flight to the last."""

    robot: str
    session: str
    learner: str
    highest: int
    missing: tuple[int, ...] = ()

    def stored(self, seq: int) -> bool:
        """True if the learner has persisted batch ``seq``."""
        return seq <= self.highest and seq not in self.missing


def encode_ack(ack: Ack) -> Any:
    """An :class:`Ack` as a ``std_msgs/Int64MultiArray`` (layout in the module docstring). CodecError for more
    than ACK_MAX_MISSING missing seqs: the sender states less instead (a lower ``highest``), never something false."""
    from std_msgs.msg import Int64MultiArray, MultiArrayDimension

    for kind, value in (("robot", ack.robot), ("session", ack.session), ("learner", ack.learner)):
        _check_id(kind, value)
    if not 0 <= ack.highest < _MAX_EXACT_INT:
        raise CodecError(f"ack seq {ack.highest} out of range [0, 2**53)")
    if len(ack.missing) > ACK_MAX_MISSING:
        raise CodecError(f"ack lists {len(ack.missing)} missing seqs, at most {ACK_MAX_MISSING} travel")
    msg = Int64MultiArray()
    msg.layout.dim = [MultiArrayDimension(label=f"codec={ACK_CODEC_VERSION}"),
                      MultiArrayDimension(label=f"robot={ack.robot}"),
                      MultiArrayDimension(label=f"session={ack.session}"),
                      MultiArrayDimension(label=f"learner={ack.learner}")]
    msg.data = array.array("q", [ack.highest, *sorted(ack.missing)])
    return msg


def decode_ack(msg: Any) -> Ack:
    """An ack message back as an :class:`Ack`; CodecError (one line) unless the labels, the version and the seqs
    (``0 <= missing < highest``, ascending, at most ACK_MAX_MISSING) check out."""
    labels = _parse_labels(list(msg.layout.dim), _ACK_LABELS)
    _check_version(labels, ACK_CODEC_VERSION)
    for kind in ("robot", "session", "learner"):
        _check_id(kind, labels[kind])
    try:
        data = np.asarray(msg.data, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError("ack data is not an int64 sequence") from exc
    if data.ndim != 1 or not 1 <= data.shape[0] <= 1 + ACK_MAX_MISSING:
        raise CodecError(f"ack has {data.size} values, expected 1 to {1 + ACK_MAX_MISSING}")
    highest, missing = int(data[0]), data[1:]
    if not 0 <= highest < _MAX_EXACT_INT:
        raise CodecError(f"ack seq {highest} out of range [0, 2**53)")
    if missing.size and (missing[0] < 0 or missing[-1] >= highest or np.any(np.diff(missing) <= 0)):
        raise CodecError("ack missing seqs must ascend, each in [0, highest)")
    return Ack(labels["robot"], labels["session"], labels["learner"], highest, tuple(int(m) for m in missing))


# ------------------------------------------------------------------------------------------ sequence
class SeqKind(str, Enum):
    """How a batch's sequence number relates to what was seen before from the same robot."""

    OK = "ok"  # the next expected one (or the first seen)
    DUPLICATE = "duplicate"  # seen before: drop it
    GAP = "gap"  # jumped ahead: ``missing`` batches in between were not (yet) seen
    REORDERED = "reordered"  # an earlier missing one arrived late: keep it
    RESTART = "restart"  # seq 0 after higher ones, never missing: the publisher restarted


@dataclass(frozen=True)
class SeqStatus:
    """Classification of one sequence number; ``missing`` > 0 only for GAP."""

    kind: SeqKind
    missing: int = 0


class SequenceTracker:
    """Per-robot classification of batch sequence numbers (gaps, duplicates, late arrivals, restarts).

    Remembers at most ``max_pending`` missing numbers per robot (the newest), so a huge jump cannot
    exhaust memory; older missing numbers that arrive later then count as duplicates.
    """

    def __init__(self, max_pending: int = 10_000) -> None:
        self.max_pending = max_pending
        self._last: dict[str, int] = {}
        self._pending: dict[str, set[int]] = {}

    def observe(self, robot: str, seq: int) -> SeqStatus:
        """Classify ``seq`` from ``robot`` and update the state."""
        last = self._last.get(robot)
        if last is None:
            self._reset(robot, seq)
            return SeqStatus(SeqKind.OK)
        pending = self._pending[robot]
        if seq == last + 1:
            self._last[robot] = seq
            return SeqStatus(SeqKind.OK)
        if seq > last + 1:
            missing = seq - last - 1
            pending.update(range(max(last + 1, seq - self.max_pending), seq))
            self._trim(pending)
            self._last[robot] = seq
            return SeqStatus(SeqKind.GAP, missing)
        if seq in pending:
            pending.discard(seq)
            return SeqStatus(SeqKind.REORDERED)
        if seq == 0 and last > 0:
            # A restarted publisher counts from 0 again; without this, all its data would be "duplicate".
            self._reset(robot, seq)
            return SeqStatus(SeqKind.RESTART)
        return SeqStatus(SeqKind.DUPLICATE)

    def missing(self, robot: str) -> list[int]:
        """Sequence numbers of ``robot`` skipped so far and not yet arrived, ascending."""
        return sorted(self._pending.get(robot, ()))

    def _reset(self, robot: str, seq: int) -> None:
        self._last[robot] = seq
        self._pending[robot] = set()

    def _trim(self, pending: set[int]) -> None:
        if len(pending) > self.max_pending:
            for old in sorted(pending)[: len(pending) - self.max_pending]:
                pending.discard(old)


# ------------------------------------------------------------------------------------------ policy
def encode_policy(bundle: PolicyBundle) -> Any:
    """Encode a :class:`~mbmpo_core.bundle.PolicyBundle` (its files, the policy graph first, e.g. ``policy.onnx``
    and ``policy.adapt.onnx``, and its id) as a ``std_msgs/UInt8MultiArray`` with a checked header (module
    docstring). Raises CodecError if the files or the id cannot travel."""
    from std_msgs.msg import MultiArrayDimension, UInt8MultiArray

    payloads = {name: bytes(data) for name, data in bundle.files.items()}
    if not payloads or not all(payloads.values()) or not bundle.policy_id:
        raise CodecError("policy files, their bytes and policy_id must be non-empty")
    _check_id("policy_id", bundle.policy_id)
    for name in payloads:
        if not is_plain_file_name(name):
            raise CodecError(f"policy file name {name[:80]!r} is not a plain '<name>.onnx'")
    body = b"".join(payloads.values())
    if len(body) >= 2**32:
        raise CodecError("policy larger than 4 GiB")
    msg = UInt8MultiArray()
    msg.layout.dim = [
        MultiArrayDimension(label=f"codec={POLICY_CODEC_VERSION}"),
        MultiArrayDimension(label=f"policy_id={bundle.policy_id}"),
        MultiArrayDimension(label=f"sha256={hashlib.sha256(body).hexdigest()}"),
        *(MultiArrayDimension(label=f"file={name}", size=len(data), stride=len(data))
          for name, data in payloads.items()),
    ]
    # array('B', bytes) is a memcpy; the message setter stores an array('B') as is.
    msg.data = array.array("B", body)
    return msg


def decode_policy(msg: Any) -> PolicyBundle:
    """The :class:`~mbmpo_core.bundle.PolicyBundle` a policy message carries, the policy graph first; CodecError
    if the header, a file name, the lengths or the sha256 do not match, if the policy graph is no ONNX model, or
    if its metadata states another policy id than the header. Says nothing of whether it may run: see
    :func:`mbmpo_core.onnx_runtime.validate_bundle`."""
    dims = list(msg.layout.dim)
    labels = _parse_labels(dims, ("codec", "policy_id", "sha256"))
    _check_version(labels, POLICY_CODEC_VERSION)
    if not _SHA256_RE.match(labels["sha256"]):
        raise CodecError("sha256 label is not 64 lowercase hex digits")
    if not labels["policy_id"]:
        raise CodecError("empty policy_id")
    sizes = _policy_file_dims(dims[3:])
    payload = bytes(msg.data)
    if len(payload) != sum(sizes.values()):
        raise CodecError(f"policy has {len(payload)} bytes, header says {sum(sizes.values())} (truncated?)")
    if hashlib.sha256(payload).hexdigest() != labels["sha256"]:
        raise CodecError("policy sha256 mismatch (corrupted payload)")
    files, offset = {}, 0
    for name, size in sizes.items():
        files[name] = payload[offset : offset + size]
        offset += size
    try:
        bundle = PolicyBundle.from_files(files)
    except PolicyValidationError as exc:
        raise CodecError(str(exc)) from None
    if bundle.policy_id != labels["policy_id"]:
        raise CodecError(f"header policy_id {labels['policy_id'][:16]!r} differs from the policy's "
                         f"{bundle.policy_id[:16]!r}")
    return bundle


def _policy_file_dims(dims: Sequence[Any]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for dim in dims:
        label = str(dim.label)
        name = label[len("file=") :]
        if not label.startswith("file=") or not is_plain_file_name(name) or name in sizes:
            raise CodecError(f"policy layout dim {label[:80]!r} is not a 'file=<name>.onnx' of a new file")
        if int(dim.size) <= 0:
            raise CodecError(f"policy file {name} has size {int(dim.size)}")
        sizes[name] = int(dim.size)
    if not sizes:
        raise CodecError("policy message names no file")
    return sizes


# ------------------------------------------------------------------------------------------ joint states
def _joint_field(values: Any, n_names: int, what: str) -> np.ndarray | None:
    arr = _float_view(values, f"joint_states {what}")
    if arr.shape[0] == 0:
        return None  # JointState allows empty velocity/effort
    if arr.shape[0] != n_names:
        raise CodecError(f"joint_states {what} has {arr.shape[0]} values for {n_names} names")
    return arr


def joint_state_to_arrays(
    msg: Any, joint_names: Sequence[str], require: Sequence[str] = ("position", "velocity")
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sensor_msgs/JointState`` -> ``(pos, vel, eff)`` in the order of ``joint_names``.

    Fields named in ``require`` must be present and finite for the selected joints; an empty optional
    field comes back as NaN so that any use of it is caught by downstream finiteness checks.
    Raises CodecError for a missing or duplicated joint name or mismatched array lengths.
    """
    names = list(msg.name)
    index = {name: i for i, name in enumerate(names)}
    if len(index) != len(names):
        raise CodecError("joint_states has duplicated joint names")
    missing = [name for name in joint_names if name not in index]
    if missing:
        raise CodecError(f"joint_states lacks joints {missing[:5]}")
    idx = np.fromiter((index[name] for name in joint_names), dtype=np.intp, count=len(joint_names))
    out = []
    for what in ("position", "velocity", "effort"):
        arr = _joint_field(getattr(msg, what), len(names), what)
        if arr is None:
            if what in require:
                raise CodecError(f"joint_states has no {what}")
            out.append(np.full(len(joint_names), np.nan))
            continue
        picked = arr[idx].copy()
        if what in require and not np.isfinite(picked).all():
            raise CodecError(f"joint_states {what} has NaN or Inf")
        out.append(picked)
    return out[0], out[1], out[2]


def arrays_to_joint_state(
    names: Sequence[str], pos: np.ndarray, vel: np.ndarray | None, eff: np.ndarray | None, stamp: Any = None
) -> Any:
    """Build a ``sensor_msgs/JointState``; ``vel``/``eff`` may be None (sent empty).

    ``stamp``: a ``builtin_interfaces/Time``, an ``rclpy.time.Time`` (converted), or None (zero).
    """
    from sensor_msgs.msg import JointState

    msg = JointState()
    msg.name = [str(n) for n in names]
    for what, values in (("position", pos), ("velocity", vel), ("effort", eff)):
        if values is None:
            continue
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        if arr.shape[0] != len(msg.name):
            raise CodecError(f"{what} has {arr.shape[0]} values for {len(msg.name)} names")
        setattr(msg, what, _float64_buffer(arr))
    if stamp is not None:
        msg.header.stamp = stamp.to_msg() if hasattr(stamp, "to_msg") else stamp
    return msg


# ------------------------------------------------------------------------------------------ commands
def encode_command(action: np.ndarray) -> Any:
    """Action vector -> ``std_msgs/Float64MultiArray`` (one dim labelled ``action``); refuses NaN/Inf."""
    from std_msgs.msg import Float64MultiArray, MultiArrayDimension

    arr = np.asarray(action, dtype=np.float64).reshape(-1)
    if not np.isfinite(arr).all():
        raise CodecError("command has NaN or Inf")
    msg = Float64MultiArray()
    msg.layout.dim = [MultiArrayDimension(label="action", size=arr.shape[0], stride=arr.shape[0])]
    msg.data = _float64_buffer(arr)
    return msg


def decode_command(msg: Any, act_dim: int) -> np.ndarray:
    """``std_msgs/Float64MultiArray`` -> float64 ``[act_dim]``; CodecError on wrong length or NaN/Inf.

    The layout is ignored, as ros2_control command controllers do, so any publisher of a plain array works.
    """
    arr = _float_view(msg.data, "command")
    if arr.shape != (act_dim,):
        raise CodecError(f"command has {arr.shape[0] if arr.ndim else 0} values, expected {act_dim}")
    if not np.isfinite(arr).all():
        raise CodecError("command has NaN or Inf")
    return arr.copy()
