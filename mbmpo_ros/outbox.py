"""Transition batches waiting for a learner: the controller keeps them while nobody subscribes.

The transitions topic is VOLATILE (a late learner must not receive a robot's whole history from the DDS
writer, which would hold it in memory without bound). Instead the controller holds the batches made while no
subscriber is matched, up to ``capacity`` (oldest dropped first, counted), and sends them in order, at most
``burst`` per call, once one is: a learner started late or restarted loses nothing the cap kept. Any matched
subscriber counts (a ``ros2 topic echo`` too): the controller cannot tell a learner from another reader.
Pure logic (no ROS): the node passes the send function and the subscriber count.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

Batch = TypeVar("Batch")


class Outbox(Generic[Batch]):
    """FIFO of unsent batches with a cap; ``dropped`` counts batches lost to the cap."""

    def __init__(self, capacity: int, burst: int = 20) -> None:
        if capacity < 1 or burst < 1:
            raise ValueError(f"need capacity >= 1 and burst >= 1, got {capacity}, {burst}")
        self.capacity, self.burst = capacity, burst
        self._queue: collections.deque[Batch] = collections.deque()
        self.dropped = 0
        self.sent = 0

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, batches: Iterable[Batch]) -> int:
        """Queue ``batches`` (oldest first); returns how many old batches the cap dropped now."""
        before = self.dropped
        for batch in batches:
            self._queue.append(batch)
            if len(self._queue) > self.capacity:
                self._queue.popleft()
                self.dropped += 1
        return self.dropped - before

    def flush(self, send: Callable[[Batch], None], subscribers: int) -> int:
        """Send up to ``burst`` queued batches in order if anyone subscribes; returns how many were sent.

        The tick calls this, so a long backlog goes out over several ticks instead of stalling one.
        """
        if subscribers <= 0:
            return 0
        count = 0
        while self._queue and count < self.burst:
            send(self._queue.popleft())
            count += 1
        self.sent += count
        return count
