"""Jitter buffer: reordering, duplicates, late packets, loss, wrap-around, underrun and overflow."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.jitter import JitterBuffer, Loss
from sip.rtp import RtpPacket


def pkt(seq: int, ssrc: int = 1) -> RtpPacket:
    seq %= 65536
    return RtpPacket(0, seq, seq * 160, ssrc, seq.to_bytes(2, "big"))


def drain(buffer: JitterBuffer, n: int) -> list[int | str | None]:
    out: list[int | str | None] = []
    for _ in range(n):
        item = buffer.get()
        if item is None:
            out.append(None)
        elif isinstance(item, Loss):
            out.append(f"loss {item.sequence_number}")
        else:
            out.append(item.sequence_number)
    return out


def test_prefetch_then_in_order() -> None:
    jb = JitterBuffer(capacity_packets=8, prefetch=3)
    jb.put(pkt(10))
    jb.put(pkt(11))
    assert jb.get() is None
    jb.put(pkt(12))
    assert drain(jb, 3) == [10, 11, 12]


def test_reordering_within_prefetch() -> None:
    jb = JitterBuffer(capacity_packets=8, prefetch=3)
    for seq in (12, 10, 11, 14, 13):
        jb.put(pkt(seq))
    assert drain(jb, 5) == [10, 11, 12, 13, 14]
    assert jb.statistics().played == 5


def test_duplicates_dropped_and_counted() -> None:
    jb = JitterBuffer(capacity_packets=8, prefetch=2)
    for seq in (1, 1, 2, 2, 2):
        jb.put(pkt(seq))
    assert drain(jb, 2) == [1, 2]
    assert jb.duplicates == 3


def test_loss_reported_and_late_arrival_dropped() -> None:
    jb = JitterBuffer(capacity_packets=8, prefetch=2)
    for seq in (1, 2, 4, 5):
        jb.put(pkt(seq))
    assert drain(jb, 3) == [1, 2, "loss 3"]
    jb.put(pkt(3))  # too late: its slot was concealed
    assert drain(jb, 2) == [4, 5]
    s = jb.statistics()
    assert (s.lost, s.late, s.played) == (1, 1, 4)


def test_sequence_wrap_around() -> None:
    jb = JitterBuffer(capacity_packets=8, prefetch=3)
    for seq in (65534, 0, 65535, 1, 3, 2):
        jb.put(pkt(seq))
    assert drain(jb, 6) == [65534, 65535, 0, 1, 2, 3]
    jb.put(pkt(65535))  # an old packet after the wrap is late, not a future one
    assert jb.late == 1


def test_underrun_rebuffers() -> None:
    jb = JitterBuffer(capacity_packets=8, prefetch=2)
    for seq in (1, 2):
        jb.put(pkt(seq))
    assert drain(jb, 3) == [1, 2, None]
    assert jb.underruns == 1
    jb.put(pkt(5))  # 3 and 4 lost during the outage, the caller already concealed them
    assert jb.get() is None  # prefetching again
    jb.put(pkt(6))
    assert drain(jb, 2) == [5, 6]
    assert jb.lost == 2
    jb.put(pkt(4))
    assert jb.late == 1


def test_overflow_skips_oldest() -> None:
    jb = JitterBuffer(capacity_packets=4, prefetch=2)
    for seq in range(1, 3):
        jb.put(pkt(seq))
    assert drain(jb, 1) == [1]
    for seq in range(3, 9):
        jb.put(pkt(seq))
    # The reader fell behind: 2, 3, 4 are dropped so the buffer spans at most 4 slots.
    assert drain(jb, 4) == [5, 6, 7, 8]
    assert jb.overflow_dropped == 3


def test_capacity_before_playout() -> None:
    jb = JitterBuffer(capacity_packets=3, prefetch=3)
    for seq in (5, 1, 2, 3, 4):
        jb.put(pkt(seq))
    assert len(jb) == 3
    assert drain(jb, 3) == [3, 4, 5]


def test_new_ssrc_or_big_jump_restarts() -> None:
    jb = JitterBuffer(capacity_packets=8, prefetch=1)
    jb.put(pkt(100))
    assert drain(jb, 1) == [100]
    jb.put(pkt(40000))
    assert drain(jb, 1) == [40000]
    jb.put(pkt(7, ssrc=2))
    assert drain(jb, 1) == [7]
    assert jb.restarts == 2


def test_bad_configuration() -> None:
    with pytest.raises(ValueError):
        JitterBuffer(capacity_packets=0)
    with pytest.raises(ValueError):
        JitterBuffer(capacity_packets=4, prefetch=5)


@given(
    start=st.integers(0, 65535),
    count=st.integers(1, 200),
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0, 0.3),
    dup=st.floats(0, 0.3),
)
def test_property_playout_is_ordered_and_accounted(
    start: int, count: int, seed: int, loss: float, dup: float
) -> None:
    rng = random.Random(seed)
    jb = JitterBuffer(capacity_packets=16, prefetch=4)
    sent = [start + i for i in range(count) if rng.random() >= loss]
    arrivals: list[int] = []
    for seq in sent:
        arrivals.append(seq)
        if rng.random() < dup:
            arrivals.append(seq)
    # Local reordering by at most 3 positions.
    for i in range(0, len(arrivals) - 1):
        if rng.random() < 0.2:
            j = min(len(arrivals) - 1, i + rng.randint(1, 3))
            arrivals[i], arrivals[j] = arrivals[j], arrivals[i]
    played: list[int] = []
    losses = 0
    for seq in arrivals:
        jb.put(pkt(seq))
        item = jb.get()
        if isinstance(item, RtpPacket):
            played.append(item.sequence_number)
        elif isinstance(item, Loss):
            losses += 1
    while (item := jb.get()) is not None:
        if isinstance(item, RtpPacket):
            played.append(item.sequence_number)
        else:
            losses += 1
    unwrapped = [start + ((s - start) % 65536) for s in played]
    assert unwrapped == sorted(set(unwrapped))  # strictly increasing: ordered, no duplicates
    assert set(unwrapped) <= set(sent)
    s = jb.statistics()
    assert s.received == len(arrivals)
    assert s.played == len(played)
    # Every arrival is played, a duplicate, late, dropped for room or still held.
    assert s.played + s.duplicates + s.late + s.overflow_dropped + len(jb) == s.received
