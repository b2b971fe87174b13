"""PlayoutBuffer: framing, padding, item accounting for truncation, bounds and barge-in."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.playout import PlayoutBuffer

FRAME = 160


def ramp(start: int, n: int) -> np.ndarray:
    return (np.arange(start, start + n) % 30000).astype(np.int16)


def drain(buffer: PlayoutBuffer) -> list:
    frames = []
    while (frame := buffer.read_frame()) is not None:
        frames.append(frame)
    return frames


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=20))
def test_frames_carry_the_audio_in_order_whatever_the_chunking(sizes: list[int]) -> None:
    buffer = PlayoutBuffer(8000, FRAME)
    written = []
    start = 0
    for size in sizes:
        chunk = ramp(start, size)
        start += size
        written.append(chunk)
        buffer.write(chunk, "item")
    out = drain(buffer)
    buffer.end_of_audio()
    out += drain(buffer)
    audio = np.concatenate(written)
    got = np.concatenate([f.samples for f in out])
    assert all(len(f.samples) == FRAME for f in out)
    assert np.array_equal(got[: len(audio)], audio)
    assert not got[len(audio) :].any()  # only the last frame is padded, with silence
    assert sum(f.audio_samples for f in out) == len(audio)
    assert buffer.buffered_samples == 0


def test_partial_frame_waits_until_the_response_ends() -> None:
    buffer = PlayoutBuffer(8000, FRAME)
    buffer.write(ramp(1, 100), "a")
    assert buffer.read_frame() is None
    assert buffer.buffered_samples == 100
    buffer.end_of_audio()
    frame = buffer.read_frame()
    assert frame is not None
    assert frame.audio_samples == 100 and frame.item_id == "a"
    assert np.array_equal(frame.samples[:100], ramp(1, 100)) and not frame.samples[100:].any()
    assert buffer.read_frame() is None


def test_played_time_counts_only_what_was_handed_out() -> None:
    buffer = PlayoutBuffer(8000, FRAME)
    buffer.write(ramp(1, 240), "a")  # 30 ms
    buffer.write(ramp(1, 400), "b")  # 50 ms
    first = buffer.read_frame()
    second = buffer.read_frame()
    assert first is not None and second is not None
    assert first.item_id == "a"
    assert second.item_id == "a"  # the frame starts with a's last 10 ms and goes on with b
    assert buffer.played_ms("a") == 30
    assert buffer.played_ms("b") == 10
    buffer.clear()  # barge-in: what was not handed out was not heard
    assert buffer.played_ms("b") == 10
    assert buffer.played_ms("never") == 0


def test_bounded_buffer_drops_the_oldest_audio() -> None:
    buffer = PlayoutBuffer(8000, FRAME, max_seconds=0.1)  # 800 samples
    assert buffer.write(ramp(0, 500), "a") == 0
    dropped = buffer.write(ramp(500, 500), "b")
    assert dropped == 200
    assert buffer.dropped_samples == 200
    assert buffer.buffered_samples == 800
    buffer.end_of_audio()
    got = np.concatenate([f.samples for f in drain(buffer)])
    assert np.array_equal(got, ramp(200, 800))
    # Dropped audio was never played.
    assert buffer.played_ms("a") == 300 * 1000 // 8000


def test_a_single_write_larger_than_the_bound_keeps_its_newest_part() -> None:
    buffer = PlayoutBuffer(8000, FRAME, max_seconds=0.04)  # 320 samples
    assert buffer.write(ramp(0, 1000), "a") == 680
    frames = drain(buffer)
    assert np.array_equal(np.concatenate([f.samples for f in frames]), ramp(680, 320))


def test_clear_empties_and_reports_what_it_dropped() -> None:
    buffer = PlayoutBuffer(8000, FRAME)
    buffer.write(ramp(0, 1000), "a")
    buffer.read_frame()
    assert buffer.clear() == 840
    assert buffer.buffered_samples == 0
    assert buffer.buffered_seconds == 0
    assert buffer.read_frame() is None
    # A new response after the barge-in starts cleanly.
    buffer.write(ramp(5, FRAME), "b")
    frame = buffer.read_frame()
    assert frame is not None and frame.item_id == "b"
    assert np.array_equal(frame.samples, ramp(5, FRAME))


def test_audio_without_an_item_is_played_but_not_accounted() -> None:
    buffer = PlayoutBuffer(8000, FRAME)
    buffer.write(ramp(0, FRAME), None)
    frame = buffer.read_frame()
    assert frame is not None and frame.item_id is None and frame.audio_samples == FRAME


def test_only_recent_items_are_remembered() -> None:
    buffer = PlayoutBuffer(8000, FRAME)
    for i in range(40):
        buffer.write(ramp(0, FRAME), f"item{i}")
        buffer.read_frame()
    assert buffer.played_ms("item39") == 20
    assert buffer.played_ms("item0") == 0


def test_writes_are_not_aliased_to_the_callers_array() -> None:
    buffer = PlayoutBuffer(8000, FRAME)
    chunk = ramp(0, FRAME)
    buffer.write(chunk, "a")
    chunk[:] = 0  # the caller reuses its buffer
    frame = buffer.read_frame()
    assert frame is not None
    assert np.array_equal(frame.samples, ramp(0, FRAME))


def test_bad_frame_size_is_refused() -> None:
    with pytest.raises(ValueError):
        PlayoutBuffer(8000, 0)
