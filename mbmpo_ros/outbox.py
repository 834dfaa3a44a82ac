"""Transition batches a controller has made and the learner has not yet acknowledged as stored.

At-least-once delivery over DDS: every batch stays here, up to ``capacity`` (oldest dropped first, counted),
until an acknowledgement (:class:`mbmpo_ros.codec.Ack`) says the learner has persisted it. Sending is in seq
order, at most ``burst`` per call, and only while the transitions topic has a subscriber. A batch is sent again

* at once when an ack comes from a new learner (``Ack.learner`` changed: a restarted learner has lost what was
  in flight to the last one; its ack tells from where on it lacks data);
* at once when an ack lists it missing although a batch sent after it is stored (DDS delivers in order: it
  was lost, e.g. sent before the new learner's subscription matched);
* when it is still unacknowledged ``resend_after_s`` after its last send (then after twice that, and so on up to
  ``max_backoff_s``): the tail of a stream has no later batch to reveal its loss.

The learner stores each (robot, session, seq) once, so a batch sent twice costs bandwidth, never a duplicate.
The transitions topic is VOLATILE on purpose: a late learner must not get a robot's whole history from the DDS
writer, which would hold it in memory without bound; this bounded outbox replaces that. Pure logic (no ROS):
the node passes the send function, the subscriber count and the time.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from mbmpo_ros.codec import Ack

Batch = TypeVar("Batch")


@dataclass
class _Held(Generic[Batch]):
    batch: Batch
    sent_at: float | None = None  # None: never sent
    order: int = -1  # send counter at the last send: which batches went out before which
    backoff_s: float = 0.0
    due: bool = True  # queued for (re)sending


class Outbox(Generic[Batch]):
    """Unacknowledged batches by seq (see module docstring). ``seq_of`` reads a batch's seq.

    Counters: ``sent`` (sends, resends included), ``resent``, ``acked`` (batches released by acks),
    ``dropped`` (lost to the cap before any ack).
    """

    def __init__(self, capacity: int, seq_of: Callable[[Batch], int], burst: int = 20,
                 resend_after_s: float = 5.0, max_backoff_s: float = 60.0) -> None:
        if capacity < 1 or burst < 1 or resend_after_s <= 0 or max_backoff_s < resend_after_s:
            raise ValueError(f"need capacity >= 1, burst >= 1 and 0 < resend_after_s <= max_backoff_s, got "
                             f"{capacity}, {burst}, {resend_after_s}, {max_backoff_s}")
        self.capacity, self.burst, self.seq_of = capacity, burst, seq_of
        self.resend_after_s, self.max_backoff_s = resend_after_s, max_backoff_s
        self._held: collections.OrderedDict[int, _Held[Batch]] = collections.OrderedDict()  # ascending seq
        self._due: collections.deque[int] = collections.deque()  # seqs to send, in order (may hold stale ones)
        self._orders = 0
        self._confirmed_order = -1  # the latest send order the learner has confirmed stored
        self._learner = ""
        self._next_expiry = float("inf")  # no sent batch can be due for a resend before this time
        self.last_ack: Ack | None = None
        self.sent = self.resent = self.acked = self.dropped = 0

    def __len__(self) -> int:
        """Batches not yet acknowledged (sent or not)."""
        return len(self._held)

    @property
    def waiting(self) -> int:
        """Batches queued for sending (new or to be resent)."""
        return sum(1 for held in self._held.values() if held.due)

    def add(self, batches: Iterable[Batch]) -> int:
        """Keep ``batches`` (oldest first) and queue them; returns how many old batches the cap dropped now."""
        before = self.dropped
        for batch in batches:
            seq = self.seq_of(batch)
            self._held[seq] = _Held(batch)
            self._due.append(seq)
            if len(self._held) > self.capacity:
                self._held.popitem(last=False)
                self.dropped += 1
        return self.dropped - before

    def flush(self, send: Callable[[Batch], None], subscribers: int, now: float) -> int:
        """Send up to ``burst`` due batches in seq order if anyone subscribes; returns how many were sent."""
        if subscribers <= 0:
            return 0
        self._queue_expired(now)
        count = 0
        while self._due and count < self.burst:
            held = self._held.get(self._due.popleft())
            if held is None or not held.due:
                continue  # acknowledged or dropped meanwhile, or queued twice
            if held.sent_at is not None:
                self.resent += 1
            send(held.batch)
            held.due, held.sent_at, held.order = False, now, self._orders
            held.backoff_s = min(self.max_backoff_s, 2 * held.backoff_s) if held.backoff_s else self.resend_after_s
            self._next_expiry = min(self._next_expiry, now + held.backoff_s)
            self._orders += 1
            count += 1
        self.sent += count
        return count

    def acknowledge(self, ack: Ack) -> int:
        """Release what ``ack`` says is stored and queue what it says was lost; returns how many were released.

        The caller passes only acks of this controller's robot and session.
        """
        new_learner = self._learner not in ("", ack.learner)  # the first learner heard of is no restart
        self._learner, self.last_ack = ack.learner, ack
        released = [seq for seq in self._held if ack.stored(seq)]
        for seq in released:
            self._confirmed_order = max(self._confirmed_order, self._held.pop(seq).order)
        self.acked += len(released)
        missing = set(ack.missing)
        self._requeue(lambda seq, held: new_learner or (seq in missing and held.order < self._confirmed_order))
        return len(released)

    def _queue_expired(self, now: float) -> None:
        if now < self._next_expiry:
            return  # (the common case: no scan of the held batches on every tick)
        self._requeue(lambda seq, held: held.sent_at is not None and now - held.sent_at >= held.backoff_s)
        waiting = [h.sent_at + h.backoff_s for h in self._held.values() if h.sent_at is not None and not h.due]
        self._next_expiry = min(waiting, default=float("inf"))

    def _requeue(self, lost: Callable[[int, _Held[Batch]], bool]) -> None:
        """Queue again every sent, unacknowledged batch for which ``lost(seq, held)``; resends go out first, in
        seq order."""
        again = [seq for seq, held in self._held.items() if held.sent_at is not None and not held.due
                 and lost(seq, held)]
        for seq in again:
            self._held[seq].due = True
        if again:
            self._due = collections.deque(sorted({s for s in (*self._due, *again) if s in self._held}))
