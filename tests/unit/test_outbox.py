"""The controller's outbox: every batch is kept (up to a cap) until the learner acknowledges it as stored, sent in
order while a learner subscribes, and sent again when the learner restarts, reports it missing, or stays silent."""

from __future__ import annotations

import pytest

from mbmpo_ros.codec import Ack
from mbmpo_ros.outbox import Outbox


def box(capacity: int = 100, burst: int = 100, resend_after_s: float = 5.0) -> Outbox[int]:
    return Outbox(capacity, seq_of=lambda b: b, burst=burst, resend_after_s=resend_after_s)


def ack(highest: int, missing: tuple[int, ...] = (), learner: str = "L1") -> Ack:
    return Ack("r", "s", learner, highest, missing)


def test_keeps_batches_until_a_subscriber_then_sends_in_order_in_bursts() -> None:
    b = box(capacity=10, burst=3)
    sent: list[int] = []
    assert b.add(range(5)) == 0
    assert b.flush(sent.append, subscribers=0, now=0.0) == 0 and sent == [] and len(b) == 5
    assert b.flush(sent.append, subscribers=1, now=0.0) == 3 and sent == [0, 1, 2]
    b.add([5])
    while b.flush(sent.append, subscribers=1, now=0.1):
        pass
    assert sent == [0, 1, 2, 3, 4, 5] and b.sent == 6 and b.dropped == 0
    assert len(b) == 6 and b.waiting == 0  # sent, not yet acknowledged: still held


def test_an_ack_releases_what_is_stored_and_nothing_else() -> None:
    b = box()
    sent: list[int] = []
    b.add(range(6))
    b.flush(sent.append, 1, now=0.0)
    assert b.acknowledge(ack(3, missing=(1,))) == 3  # 0, 2, 3 stored; 1 not
    assert len(b) == 3 and b.acked == 3
    assert b.acknowledge(ack(5)) == 3 and len(b) == 0


def test_cap_drops_the_oldest_and_counts_them() -> None:
    b = box(capacity=4)
    assert b.add(range(3)) == 0
    assert b.add(range(3, 7)) == 3
    sent: list[int] = []
    b.flush(sent.append, subscribers=2, now=0.0)
    assert sent == [3, 4, 5, 6] and b.dropped == 3


def test_a_new_learner_gets_everything_it_lacks_again_in_order() -> None:
    b = box()
    sent: list[int] = []
    b.add(range(10))
    b.flush(sent.append, 1, now=0.0)
    b.acknowledge(ack(3, learner="L1"))
    b.flush(sent.append, 1, now=1.0)
    assert sent == list(range(10))  # nothing resent while the same learner is catching up
    # The learner was killed: its successor stored up to 5 (the first learner persisted 4 and 5 unacked).
    b.add([10])
    b.acknowledge(ack(5, learner="L2"))
    sent.clear()
    b.flush(sent.append, 1, now=1.5)
    assert sent == [6, 7, 8, 9, 10] and b.resent == 4


def test_a_batch_reported_missing_behind_a_stored_later_one_is_resent_once() -> None:
    b = box()
    sent: list[int] = []
    b.add(range(4))
    b.flush(sent.append, 1, now=0.0)
    b.acknowledge(ack(3, missing=(1,)))  # 1 lost in transit (sent before 3, which arrived)
    b.acknowledge(ack(3, missing=(1,)))  # the same ack again: no second resend while one is in flight
    sent.clear()
    b.flush(sent.append, 1, now=0.1)
    assert sent == [1] and b.resent == 1
    b.acknowledge(ack(3, missing=(1,)))  # an ack written before the resend arrived: 1 was sent after 3
    assert b.flush(sent.append, 1, now=0.2) == 0


def test_silence_resends_after_a_timeout_with_backoff() -> None:
    b = box(resend_after_s=5.0)
    sent: list[int] = []
    b.add([0, 1])
    b.flush(sent.append, 1, now=0.0)
    assert b.flush(sent.append, 1, now=4.9) == 0
    assert b.flush(sent.append, 1, now=5.0) == 2 and sent == [0, 1, 0, 1]
    assert b.flush(sent.append, 1, now=14.9) == 0  # backoff: 10 s after the first resend
    assert b.flush(sent.append, 1, now=15.0) == 2 and b.resent == 4
    b.acknowledge(ack(1))
    assert b.flush(sent.append, 1, now=100.0) == 0 and len(b) == 0


def test_nothing_is_sent_without_a_subscriber_and_nothing_is_lost_meanwhile() -> None:
    b = box()
    sent: list[int] = []
    b.add(range(3))
    b.flush(sent.append, 1, now=0.0)
    b.add(range(3, 5))
    assert b.flush(sent.append, 0, now=100.0) == 0
    b.acknowledge(ack(1, learner="L2"))
    b.flush(sent.append, 1, now=101.0)
    assert sent == [0, 1, 2, 2, 3, 4]


@pytest.mark.parametrize(("capacity", "burst", "resend"), [(0, 1, 1.0), (1, 0, 1.0), (1, 1, 0.0)])
def test_rejects_bad_sizes(capacity: int, burst: int, resend: float) -> None:
    with pytest.raises(ValueError, match="capacity"):
        Outbox(capacity, seq_of=lambda b: b, burst=burst, resend_after_s=resend)
