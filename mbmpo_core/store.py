"""Crash-safe, append-only on-disk store of transitions.

Layout of ``root_dir``::

    store.json                 {"format", "version", "obs_dim", "act_dim"}
    chunk-000000000.mbt        one file per append(), in order
    chunk-000000001.mbt
    .tmp-...                   in-flight writes; ignored (left over after a crash)

Chunk file format (all integers little-endian)::

    bytes [0, 8)        magic b"MBMPOTS\\x01"
    bytes [8, 16)       header length H (uint64)
    bytes [16, 16+H)    header, UTF-8 JSON: n, obs_dim, act_dim, per-field
                        {name, dtype, shape, offset, nbytes}, per-batch strings
    bytes [16+H, -32)   payload: the arrays' raw C-order bytes at their offsets
    last 32 bytes       SHA-256 of everything before it

Each chunk is written to a temp name, flushed, fsync'd, atomically renamed to
its final name, and the directory is fsync'd; a crash therefore loses at most
the batch being written. On reading, a chunk whose length, magic, checksum or
header does not check out is skipped with a ``RuntimeWarning`` (never an
exception). One writer per directory at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_MAGIC = b"MBMPOTS\x01"
_DIGEST_LEN = 32
_PREFIX_LEN = len(_MAGIC) + 8
_META_NAME = "store.json"
_META_FORMAT = "mbmpo-transition-store"
_VERSION = 1
_CHUNK_RE = re.compile(r"^chunk-(\d{9})\.mbt$")


@dataclass(frozen=True)
class BatchKey:
    """The name of a batch a robot sent: its robot id, the controller session and the batch number in it."""

    robot: str
    session: str
    seq: int


@dataclass(frozen=True)
class FieldSpec:
    """One column of the schema.

    ``kind``: ``float`` (stored float64, must be finite), ``int`` (int64),
    ``bool``, or ``str`` (one string per batch, not per transition).
    ``width``: ``"obs"``/``"act"`` for ``[N, obs_dim]``/``[N, act_dim]`` arrays,
    ``None`` for ``[N]`` arrays (or a per-batch string).
    """

    name: str
    kind: str
    width: str | None
    required: bool
    default: Any = None


# The schema, in one place. Optional fields missing from a batch are filled
# with ``default`` by load_all so that every batch concatenates cleanly.
SCHEMA: tuple[FieldSpec, ...] = (
    FieldSpec("obs", "float", "obs", True),
    FieldSpec("act", "float", "act", True),
    FieldSpec("next_obs", "float", "obs", True),
    FieldSpec("reward", "float", None, True),
    FieldSpec("done", "bool", None, True),
    FieldSpec("episode", "int", None, False, -1),
    FieldSpec("step", "int", None, False, -1),
    FieldSpec("adapted", "bool", None, False, False),
    FieldSpec("robot", "str", None, False, ""),
    FieldSpec("policy_id", "str", None, False, ""),
    # Where a batch came from, for exactly-once storage: a controller numbers its batches 0, 1, ... per session
    # (one run of the node); (robot, session, seq) names a batch across restarts of either side.
    FieldSpec("session", "str", None, False, ""),
    FieldSpec("seq", "int", None, False, -1),
    # Which physics draw of a domain-randomised simulated run a row came from (-1: none, nominal or a robot).
    FieldSpec("physics", "int", None, False, -1),
)
_SPECS = {spec.name: spec for spec in SCHEMA}
_STORED_DTYPE = {"float": np.dtype("<f8"), "int": np.dtype("<i8"), "bool": np.dtype("|b1")}


class TransitionStore:
    """Append-only transition log under ``root_dir`` (see module doc for the format).

    Args:
        root_dir: directory; created (with its metadata) if it does not exist.
        obs_dim, act_dim: required for a new store; for an existing one they are
            read from ``store.json`` and, if given, must match (else ``ValueError``).
    """

    def __init__(self, root_dir: str | Path, obs_dim: int | None = None, act_dim: int | None = None) -> None:
        self.root = Path(root_dir)
        self.obs_dim, self.act_dim = self._open_meta(obs_dim, act_dim)
        # Valid chunks in append order, decoded once: the trainer reads everything every iteration.
        self._chunks: list[tuple[int, dict[str, np.ndarray]]] = []
        self.corrupt: list[Path] = []  # chunks skipped by the last refresh()
        self._next_index = 0
        self.refresh()

    # ------------------------------------------------------------- metadata
    def _open_meta(self, obs_dim: int | None, act_dim: int | None) -> tuple[int, int]:
        meta_path = self.root / _META_NAME
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"{self.root} is not a directory")
        if not meta_path.exists():
            if obs_dim is None or act_dim is None:
                raise ValueError(f"{self.root} is not a transition store; pass obs_dim and act_dim to create one")
            if obs_dim <= 0 or act_dim <= 0:
                raise ValueError(f"obs_dim and act_dim must be positive, got {obs_dim}, {act_dim}")
            self.root.mkdir(parents=True, exist_ok=True)
            fresh = {"format": _META_FORMAT, "version": _VERSION, "obs_dim": int(obs_dim), "act_dim": int(act_dim)}
            _atomic_write(meta_path, json.dumps(fresh).encode())
            return int(obs_dim), int(act_dim)
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict):
                raise TypeError(f"a JSON {type(meta).__name__}, not an object")
            stored = int(meta["obs_dim"]), int(meta["act_dim"])
        except (ValueError, KeyError, TypeError, OSError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"{meta_path}: unreadable store metadata ({reason}); restore it or move the "
                             "directory away") from None
        if meta.get("format", _META_FORMAT) != _META_FORMAT or min(stored) <= 0:
            raise ValueError(f"{meta_path}: not the metadata of a transition store")
        for name, given, have in (("obs_dim", obs_dim, stored[0]), ("act_dim", act_dim, stored[1])):
            if given is not None and int(given) != have:
                raise ValueError(f"{name} mismatch: store at {self.root} has {name}={have}, got {given}")
        return stored

    def refresh(self) -> None:
        """Rescan the directory: index every valid chunk, warn about corrupt ones."""
        found = sorted(
            (int(m.group(1)), p) for p in self.root.iterdir() if (m := _CHUNK_RE.match(p.name)) is not None
        )
        self._chunks, self.corrupt = [], []
        for index, path in found:
            batch = self._read_chunk(path)
            if batch is None:
                self.corrupt.append(path)
            else:
                self._chunks.append((index, batch))
        # Never reuse an index, not even a corrupt chunk's: it stays inspectable.
        self._next_index = found[-1][0] + 1 if found else 0

    # ---------------------------------------------------------------- write
    def append(self, batch: Mapping[str, Any]) -> Path:
        """Validate ``batch`` and write it as one new chunk; returns the chunk path.

        ``batch``: ``obs, next_obs: [N, obs_dim]``, ``act: [N, act_dim]``,
        ``reward: [N]``, ``done: [N] bool``; optional ``episode, step: [N] int``,
        ``adapted: [N] bool``, ``robot, policy_id, session: str``, ``seq: [N] int`` (one value: the batch's
        number in its session, see :class:`BatchKey`), ``physics: [N] int``. Raises ``ValueError``
        naming the offending field (and writes nothing) on unknown/missing
        fields, wrong shapes or N, non-numeric dtypes, NaN/inf.
        """
        arrays, strings = _validate(batch, self.obs_dim, self.act_dim)
        data = _encode_chunk(arrays, strings, self.obs_dim, self.act_dim)
        path = self.root / f"chunk-{self._next_index:09d}.mbt"
        _atomic_write(path, data)
        self._chunks.append((self._next_index, _decode_chunk(data, self.obs_dim, self.act_dim)))
        self._next_index += 1
        return path

    # ----------------------------------------------------------------- read
    def __len__(self) -> int:
        """Number of transitions in the valid chunks."""
        return sum(len(batch["obs"]) for _, batch in self._chunks)

    @property
    def num_batches(self) -> int:
        return len(self._chunks)

    @property
    def last_chunk(self) -> int:
        """Index of the newest chunk file, valid or corrupt (-1 if none): what a checkpoint records it covers."""
        return self._next_index - 1

    def transitions_through(self, chunk: int) -> int:
        """Transitions in the valid chunks with index <= ``chunk``."""
        return sum(len(batch["obs"]) for index, batch in self._chunks if index <= chunk)

    def batch_keys(self) -> Iterator[BatchKey]:
        """The :class:`BatchKey` of every valid chunk that has one (``seq`` >= 0), in append order."""
        for _, batch in self._chunks:
            seq = int(batch["seq"][0])
            if seq >= 0:
                yield BatchKey(str(batch["robot"][0]), str(batch["session"][0]), seq)

    def iter_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """Yield each valid chunk in append order, every schema field filled (see :meth:`load_all`); read-only."""
        for _, batch in self._chunks:
            yield batch

    def load_all(self) -> dict[str, np.ndarray]:
        """All transitions concatenated in append order.

        Returns every schema field: ``obs, next_obs: [N, obs_dim] float64``,
        ``act: [N, act_dim] float64``, ``reward: [N] float64``, ``done, adapted:
        [N] bool``, ``episode, step, seq, physics: [N] int64``, ``robot, policy_id: [N] str``
        (defaults where a batch did not provide them).
        """
        batches = list(self.iter_batches())
        if not batches:
            return {spec.name: _empty_column(spec, self.obs_dim, self.act_dim) for spec in SCHEMA}
        return {spec.name: np.concatenate([b[spec.name] for b in batches]) for spec in SCHEMA}

    def _read_chunk(self, path: Path) -> dict[str, np.ndarray] | None:
        try:
            return _decode_chunk(path.read_bytes(), self.obs_dim, self.act_dim)
        except (ValueError, KeyError, TypeError, IndexError, OSError) as exc:
            warnings.warn(f"skipping corrupt chunk {path}: {exc}", RuntimeWarning, stacklevel=3)
            return None


# --------------------------------------------------------------- validation
def _validate(
    batch: Mapping[str, Any], obs_dim: int, act_dim: int
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Check ``batch`` against :data:`SCHEMA`; return canonical arrays and per-batch strings."""
    unknown = sorted(set(batch) - set(_SPECS))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; schema fields are {list(_SPECS)}")
    for spec in SCHEMA:
        if spec.required and spec.name not in batch:
            raise ValueError(f"missing required field '{spec.name}'")
    try:
        obs_shape = np.shape(batch["obs"])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"field 'obs' is not an array: {exc}") from exc
    if not obs_shape or obs_shape[0] == 0:
        raise ValueError(f"field 'obs' must be a non-empty [N, {obs_dim}] array, got shape {obs_shape}")
    n = int(obs_shape[0])
    widths = {"obs": obs_dim, "act": act_dim, None: None}
    arrays: dict[str, np.ndarray] = {}
    strings: dict[str, str] = {}
    for spec in SCHEMA:
        if spec.name not in batch:
            continue
        value = batch[spec.name]
        if spec.kind == "str":
            if not isinstance(value, str):
                raise ValueError(f"field '{spec.name}' must be a str, got {type(value).__name__}")
            strings[spec.name] = value
            continue
        shape = (n,) if spec.width is None else (n, widths[spec.width])
        arrays[spec.name] = _check_array(spec, value, shape)
    return arrays, strings


def _check_array(spec: FieldSpec, value: Any, shape: tuple[int | None, ...]) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nested lists and the like
        raise ValueError(f"field '{spec.name}' is not an array: {exc}") from exc
    if arr.shape != shape:
        raise ValueError(f"field '{spec.name}' has shape {arr.shape}, expected {shape}")
    kind = arr.dtype.kind
    if spec.kind == "float":
        if kind not in "fiu":
            raise ValueError(f"field '{spec.name}' must be real numeric, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"field '{spec.name}' contains NaN or inf")
    elif spec.kind == "int":
        if kind not in "iu" or (kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max):
            raise ValueError(f"field '{spec.name}' must be int64-compatible, got dtype {arr.dtype}")
    elif spec.kind == "bool":
        if not (kind == "b" or (kind in "iu" and np.isin(arr, (0, 1)).all())):
            raise ValueError(f"field '{spec.name}' must be bool (or 0/1 integers), got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=_STORED_DTYPE[spec.kind])


def _empty_column(spec: FieldSpec, obs_dim: int, act_dim: int) -> np.ndarray:
    if spec.kind == "str":
        return np.zeros(0, dtype=np.str_)
    width = {"obs": (obs_dim,), "act": (act_dim,), None: ()}[spec.width]
    return np.zeros((0, *width), dtype=_STORED_DTYPE[spec.kind])


# ------------------------------------------------------------- chunk codec
def _encode_chunk(arrays: dict[str, np.ndarray], strings: dict[str, str], obs_dim: int, act_dim: int) -> bytes:
    fields = []
    offset = 0
    for name, arr in arrays.items():
        fields.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset,
                       "nbytes": arr.nbytes})
        offset += arr.nbytes
    header = {"version": _VERSION, "n": len(arrays["obs"]), "obs_dim": obs_dim, "act_dim": act_dim,
              "fields": fields, "strings": strings, "payload_nbytes": offset}
    header_bytes = json.dumps(header).encode()
    parts = [_MAGIC, struct.pack("<Q", len(header_bytes)), header_bytes, *(a.tobytes() for a in arrays.values())]
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


def _decode_chunk(data: bytes, obs_dim: int, act_dim: int) -> dict[str, np.ndarray]:
    """Parse and verify one chunk; raises ``ValueError`` (or KeyError/TypeError) if anything is off."""
    if len(data) < _PREFIX_LEN + _DIGEST_LEN or data[: len(_MAGIC)] != _MAGIC:
        raise ValueError(f"truncated or not a chunk ({len(data)} bytes)")
    body, digest = data[:-_DIGEST_LEN], data[-_DIGEST_LEN:]
    if hashlib.sha256(body).digest() != digest:
        raise ValueError("checksum mismatch (truncated or corrupted)")
    (header_len,) = struct.unpack("<Q", body[len(_MAGIC) : _PREFIX_LEN])
    header = json.loads(body[_PREFIX_LEN : _PREFIX_LEN + header_len].decode())
    payload = body[_PREFIX_LEN + header_len :]
    n = int(header["n"])
    if len(payload) != header["payload_nbytes"] or (header["obs_dim"], header["act_dim"]) != (obs_dim, act_dim):
        raise ValueError("header does not match payload length or store dims")
    batch: dict[str, np.ndarray] = {}
    for f in header["fields"]:
        raw = payload[f["offset"] : f["offset"] + f["nbytes"]]
        batch[f["name"]] = np.frombuffer(raw, dtype=np.dtype(f["dtype"])).reshape(f["shape"]).copy()
    for spec in SCHEMA:
        if spec.kind == "str":
            batch[spec.name] = np.full(n, str(header["strings"].get(spec.name, spec.default)))
        elif spec.name not in batch:
            if spec.required:
                raise ValueError(f"chunk lacks required field '{spec.name}'")
            batch[spec.name] = np.full(n, spec.default, dtype=_STORED_DTYPE[spec.kind])
    return batch


# ------------------------------------------------------------- durability
def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either nothing or all of it."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}-{uuid.uuid4().hex}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; without it a power cut can forget the new name.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------- checkpoints
def store_coverage(store: TransitionStore) -> dict[str, int]:
    """What a checkpoint written now covers of ``store``: ``{"transitions": valid transitions, "chunk": newest
    chunk index}`` (a section of the checkpoint)."""
    return {"transitions": len(store), "chunk": store.last_chunk}


@dataclass(frozen=True)
class StoreAccount:
    """The store against a checkpoint's coverage: ``held`` valid transitions now, ``lost`` of those the checkpoint
    covered and the store no longer holds valid (corruption since), ``newer`` stored after the checkpoint."""

    held: int
    lost: int
    newer: int

    def describe(self) -> str:
        """One line for the resume log ('' when the store is exactly what the checkpoint covered)."""
        parts = []
        if self.lost:
            parts.append(f"{self.lost} transitions the checkpoint covered are lost to corruption")
        if self.newer:
            parts.append(f"{self.newer} transitions stored after the checkpoint are kept")
        return "; ".join(parts)


def reconcile(coverage: Mapping[str, Any], store: TransitionStore) -> StoreAccount:
    """Compare a checkpoint's :func:`store_coverage` with ``store`` now. A coverage without ``chunk`` (older
    checkpoints) counts every stored transition as covered."""
    covered = int(coverage.get("transitions", len(store)))
    chunk = int(coverage.get("chunk", store.last_chunk))
    still_there = store.transitions_through(chunk)
    return StoreAccount(held=len(store), lost=max(0, covered - still_there), newer=len(store) - still_there)


def robot_groups(data: Mapping[str, np.ndarray]) -> np.ndarray:
    """Physics groups ``[N]`` int64 for :meth:`DynamicsEnsemble.fit`: the stored ``physics`` column where a row has
    a draw, else the index of the row's ``robot`` in order of first appearance (many robots feeding one learner are
    many physics); -1 for rows of no robot (``""``)."""
    physics = np.asarray(data["physics"], dtype=np.int64)
    robots = np.asarray(data["robot"])
    if np.any(physics >= 0):
        return physics
    named = robots != ""
    names, first, inverse = np.unique(robots[named], return_index=True, return_inverse=True)
    rank = np.empty(len(names), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(names))  # robots numbered by their first row
    groups = np.full(len(robots), -1, dtype=np.int64)
    groups[named] = rank[inverse.reshape(-1)]
    return groups


def fifo_tail(arrays: Mapping[str, np.ndarray], capacity: int) -> dict[str, np.ndarray]:
    """Keep the newest ``capacity`` rows of every ``[N, ...]`` array (the paper's 1e5-transition FIFO).

    Works on anything sliceable along dim 0 (numpy, torch); all arrays must share N.
    """
    if capacity <= 0:
        raise ValueError(f"capacity must be positive, got {capacity}")
    lengths = {len(v) for v in arrays.values()}
    if len(lengths) > 1:
        raise ValueError(f"arrays have different lengths {sorted(lengths)}")
    return {k: v[-capacity:] for k, v in arrays.items()}
