"""Pacer deadline arithmetic driven by an injected clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.pacing import FRAME_PERIOD, Pacer


def test_on_time_frames_follow_t0_plus_n_periods() -> None:
    pacer = Pacer(start=100.0)
    for n in range(50):
        deadline = 100.0 + n * FRAME_PERIOD
        assert pacer.next_deadline == pytest.approx(deadline)
        assert pacer.delay(deadline - 0.005) == pytest.approx(0.005)
        assert pacer.delay(deadline) == 0.0
        assert pacer.frame_sent(deadline) == 0.0
    assert pacer.stats.frames == 50
    assert pacer.stats.late_frames == 0
    assert pacer.stats.max_lateness == 0.0


def test_deadlines_do_not_drift_with_small_lateness() -> None:
    # Each frame goes out 3 ms late; the schedule stays anchored to t0 instead of creeping.
    pacer = Pacer(start=0.0)
    for n in range(1000):
        assert pacer.frame_sent(n * FRAME_PERIOD + 0.003) == pytest.approx(0.003)
    assert pacer.next_deadline == pytest.approx(1000 * FRAME_PERIOD)
    assert pacer.stats.total_lateness == pytest.approx(3.0)
    assert pacer.stats.late_frames == 0  # late means more than half a period


def test_a_short_stall_is_caught_up_on_schedule() -> None:
    pacer = Pacer(start=0.0)
    pacer.frame_sent(0.0)
    # The loop stalls 45 ms: frame 1 (due 20 ms) goes at 45 ms, 25 ms late.
    assert pacer.frame_sent(0.045) == pytest.approx(0.025)
    assert pacer.stats.late_frames == 1
    # Frame 2 was due at 40 ms: it is due now, and frame 3 at 60 ms keeps the original grid.
    assert pacer.delay(0.045) == 0.0
    pacer.frame_sent(0.045)
    assert pacer.next_deadline == pytest.approx(0.060)
    assert pacer.stats.resyncs == 0


def test_a_long_stall_re_anchors_instead_of_bursting() -> None:
    pacer = Pacer(start=0.0, max_catch_up=3)
    pacer.frame_sent(0.0)
    # Frame 1 due at 20 ms goes at 500 ms: 480 ms late, far beyond 3 periods.
    assert pacer.frame_sent(0.5) == pytest.approx(0.48)
    assert pacer.stats.resyncs == 1
    assert pacer.stats.max_lateness == pytest.approx(0.48)
    # The next frame is due one period later, not immediately.
    assert pacer.next_deadline == pytest.approx(0.52)
    assert pacer.delay(0.5) == pytest.approx(0.02)


@given(st.lists(st.floats(min_value=0.0, max_value=0.2), min_size=1, max_size=300))
def test_never_faster_than_real_time(stalls: list[float]) -> None:
    """Whatever the scheduling delays, frames never go out faster than one per period on average."""
    pacer = Pacer(start=0.0)
    now = 0.0
    sent = []
    for stall in stalls:
        now += pacer.delay(now) + stall  # wait until due, then some extra scheduling delay
        pacer.frame_sent(now)
        sent.append(now)
    # Only frames that were due may be sent: at most max_catch_up + 1 frames in any instant, and
    # over any stretch no more than one frame per period beyond that allowance.
    for i in range(len(sent)):
        for j in range(i + 1, len(sent)):
            assert (j - i) <= (sent[j] - sent[i]) / FRAME_PERIOD + 3 + 1 + 1e-6
        if i > 40:
            break


def test_lateness_statistics_accumulate() -> None:
    pacer = Pacer(start=0.0)
    pacer.frame_sent(0.0)
    pacer.frame_sent(0.032)  # 12 ms late: late
    pacer.frame_sent(0.045)  # 5 ms late: not late
    assert pacer.stats.frames == 3
    assert pacer.stats.late_frames == 1
    assert pacer.stats.max_lateness == pytest.approx(0.012)
    assert pacer.stats.total_lateness == pytest.approx(0.017)


def test_early_send_is_not_negative_lateness() -> None:
    pacer = Pacer(start=1.0)
    assert pacer.frame_sent(0.99) == 0.0


@pytest.mark.parametrize("period", [0.0, -0.02])
def test_period_must_be_positive(period: float) -> None:
    with pytest.raises(ValueError):
        Pacer(start=0.0, period=period)


def test_restart_starts_a_new_grid_at_now() -> None:
    pacer = Pacer(start=10.0)
    for n in range(3):
        pacer.frame_sent(10.0 + n * FRAME_PERIOD)
    # An idle stretch, then a talkspurt starting off the old grid: its first frame is due at once,
    # the next ones one period apart from it.
    pacer.restart(10.537)
    assert pacer.delay(10.537) == 0.0
    assert pacer.frame_sent(10.537) == 0.0
    assert pacer.next_deadline == pytest.approx(10.537 + FRAME_PERIOD)
    assert pacer.stats.frames == 4 and pacer.stats.resyncs == 0
