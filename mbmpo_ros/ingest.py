"""The learner's ingest path, free of ROS: decode -> validate -> de-duplicate -> persist -> count -> acknowledge.

A transitions message becomes durable (one store chunk) before anything else happens with it; training reads
the store in another thread, so every append and every snapshot of the chunk list takes one lock. Nothing here
blocks on training: :meth:`Ingest.handle` only decodes, appends and updates counters.

Exactly-once storage over an at-least-once link: a batch is named by (robot, session, seq) (see
:mod:`mbmpo_ros.codec`); the :class:`SeqLedger` knows which of them the store holds, rebuilt from the store when
the learner starts, so a batch sent again (the controller resends what was not acknowledged) is dropped as a
duplicate across restarts of the learner, and the holes that remain are real gaps. After each batch the node
publishes :meth:`Ingest.ack`: the highest stored seq of that session and the holes below it.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mbmpo_core.store import SCHEMA, BatchKey, TransitionStore, store_coverage
from mbmpo_ros.codec import ACK_MAX_MISSING, Ack, CodecError, SeqKind, SeqStatus, TransitionBatch, decode_transitions


@dataclass
class RobotCounters:
    """Per-robot ingest statistics (batches unless named otherwise)."""

    accepted: int = 0
    rejected: int = 0
    duplicate: int = 0
    gaps: int = 0  # gap events
    missing: int = 0  # batches skipped by those gaps (some may arrive later, reordered)
    reordered: int = 0
    restarts: int = 0  # new controller sessions after the first
    transitions: int = 0
    last_error: str = ""


@dataclass(frozen=True)
class IngestResult:
    """What happened to one message: ``kind`` is accepted, rejected or duplicate. Of an accepted or duplicate
    batch, whose :meth:`Ingest.ack` is then due: ``sender`` (the batch's robot label) and ``session``."""

    kind: str
    robot: str
    transitions: int = 0
    reason: str = ""
    sender: str = ""
    session: str | None = None


class StoredSeqs:
    """The seqs of one session that the store holds, as sorted disjoint inclusive ranges ``[lo, hi]``.

    Memory grows with the number of holes, not of batches. Seqs count from 0, so a first seq above 0 is a gap.
    """

    def __init__(self) -> None:
        self._lo: list[int] = []
        self._hi: list[int] = []

    @property
    def highest(self) -> int:
        """The highest stored seq (-1 if none)."""
        return self._hi[-1] if self._hi else -1

    def __contains__(self, seq: int) -> bool:
        i = bisect.bisect_right(self._lo, seq) - 1
        return i >= 0 and seq <= self._hi[i]

    def classify(self, seq: int) -> SeqStatus:
        """How ``seq`` relates to what is stored (DUPLICATE, OK, GAP with the count skipped, or REORDERED)."""
        if seq in self:
            return SeqStatus(SeqKind.DUPLICATE)
        if seq == self.highest + 1:
            return SeqStatus(SeqKind.OK)
        if seq > self.highest:
            return SeqStatus(SeqKind.GAP, seq - self.highest - 1)
        return SeqStatus(SeqKind.REORDERED)

    def add(self, seq: int) -> None:
        """Record ``seq`` as stored (merging it with its neighbours)."""
        if seq in self:
            return
        i = bisect.bisect_right(self._lo, seq)  # ranges [0, i) start at or below seq
        joins_left = i > 0 and self._hi[i - 1] == seq - 1
        joins_right = i < len(self._lo) and self._lo[i] == seq + 1
        if joins_left and joins_right:
            self._hi[i - 1] = self._hi[i]
            del self._lo[i], self._hi[i]
        elif joins_left:
            self._hi[i - 1] = seq
        elif joins_right:
            self._lo[i] = seq
        else:
            self._lo.insert(i, seq)
            self._hi.insert(i, seq)

    def holes(self) -> Iterator[int]:
        """The seqs below :attr:`highest` not stored, ascending (lazily: a hole may be huge)."""
        start = 0
        for lo, hi in zip(self._lo, self._hi, strict=True):
            yield from range(start, lo)
            start = hi + 1

    def missing_count(self) -> int:
        """How many seqs below :attr:`highest` are not stored."""
        return self.highest + 1 - sum(hi - lo + 1 for lo, hi in zip(self._lo, self._hi, strict=True))

    def ack_range(self, limit: int = ACK_MAX_MISSING) -> tuple[int, tuple[int, ...]]:
        """``(highest, missing)`` of an acknowledgement that lists at most ``limit`` holes: with more, the
        acknowledged range ends below the first hole it cannot list (so the ack never claims a hole stored)."""
        listed: list[int] = []
        for seq in self.holes():
            if len(listed) == limit:
                return seq - 1, tuple(listed)
            listed.append(seq)
        return self.highest, tuple(listed)


class SeqLedger:
    """:class:`StoredSeqs` per (robot, session); the newest session of each robot (the one a running controller
    most likely has) is the one acknowledged at start-up."""

    def __init__(self) -> None:
        self.sessions: dict[tuple[str, str], StoredSeqs] = {}
        self.newest: dict[str, str] = {}  # robot -> its session that stored last

    def get(self, robot: str, session: str) -> StoredSeqs:
        return self.sessions.setdefault((robot, session), StoredSeqs())

    def is_new_session(self, robot: str, session: str) -> bool:
        """True if ``robot`` stored batches before, none of them from ``session``: its controller restarted."""
        return robot in self.newest and (robot, session) not in self.sessions

    def record(self, robot: str, session: str, seq: int) -> None:
        self.get(robot, session).add(seq)
        self.newest[robot] = session

    def restore(self, keys: Iterable[BatchKey]) -> None:
        """Rebuild from the keys of the stored batches, in append order."""
        for key in keys:
            self.record(key.robot, key.session, key.seq)


@dataclass
class _OpenEpisode:
    episode: int
    total: float


@dataclass
class EpisodeReturns:
    """Completed episode returns, assembled from the reward column of consecutive batches of each robot.

    An episode completes at a ``done`` row or when a later row of the same robot starts another episode
    (a time-limit reset carries no ``done``).
    """

    _open: dict[str, _OpenEpisode] = field(default_factory=dict)

    def feed(self, robot: str, episode: np.ndarray, reward: np.ndarray, done: np.ndarray) -> list[float]:
        """Add one batch of ``robot`` (rows in time order); returns the returns of the episodes it completed."""
        if episode.shape[0] == 0:
            return []
        starts = np.concatenate(([0], np.flatnonzero(np.diff(episode) != 0) + 1))
        sums = np.add.reduceat(reward, starts)
        ends = np.append(starts[1:], episode.shape[0]) - 1
        finished: list[float] = []
        for start, end, total in zip(starts.tolist(), ends.tolist(), sums.tolist(), strict=True):
            current = self._open.pop(robot, None)
            ep = int(episode[start])
            if current is not None and current.episode == ep:
                total += current.total
            elif current is not None:
                finished.append(current.total)  # the previous episode ended without done (time limit)
            if bool(done[end]):
                finished.append(total)
            else:
                self._open[robot] = _OpenEpisode(ep, total)
        return finished


class Ingest:
    """Turns transitions messages into store chunks; thread-safe against :meth:`snapshot`."""

    def __init__(self, store: TransitionStore, obs_dim: int, act_dim: int, learner_id: str = "learner") -> None:
        self.store = store
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.learner_id = learner_id  # in every ack: a new one tells controllers to resend what it lacks
        self.lock = threading.Lock()
        self.ledger = SeqLedger()
        self.ledger.restore(store.batch_keys())  # duplicates stay duplicates across restarts
        self.counters: dict[str, RobotCounters] = {}
        self.episodes = EpisodeReturns()
        self._returns: list[tuple[str, float]] = []  # (policy id of the completing batch, episode return)

    def counters_for(self, robot: str) -> RobotCounters:
        """Counters of ``robot`` (created on first use)."""
        return self.counters.setdefault(robot, RobotCounters())

    def handle(self, msg: Any, robot: str) -> IngestResult:
        """Decode, check and persist one message received on ``robot``'s transitions topic."""
        counters = self.counters_for(robot)
        try:
            batch = decode_transitions(msg, self.obs_dim, self.act_dim)
        except CodecError as exc:
            return self._reject(counters, robot, str(exc))
        restarted = self.ledger.is_new_session(batch.robot, batch.session)
        status = self.ledger.get(batch.robot, batch.session).classify(batch.seq)
        if status.kind == SeqKind.DUPLICATE:
            counters.duplicate += 1
            return IngestResult("duplicate", robot, reason=f"duplicate seq {batch.seq}", sender=batch.robot,
                                session=batch.session)
        try:
            self._persist(batch)
        except (ValueError, OSError) as exc:
            return self._reject(counters, robot, f"store refused the batch: {exc}")
        self.ledger.record(batch.robot, batch.session, batch.seq)
        self._count(counters, status.kind, status.missing, batch.n)
        counters.restarts += restarted
        returns = self.episodes.feed(robot, batch.episode, batch.reward, batch.done)
        with self.lock:
            self._returns.extend((batch.policy_id, r) for r in returns)
        return IngestResult("accepted", robot, transitions=batch.n, sender=batch.robot, session=batch.session)

    def ack(self, robot: str, session: str) -> Ack | None:
        """The acknowledgement of ``robot``'s ``session`` (None if nothing of it is stored)."""
        seqs = self.ledger.sessions.get((robot, session))
        if seqs is None or seqs.highest < 0:
            return None
        highest, missing = seqs.ack_range()
        return Ack(robot, session, self.learner_id, highest, missing)

    def newest_ack(self, robot: str) -> Ack | None:
        """The acknowledgement of ``robot``'s newest stored session: what a learner publishes when it starts."""
        session = self.ledger.newest.get(robot)
        return None if session is None else self.ack(robot, session)

    def holes(self) -> dict[tuple[str, str], int]:
        """Batches missing from the store per (robot, session): real gaps unless they still arrive."""
        return {key: n for key, seqs in self.ledger.sessions.items() if (n := seqs.missing_count())}

    def _persist(self, batch: TransitionBatch) -> None:
        with self.lock:
            self.store.append(batch.to_store_dict())

    @staticmethod
    def _reject(counters: RobotCounters, robot: str, reason: str) -> IngestResult:
        counters.rejected += 1
        counters.last_error = reason
        return IngestResult("rejected", robot, reason=reason)

    @staticmethod
    def _count(counters: RobotCounters, kind: SeqKind, missing: int, n: int) -> None:
        counters.accepted += 1
        counters.transitions += n
        if kind == SeqKind.GAP:
            counters.gaps += 1
            counters.missing += missing
        elif kind == SeqKind.REORDERED:
            counters.reordered += 1

    def stored(self) -> int:
        """Transitions in the store (every robot, every session of the run)."""
        with self.lock:
            return len(self.store)

    def take_returns(self, policy_id: str = "") -> list[float]:
        """Episode returns completed since the last call: those of ``policy_id`` if it has any, else all.

        Right after a policy is published, robots still finish episodes of the previous one; a mean over all of
        them would hide how the new policy does.
        """
        with self.lock:
            done, self._returns = self._returns, []
        own = [r for pid, r in done if pid == policy_id]
        return own if own else [r for _, r in done]

    def snapshot(self) -> dict[str, np.ndarray]:
        """Every transition stored so far, frozen (as :meth:`TransitionStore.load_all` returns it): the training
        thread's data set for one iteration; batches appended later are not in it."""
        return self.covered_snapshot()[0]

    def covered_snapshot(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """:meth:`snapshot` and the part of the store it covers (:func:`mbmpo_core.store.store_coverage`, for
        the checkpoint of the iteration trained on it)."""
        with self.lock:
            batches = list(self.store.iter_batches())  # chunks are only appended: these stay as they are
            coverage = store_coverage(self.store)
            if not batches:
                return self.store.load_all(), coverage
        return {spec.name: np.concatenate([b[spec.name] for b in batches]) for spec in SCHEMA}, coverage
