"""The learner's ingest path, free of ROS: decode -> validate -> de-duplicate -> persist -> count.

A transitions message becomes durable (one store chunk) before anything else happens with it; training reads
the store in another thread, so every append and every snapshot of the chunk list takes one lock. Nothing here
blocks on training: :meth:`Ingest.handle` only decodes, appends and updates counters.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mbmpo_core.store import SCHEMA, TransitionStore
from mbmpo_ros.codec import CodecError, SeqKind, SequenceTracker, TransitionBatch, decode_transitions


@dataclass
class RobotCounters:
    """Per-robot ingest statistics (batches unless named otherwise)."""

    accepted: int = 0
    rejected: int = 0
    duplicate: int = 0
    gaps: int = 0  # gap events
    missing: int = 0  # batches skipped by those gaps (some may arrive later, reordered)
    reordered: int = 0
    restarts: int = 0
    transitions: int = 0
    last_error: str = ""


@dataclass(frozen=True)
class IngestResult:
    """What happened to one message: ``kind`` is accepted, rejected or duplicate."""

    kind: str
    robot: str
    transitions: int = 0
    reason: str = ""


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

    def __init__(self, store: TransitionStore, obs_dim: int, act_dim: int) -> None:
        self.store = store
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.lock = threading.Lock()
        self.tracker = SequenceTracker()
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
        status = self.tracker.observe(robot, batch.seq)
        if status.kind == SeqKind.DUPLICATE:
            counters.duplicate += 1
            return IngestResult("duplicate", robot, reason=f"duplicate seq {batch.seq}")
        try:
            self._persist(batch)
        except (ValueError, OSError) as exc:
            return self._reject(counters, robot, f"store refused the batch: {exc}")
        self._count(counters, status.kind, status.missing, batch.n)
        returns = self.episodes.feed(robot, batch.episode, batch.reward, batch.done)
        with self.lock:
            self._returns.extend((batch.policy_id, r) for r in returns)
        return IngestResult("accepted", robot, transitions=batch.n)

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
        elif kind == SeqKind.RESTART:
            counters.restarts += 1

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
        with self.lock:
            batches = list(self.store.iter_batches())  # chunks are only appended: these stay as they are
            if not batches:
                return self.store.load_all()
        return {spec.name: np.concatenate([b[spec.name] for b in batches]) for spec in SCHEMA}
