"""RealTimeLimit: audio from a source passes at no more than real time, with bounded slack."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.pacing import RealTimeLimit

FRAME = 0.020


def test_real_time_source_is_never_delayed():
    # A frame is sent once it is complete, so a real-time source is one frame ahead.
    limit = RealTimeLimit(lead=FRAME, catch_up=1.0)
    for n in range(500):
        now = n * FRAME
        assert limit.delay(now, FRAME) == 0.0
        limit.admit(now, FRAME)


def test_burst_beyond_the_lead_waits():
    limit = RealTimeLimit(lead=0.1, catch_up=1.0)
    passed = 0
    while limit.delay(0.0, FRAME) == 0.0:
        limit.admit(0.0, FRAME)
        passed += 1
    # 100 ms ahead of real time: five frames at once, the sixth when real time allows.
    assert passed == 5
    assert limit.delay(0.0, FRAME) == pytest.approx(FRAME)


def test_late_audio_catches_up_within_the_limit():
    limit = RealTimeLimit(lead=0.0, catch_up=0.5)
    limit.admit(0.0, FRAME)
    # The network held 400 ms of audio; it arrives in a burst at 0.42 and all of it may pass.
    now = 0.42
    for _ in range(20):
        assert limit.delay(now, FRAME) == 0.0
        limit.admit(now, FRAME)


def test_long_silence_earns_no_credit_beyond_catch_up():
    limit = RealTimeLimit(lead=0.0, catch_up=0.5)
    limit.admit(0.0, FRAME)
    now = 60.0  # a minute without audio
    passed = 0
    while limit.delay(now, FRAME) == 0.0:
        limit.admit(now, FRAME)
        passed += 1
    assert passed == 25  # 0.5 s of catch-up, not 60 s


def test_negative_slack_is_refused():
    with pytest.raises(ValueError):
        RealTimeLimit(lead=-1.0, catch_up=0.0)


@given(st.lists(st.tuples(st.floats(0.0, 0.5), st.floats(0.001, 0.1)), min_size=1, max_size=200))
def test_admitted_audio_never_exceeds_elapsed_plus_slack(arrivals):
    lead, catch_up = 0.3, 1.0
    limit = RealTimeLimit(lead, catch_up)
    now = 0.0
    first = None
    admitted = 0.0
    for gap, duration in arrivals:
        now += gap
        if limit.delay(now, duration) == 0.0:
            limit.admit(now, duration)
            first = now if first is None else first
            admitted += duration
            # Whatever the arrival pattern, admitted audio stays within real time + the slack.
            assert admitted <= (now - first) + duration + lead + catch_up + 1e-9
