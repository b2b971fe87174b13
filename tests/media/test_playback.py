"""RemotePlayback: what a far end that plays on its own clock has heard, from its mark echoes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.playback import RemotePlayback

FRAME_MS = 20.0


def _send(playback: RemotePlayback, start: float, frames: int) -> float:
    """Send ``frames`` 20 ms frames at 20 ms intervals from ``start``; returns the time after."""
    t = start
    for _ in range(frames):
        playback.sent(t, FRAME_MS)
        t += 0.020
    return t


def test_without_echoes_what_was_sent_counts_as_played():
    playback = RemotePlayback()
    _send(playback, 0.0, 10)
    assert playback.played_ms(0.2) == 200
    assert playback.unplayed_ms(0.2) == 0


def test_echo_delay_gives_what_is_still_queued():
    playback = RemotePlayback()
    t = _send(playback, 0.0, 5)  # frames sent at 0.00 .. 0.08, t = 0.10
    name = playback.place_mark(0.09)
    # The far end plays 150 ms behind: the mark after five frames comes back at 0.24.
    assert playback.echoed(name, 0.24)
    assert playback.delay == pytest.approx(0.15)
    t = _send(playback, t, 20)  # up to 0.48
    # At 0.48 the far end has played what was sent until 0.33: frames sent at <= 0.32 (17 frames)
    # and 10 ms of the next one.
    assert playback.played_ms(0.48) == pytest.approx(17 * 20 + 10)
    assert playback.unplayed_ms(0.48) == pytest.approx(25 * 20 - 350)


def test_echo_is_a_floor_and_sent_is_a_ceiling():
    playback = RemotePlayback()
    _send(playback, 0.0, 10)
    name = playback.place_mark(0.19)
    # A slow echo (the return path stalled): the far end has at least played up to the mark.
    assert playback.echoed(name, 2.0)
    assert playback.played_ms(2.0) == 200
    assert playback.played_ms(100.0) == 200


def test_new_segment_after_silence_is_not_counted_as_played():
    playback = RemotePlayback()
    t = _send(playback, 0.0, 10)
    assert playback.echoed(playback.place_mark(t), t + 0.2)
    # Five seconds later the agent speaks again; 60 ms in, nothing of it can have been heard yet.
    t = _send(playback, 5.0, 3)
    assert playback.unplayed_ms(t) == pytest.approx(60)


def test_clear_forgets_pending_marks():
    playback = RemotePlayback()
    _send(playback, 0.0, 10)
    first = playback.place_mark(0.2)
    playback.clear()
    # Twilio echoes marks it dropped on clear: they say nothing about playback.
    assert not playback.echoed(first, 0.25)
    assert playback.delay is None
    assert playback.unplayed_ms(0.3) == 0
    # Nothing sent since the clear: no mark to place.
    assert playback.place_mark(0.3) is None


def test_echo_of_a_later_mark_retires_earlier_ones():
    playback = RemotePlayback()
    _send(playback, 0.0, 5)
    a = playback.place_mark(0.1)
    _send(playback, 0.1, 5)
    b = playback.place_mark(0.2)
    assert playback.pending_marks == 2
    assert playback.echoed(b, 0.4)
    assert playback.pending_marks == 0
    assert not playback.echoed(a, 0.41)


def test_unknown_mark_is_ignored():
    playback = RemotePlayback()
    assert not playback.echoed("someone-else", 1.0)


@given(
    st.lists(st.tuples(st.integers(1, 50), st.floats(0.0, 2.0), st.booleans()), min_size=1, max_size=30)
)
def test_played_stays_between_floor_and_sent(steps):
    playback = RemotePlayback()
    t = 0.0
    for frames, gap, echo in steps:
        t = _send(playback, t + gap, frames)
        name = playback.place_mark(t)
        if echo and name is not None:
            playback.echoed(name, t + gap)
        now = t + gap
        played = playback.played_ms(now)
        assert 0.0 <= played <= playback.sent_ms
        assert playback.unplayed_ms(now) == pytest.approx(playback.sent_ms - played)
