"""The controller's outbox: batches made while no learner subscribes are kept (up to a cap) and sent in order."""

from __future__ import annotations

import pytest

from mbmpo_ros.outbox import Outbox


def test_keeps_batches_until_a_subscriber_then_sends_in_order_in_bursts() -> None:
    box: Outbox[int] = Outbox(capacity=10, burst=3)
    sent: list[int] = []
    assert box.add(range(5)) == 0
    assert box.flush(sent.append, subscribers=0) == 0 and sent == [] and len(box) == 5
    assert box.flush(sent.append, subscribers=1) == 3 and sent == [0, 1, 2]
    box.add([5])
    while box.flush(sent.append, subscribers=1):
        pass
    assert sent == [0, 1, 2, 3, 4, 5] and len(box) == 0 and box.sent == 6 and box.dropped == 0


def test_cap_drops_the_oldest_and_counts_them() -> None:
    box: Outbox[int] = Outbox(capacity=4, burst=100)
    assert box.add(range(3)) == 0
    assert box.add(range(3, 7)) == 3
    sent: list[int] = []
    box.flush(sent.append, subscribers=2)
    assert sent == [3, 4, 5, 6] and box.dropped == 3


@pytest.mark.parametrize(("capacity", "burst"), [(0, 1), (1, 0)])
def test_rejects_bad_sizes(capacity: int, burst: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        Outbox(capacity, burst)
