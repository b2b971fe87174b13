from __future__ import annotations

import io
import wave

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.wav import (
    HEADER_BYTES,
    StereoTimeline,
    WavError,
    WavFormat,
    WavWriter,
    envelope,
    read_frames,
    read_info,
    repair,
    repair_file,
)

STEREO_8K = WavFormat(8000, 2)


def _stereo(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-32768, 32767, size=(n, 2), dtype=np.int16)


def _read_stdlib(data: bytes) -> tuple[np.ndarray, int, int]:
    with wave.open(io.BytesIO(data), "rb") as wav:
        frames = wav.readframes(wav.getnframes())
        return (np.frombuffer(frames, dtype="<i2").reshape(-1, wav.getnchannels()),
                wav.getframerate(), wav.getnchannels())


def test_written_file_reads_back_exactly():
    buf = io.BytesIO()
    writer = WavWriter(buf, STEREO_8K)
    audio = _stereo(12345)
    for chunk in np.array_split(audio, 7):
        writer.write(chunk)
    writer.close()
    frames, rate, channels = _read_stdlib(buf.getvalue())
    assert (rate, channels) == (8000, 2)
    np.testing.assert_array_equal(frames, audio)
    assert len(buf.getvalue()) == HEADER_BYTES + audio.nbytes


def test_interleaved_input_and_bad_shapes():
    buf = io.BytesIO()
    writer = WavWriter(buf, STEREO_8K)
    assert writer.write(np.arange(8, dtype=np.int16)) == 16
    assert writer.frames_written == 4
    with pytest.raises(WavError):
        writer.write(np.zeros((3, 1), dtype=np.int16))
    with pytest.raises(WavError):
        writer.write(np.zeros(3, dtype=np.int16))
    writer.close()
    with pytest.raises(WavError):
        writer.write(np.zeros((1, 2), dtype=np.int16))


def test_header_tracks_audio_within_one_interval():
    """What a crash would leave: the header alone must cover all but the last interval."""
    buf = io.BytesIO()
    writer = WavWriter(buf, STEREO_8K, header_interval_frames=4000)  # 0.5 s
    audio = _stereo(8000 * 3 + 160)
    for start in range(0, len(audio), 160):  # 20 ms chunks, no close()
        writer.write(audio[start:start + 160])
        snapshot = buf.getvalue()
        frames, _, _ = _read_stdlib(snapshot)
        written = start + len(audio[start:start + 160])
        assert written - len(frames) < 4000
        np.testing.assert_array_equal(frames, audio[: len(frames)])


@settings(max_examples=60, deadline=None)
@given(chunks=st.lists(st.integers(1, 900), min_size=1, max_size=25),
       cut=st.floats(0.0, 1.0), interval=st.integers(1, 5000))
def test_repair_after_cut_at_any_byte_recovers_every_whole_frame(chunks, cut, interval):
    buf = io.BytesIO()
    writer = WavWriter(buf, STEREO_8K, header_interval_frames=interval)
    audio = _stereo(sum(chunks), seed=len(chunks))
    pos = 0
    for n in chunks:
        writer.write(audio[pos:pos + n])
        pos += n
    data = buf.getvalue()
    killed = io.BytesIO(data[: HEADER_BYTES + int(cut * (len(data) - HEADER_BYTES))])
    result = repair_file(killed)
    expected = (len(killed.getvalue()) - HEADER_BYTES) // 4
    assert result.info.frames == expected
    frames, _, _ = _read_stdlib(killed.getvalue())
    np.testing.assert_array_equal(frames, audio[:expected])
    # A second repair finds nothing to do.
    assert repair_file(killed).changed is False


def test_repair_on_disk_drops_partial_frame(tmp_path):
    path = tmp_path / "call.wav"
    with open(path, "wb", buffering=0) as f:
        writer = WavWriter(f, STEREO_8K)
        writer.write(_stereo(1000))
        f.write(b"\x01\x02\x03")  # a frame cut in the middle by the kill
    result = repair(path)
    assert result.changed and result.info.frames == 1000
    assert path.stat().st_size == HEADER_BYTES + 4000
    frames, fmt = read_frames(path)
    assert fmt == STEREO_8K and frames.shape == (1000, 2)
    np.testing.assert_array_equal(frames, _stereo(1000))


def test_repair_short_file_needs_fallback(tmp_path):
    path = tmp_path / "short.wav"
    path.write_bytes(b"RIFF\x00\x00")
    with pytest.raises(WavError):
        repair(path)
    result = repair(path, fallback=WavFormat(16000, 2))
    assert result.changed and result.info.frames == 0
    with wave.open(str(path)) as wav:
        assert wav.getframerate() == 16000 and wav.getnframes() == 0


def test_repair_refuses_foreign_files(tmp_path):
    path = tmp_path / "x.wav"
    path.write_bytes(b"ID3" + bytes(100))
    with pytest.raises(WavError):
        repair(path, fallback=STEREO_8K)
    assert path.read_bytes() == b"ID3" + bytes(100)  # untouched


def test_read_info_clamps_to_file_length():
    buf = io.BytesIO()
    writer = WavWriter(buf, STEREO_8K, header_interval_frames=10)
    writer.write(_stereo(100))
    truncated = io.BytesIO(buf.getvalue()[:-40])
    info = read_info(truncated)
    assert info.frames == 90 and info.duration_seconds == pytest.approx(90 / 8000)


def test_envelope_matches_naive_min_max():
    frames = _stereo(1003, seed=3)
    env = envelope(frames, 10)
    assert env.shape == (2, 10, 2)
    edges = (np.arange(11) * 1003) // 10
    for ch in range(2):
        for b in range(10):
            part = frames[edges[b]:edges[b + 1], ch]
            assert env[ch, b, 0] == part.min() and env[ch, b, 1] == part.max()
    assert envelope(frames[:5], 10).shape == (2, 5, 2)
    assert envelope(frames[:0], 10).shape == (2, 0, 2)


# ------------------------------------------------------------------ timeline
def _tone(n: int, value: int) -> np.ndarray:
    return np.full(n, value, dtype=np.int16)


def test_timeline_contiguous_chunks_within_tolerance():
    tl = StereoTimeline(gap_tolerance=800, max_lead=8000)
    for i in range(10):
        jitter = (-1) ** i * 100
        tl.place(0, _tone(160, 1), i * 160 + jitter)
        tl.place(1, _tone(160, 2), i * 160)
    out = tl.take()
    assert out.shape == (1600, 2)
    assert (out[:, 0] == 1).all() and (out[:, 1] == 2).all()
    assert tl.padded == [0, 0] and tl.dropped == [0, 0]


def test_timeline_gap_becomes_silence_and_tracks_stay_aligned():
    tl = StereoTimeline(gap_tolerance=800, max_lead=8000)
    tl.place(0, _tone(160, 5), 0)
    # The agent's first frame is played 1 s into the call.
    tl.place(1, _tone(160, 7), 8000)
    for i in range(1, 60):
        tl.place(0, _tone(160, 5), i * 160)
    out = tl.take(final=True)
    assert len(out) == 60 * 160  # the final take pads the agent track to the caller's length
    assert (out[:8000, 1] == 0).all() and (out[8000:8160, 1] == 7).all()
    assert (out[: 60 * 160, 0] == 5).all()
    assert tl.padded[1] == 8000 + (60 * 160 - 8160)


def test_timeline_lead_cap_drops_oldest_part():
    tl = StereoTimeline(gap_tolerance=0, max_lead=320)
    # A sender bursts 10 frames stamped at the same instant.
    for _ in range(10):
        tl.place(0, np.arange(160, dtype=np.int16), 0)
    assert tl.positions[0] == 320 + 160
    assert tl.dropped[0] == 10 * 160 - 480


def test_timeline_advance_pads_a_quiet_track():
    tl = StereoTimeline(gap_tolerance=800, max_lead=8000)
    for i in range(50):
        tl.place(1, _tone(160, 3), i * 160)
    assert len(tl.take()) == 0  # caller track silent: nothing aligned yet
    tl.advance_to(8000)
    out = tl.take()
    assert len(out) == 8000 - 800
    assert (out[:, 0] == 0).all() and (out[:, 1] == 3).all()
    # Late caller audio that fits the tolerance still lands contiguously after the padding.
    tl.place(0, _tone(160, 9), 7900)
    assert tl.positions[0] == 7200 + 160


def test_timeline_burst_after_a_stall_takes_back_the_gap():
    """A stalled reader delivers 0.9 s of caller audio at once: it belongs before the stall's
    end, not after it."""
    tl = StereoTimeline(gap_tolerance=800, max_lead=4000)
    frames = [np.full(160, k + 1, dtype=np.int16) for k in range(46)]
    tl.place(0, frames[0], 0)
    arrival = 46 * 160
    for frame in frames[1:]:
        tl.place(0, frame, arrival - 160)  # all stamped on arrival
    tl.place(1, np.zeros(arrival, dtype=np.int16), 0)
    out = tl.take()
    np.testing.assert_array_equal(out[:, 0], np.concatenate(frames))
    assert tl.reclaimed[0] == arrival - 2 * 160 and tl.padded[0] == 0 and tl.dropped[0] == 0


def test_timeline_cannot_take_back_silence_already_handed_out():
    tl = StereoTimeline(gap_tolerance=0, max_lead=320)
    tl.place(0, _tone(160, 1), 0)
    tl.place(0, _tone(160, 2), 1600)  # a gap of 1440
    tl.place(1, _tone(1760, 3), 0)
    assert len(tl.take()) == 1760  # the gap is out
    tl.place(0, _tone(160, 4), 1600)  # late audio: nothing left to take back
    assert tl.reclaimed[0] == 0 and tl.positions[0] == 1920
    for _ in range(5):  # a fast sender: capped at max_lead
        tl.place(0, _tone(160, 5), 1760)
    assert tl.positions[0] - 1920 <= 320 and tl.dropped[0] > 0


_chunk_ops = st.lists(
    st.tuples(
        st.integers(0, 1),  # channel
        st.integers(0, 400),  # length
        # Start relative to where the track is: overlap, back to back, gap, or one of the edges
        # (the tolerance itself, one past it, one sample of overlap).
        st.one_of(st.integers(-600, 900), st.sampled_from(["tolerance", "past", "overlap"])),
        st.booleans(),  # a take() after this chunk
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_chunk_ops, st.integers(0, 300), st.integers(0, 900))
def test_place_many_equals_place_one_by_one(ops, tolerance, lead):
    # The writer hands over its batches with place_many; it must leave the timeline exactly as
    # placing the chunks one at a time does: same frames out, same counters.
    one = StereoTimeline(gap_tolerance=tolerance, max_lead=lead)
    many = StereoTimeline(gap_tolerance=tolerance, max_lead=lead)
    batch: list[tuple[int, np.ndarray, int]] = []
    counter = 0
    for channel, n, offset, take in ops:
        samples = np.arange(counter, counter + n, dtype=np.int64).astype(np.int16)
        counter += n
        edges = {"tolerance": tolerance, "past": tolerance + 1, "overlap": -1}
        start = max(0, one.positions[channel] + edges.get(offset, offset))
        one.place(channel, samples, start)
        batch.append((channel, samples, start))
        if take:
            many.place_many(batch)
            batch = []
            assert np.array_equal(one.take(), many.take())
    many.place_many(batch)
    assert np.array_equal(one.take(final=True), many.take(final=True))
    for name in ("positions", "padded", "reclaimed", "dropped", "emitted"):
        assert getattr(one, name) == getattr(many, name), name
