"""StreamResampler measured on the audio it produces: timing, frequency response, aliasing, clicks."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from media import resample
from media.resample import ResampleError, StreamResampler, zero_stuff

TELEPHONY_PAIRS = [(8000, 24000), (24000, 8000), (16000, 24000), (24000, 16000), (8000, 16000), (16000, 8000)]
FRAME_SECONDS = 0.020
# The inbound chain's 16 -> 24 kHz stage after zero stuffing and suppression (media.chain).
CHAIN_STAGE = {"passband_hz": 3400.0, "stopband_hz": 4600.0, "gain": 2.0}


@pytest.fixture(params=["native", "numpy"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test once on the compiled filter loop and once on the numpy reference."""
    if request.param == "numpy":
        monkeypatch.setattr(resample, "_NATIVE_POLYPHASE", None)
    return str(request.param)


def numpy_resampler(in_rate: int, out_rate: int, **options: float) -> StreamResampler:
    saved = resample._NATIVE_POLYPHASE
    resample._NATIVE_POLYPHASE = None
    try:
        return StreamResampler(in_rate, out_rate, **options)
    finally:
        resample._NATIVE_POLYPHASE = saved


def tone(freq_hz: float, rate_hz: int, seconds: float, amplitude: float = 10000.0, delay: float = 0.0):
    t = np.arange(round(rate_hz * seconds)) / rate_hz - delay
    return amplitude * np.sin(2 * np.pi * freq_hz * t)


def stream(resampler: StreamResampler, samples: np.ndarray, chunk: int) -> np.ndarray:
    parts = [resampler.process(samples[i : i + chunk]) for i in range(0, len(samples), chunk)]
    return np.concatenate(parts)


def band_power_db(x: np.ndarray, rate_hz: int, lo_hz: float, hi_hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate_hz)
    band = spectrum[(freqs >= lo_hz) & (freqs <= hi_hz)].sum()
    return 10 * np.log10(band + 1e-30)


def rms_db(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(np.square(x.astype(np.float64)))) + 1e-30)


@pytest.mark.parametrize(("in_rate", "out_rate"), TELEPHONY_PAIRS)
def test_every_20ms_frame_gives_20ms_out_with_low_latency(in_rate: int, out_rate: int, implementation: str) -> None:
    r = StreamResampler(in_rate, out_rate)
    assert 0 < r.latency_seconds <= 0.005
    x = tone(1000, in_rate, 1.0).astype(np.int16)
    n_in, n_out = round(in_rate * FRAME_SECONDS), round(out_rate * FRAME_SECONDS)
    lengths = [len(r.process(x[i : i + n_in])) for i in range(0, len(x), n_in)]
    assert lengths == [n_out] * 50
    # The first frame already carries audio: nothing is held back beyond the filter delay.
    r.reset()
    first = r.process(x[:n_in])
    assert np.abs(first[round(out_rate * (r.latency_seconds + 0.002)) :]).max() > 5000


@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 24000), (24000, 8000), (16000, 8000)])
def test_odd_chunks_total_exactly_and_carry_the_remainder(in_rate: int, out_rate: int, implementation: str) -> None:
    r = StreamResampler(in_rate, out_rate)
    rng = np.random.default_rng(1)
    total_in = total_out = 0
    for size in rng.integers(1, 700, size=200):
        out = r.process(np.zeros(int(size), dtype=np.int16))
        total_in += int(size)
        total_out += len(out)
        expected = total_in * out_rate / in_rate
        assert expected - 1 < total_out <= expected + 1e-9


@pytest.mark.parametrize(("in_rate", "out_rate"), TELEPHONY_PAIRS)
def test_tone_level_frequency_and_delay_are_preserved(in_rate: int, out_rate: int, implementation: str) -> None:
    r = StreamResampler(in_rate, out_rate)
    for freq in (300.0, 1000.0, 2500.0, 3400.0):
        r.reset()
        x = tone(freq, in_rate, 0.5)
        y = stream(r, np.rint(x).astype(np.int16), round(in_rate * FRAME_SECONDS)).astype(np.float64)
        # The output must be the same sine delayed by exactly the reported latency: this checks
        # gain (passband flatness), frequency, the latency figure and clicks at frame edges at once.
        expected = tone(freq, out_rate, 0.5, delay=r.latency_seconds)
        steady = slice(round(out_rate * 0.05), len(y))
        err = y[steady] - expected[steady]
        snr_db = rms_db(expected[steady]) - rms_db(err)
        assert snr_db > 55, (freq, snr_db)
        gain_db = rms_db(y[steady]) - rms_db(expected[steady])
        assert abs(gain_db) < 0.5, (freq, gain_db)
        peak_hz = np.fft.rfftfreq(len(y[steady]), 1 / out_rate)[np.argmax(np.abs(np.fft.rfft(y[steady])))]
        assert abs(peak_hz - freq) <= out_rate / len(y[steady])


@pytest.mark.parametrize("freq", [4000.0, 4300.0, 5000.0, 7000.0, 9000.0, 11500.0])
def test_no_aliasing_above_4khz_going_down_to_8khz(freq: float) -> None:
    r = StreamResampler(24000, 8000)
    x = np.rint(tone(freq, 24000, 0.5)).astype(np.int16)
    y = stream(r, x, 480)[400:]
    # Whatever comes out is an alias (nothing above 4 kHz exists at 8 kHz): 60 dB below the tone,
    # and rounding to int16 sets the floor near -90 dB here.
    assert rms_db(y) < rms_db(x) - 60, (freq, rms_db(y) - rms_db(x))


def test_no_aliasing_of_noise_above_4khz_going_down_to_8khz() -> None:
    rng = np.random.default_rng(7)
    n = 24000
    spectrum = np.fft.rfft(rng.normal(0, 6000, n))
    spectrum[np.fft.rfftfreq(n, 1 / 24000) < 4000] = 0
    noise = np.fft.irfft(spectrum, n)
    noise = np.rint(noise / np.abs(noise).max() * 20000).astype(np.int16)
    # Skip the first 12.5 ms: switching the noise on is itself a broadband step.
    y = stream(StreamResampler(24000, 8000), noise, 480)[100:]
    assert rms_db(y) < rms_db(noise) - 60


@pytest.mark.parametrize(("in_rate", "out_rate", "band_top"), [(8000, 24000, 3400), (16000, 24000, 6800)])
def test_images_are_at_least_60db_down_going_up(in_rate: int, out_rate: int, band_top: float) -> None:
    r = StreamResampler(in_rate, out_rate)
    for freq in (200.0, 1000.0, band_top * 0.6, band_top):
        r.reset()
        x = np.rint(tone(freq, in_rate, 0.5)).astype(np.int16)
        y = stream(r, x, round(in_rate * FRAME_SECONDS)).astype(np.float64)[200:]
        wanted = band_power_db(y, out_rate, 0, in_rate / 2)
        images = band_power_db(y, out_rate, in_rate / 2, out_rate / 2)
        assert images < wanted - 60, (freq, images - wanted)


def test_passband_is_flat_for_noise() -> None:
    rng = np.random.default_rng(3)
    x = np.rint(rng.normal(0, 3000, 8000 * 4)).astype(np.int16)
    up = stream(StreamResampler(8000, 24000), x, 160)
    down = stream(StreamResampler(24000, 8000), up, 480).astype(np.float64)
    ref = x.astype(np.float64)
    # Round trip 8 -> 24 -> 8 kHz: compare band powers in the phone band, 100 Hz wide bands.
    for lo in range(200, 3400, 100):
        delta = band_power_db(down, 8000, lo, lo + 100) - band_power_db(ref, 8000, lo, lo + 100)
        assert abs(delta) < 0.5, (lo, delta)


@pytest.mark.parametrize(("in_rate", "out_rate"), TELEPHONY_PAIRS)
def test_streaming_matches_one_shot(in_rate: int, out_rate: int, implementation: str) -> None:
    rng = np.random.default_rng(5)
    x = np.rint(rng.normal(0, 4000, in_rate)).astype(np.int16)
    one_shot = StreamResampler(in_rate, out_rate).process(x)
    r = StreamResampler(in_rate, out_rate)
    parts, i = [], 0
    for size in rng.integers(1, 900, size=10_000):
        if i >= len(x):
            break
        parts.append(r.process(x[i : i + int(size)]))
        i += int(size)
    streamed = np.concatenate(parts)
    assert len(streamed) == len(one_shot)
    assert np.abs(streamed.astype(np.int32) - one_shot).max() <= 1
    if implementation == "native":
        # Each output sums the same products in the same order whatever the chunking.
        assert np.array_equal(streamed, one_shot)


def test_reset_forgets_history_and_flush_emits_the_tail(implementation: str) -> None:
    r = StreamResampler(8000, 24000)
    x = np.rint(tone(1000, 8000, 0.1)).astype(np.int16)
    r.process(x)
    r.reset()
    fresh = StreamResampler(8000, 24000)
    assert np.array_equal(r.process(x), fresh.process(x))
    # An impulse in the last input sample only leaves the filter after the latency: flush has it.
    impulse = np.zeros(160, dtype=np.int16)
    impulse[-1] = 30000
    body = fresh.process(impulse)
    tail = fresh.flush()
    assert len(tail) >= round(fresh.latency_seconds * 24000)
    assert np.abs(tail).max() > 20000 > np.abs(body).max()
    # After flush the object starts clean.
    assert np.array_equal(fresh.process(x), StreamResampler(8000, 24000).process(x))


def test_equal_rates_are_identity() -> None:
    r = StreamResampler(8000, 8000)
    x = np.arange(-500, 500, dtype=np.int16)
    assert r.latency_seconds == 0
    assert np.array_equal(r.process(x), x)
    assert len(r.flush()) == 0


def test_other_pairs_go_through_soxr_steadily() -> None:
    r = StreamResampler(44100, 8000)
    x = np.rint(tone(1000, 44100, 1.0)).astype(np.int16)
    lengths = [len(r.process(x[i : i + 882])) for i in range(0, len(x), 882)]
    assert lengths == [160] * 50
    y = stream(StreamResampler(44100, 8000), x, 882)[800:].astype(np.float64)
    peak_hz = np.fft.rfftfreq(len(y), 1 / 8000)[np.argmax(np.abs(np.fft.rfft(y)))]
    assert abs(peak_hz - 1000) < 8000 / len(y) * 1.5
    assert abs(rms_db(y) - rms_db(x[4410:])) < 0.5


def test_bad_input_is_refused_with_a_clear_error(implementation: str) -> None:
    r = StreamResampler(8000, 24000)
    with pytest.raises(ResampleError):
        r.process(np.zeros((2, 160), dtype=np.int16))
    with pytest.raises(ResampleError):
        r.process(np.zeros(160, dtype=np.float32))
    with pytest.raises(ResampleError):
        StreamResampler(0, 8000)
    assert len(r.process(np.zeros(0, dtype=np.int16))) == 0


def test_zero_stuffing_then_image_filter_equals_interpolation(implementation: str) -> None:
    x = np.rint(tone(1000, 8000, 0.5)).astype(np.int16)
    stuffed = zero_stuff(x)
    assert len(stuffed) == 2 * len(x)
    assert np.array_equal(stuffed[::2], x) and not stuffed[1::2].any()
    # The stage after the stuffing removes the image (from 4.6 kHz) and restores the level.
    after = StreamResampler(16000, 24000, passband_hz=3400, stopband_hz=4600, gain=2.0)
    y = stream(after, stuffed, 320).astype(np.float64)[1200:]
    expected = tone(1000, 24000, 0.5, delay=after.latency_seconds)[1200:]
    assert rms_db(expected) - rms_db(y - expected) > 55
    assert band_power_db(y, 24000, 4600, 12000) < band_power_db(y, 24000, 0, 4000) - 60


def test_custom_filters_are_only_for_the_polyphase_path() -> None:
    with pytest.raises(ResampleError):
        StreamResampler(8000, 8000, gain=2.0)
    with pytest.raises(ResampleError):
        StreamResampler(44100, 8000, stopband_hz=4000)
    with pytest.raises(ResampleError):
        zero_stuff(np.zeros(4, np.float32))


# --------------------------------------------------------------------------- compiled filter loop
def test_the_compiled_filter_loop_is_built_and_used() -> None:
    """This install must have media._native: a failed build would otherwise pass unnoticed on numpy."""
    from media import _native

    assert resample.NATIVE
    r = StreamResampler(16000, 24000, **CHAIN_STAGE)
    assert isinstance(r._native, _native.Polyphase)
    assert r._impl is None
    assert numpy_resampler(16000, 24000)._native is None


def _signal(rng: np.random.Generator, n: int) -> np.ndarray:
    """Noise at speech-like levels with bursts of full-scale square wave, which clip a gain-2 stage."""
    x = rng.normal(0, 6000, n)
    for start in rng.integers(0, n - 400, size=n // 4000):
        x[start : start + 400] = np.where(np.arange(400) % 20 < 10, 32767, -32768)
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


EQUIVALENCE_CASES = [(a, b, {}) for a, b in TELEPHONY_PAIRS] + [(16000, 24000, CHAIN_STAGE)]


@pytest.mark.parametrize(("in_rate", "out_rate", "options"), EQUIVALENCE_CASES)
def test_native_and_numpy_agree_within_one_lsb(in_rate: int, out_rate: int, options: dict[str, float]) -> None:
    rng = np.random.default_rng(in_rate + out_rate + len(options))
    x = _signal(rng, in_rate * 5)
    native = StreamResampler(in_rate, out_rate, **options)
    reference = numpy_resampler(in_rate, out_rate, **options)
    assert native._native is not None and reference._native is None
    assert native.latency_seconds == reference.latency_seconds
    got, want, i = [], [], 0
    while i < len(x):
        size = int(rng.integers(1, 1000))
        a, b = native.process(x[i : i + size]), reference.process(x[i : i + size])
        assert len(a) == len(b)  # the same remainder is carried
        got.append(a)
        want.append(b)
        i += size
    got.append(native.flush())
    want.append(reference.flush())
    y, ref = np.concatenate(got), np.concatenate(want)
    assert len(y) == len(ref) >= len(x) * out_rate // in_rate
    diff = np.abs(y.astype(np.int32) - ref)
    assert diff.max() <= 1
    # Only float sums landing next to a rounding boundary can differ.
    assert np.count_nonzero(diff) < len(y) // 100
    assert np.abs(ref).max() == 32767  # the clamping was exercised


@pytest.mark.parametrize(("in_rate", "out_rate", "options"), EQUIVALENCE_CASES)
def test_native_and_numpy_reset_and_flush_alike(in_rate: int, out_rate: int, options: dict[str, float]) -> None:
    rng = np.random.default_rng(11)
    x = _signal(rng, in_rate)
    native = StreamResampler(in_rate, out_rate, **options)
    reference = numpy_resampler(in_rate, out_rate, **options)

    def both(chunk: np.ndarray) -> None:
        a, b = native.process(chunk), reference.process(chunk)
        assert len(a) == len(b) and np.abs(a.astype(np.int32) - b).max(initial=0) <= 1

    # Sizes that leave a partial group pending when the ratio's M is 2 or 3.
    for size in (7, 331, 1, 479, 2):
        both(x[:size])
    native.reset()
    reference.reset()
    both(x)
    for size in (0, 1, 5, 161):
        both(x[:size])
        a, b = native.flush(), reference.flush()
        assert len(a) == len(b) > 0
        assert np.abs(a.astype(np.int32) - b).max() <= 1
    # After flush both start clean: the same as a new resampler, sample for sample.
    a = native.process(x[:500])
    assert np.array_equal(a, StreamResampler(in_rate, out_rate, **options).process(x[:500]))
    assert np.abs(a.astype(np.int32) - reference.process(x[:500])).max(initial=0) <= 1


def test_output_is_a_fresh_writable_int16_array(implementation: str) -> None:
    r = StreamResampler(8000, 24000)
    x = np.rint(tone(1000, 8000, 0.02)).astype(np.int16)
    first = r.process(x)
    assert first.dtype == np.int16 and first.flags.writeable
    kept = first.copy()
    first[:] = 0
    r.process(x)
    assert np.array_equal(first, np.zeros_like(first))
    assert np.array_equal(kept, StreamResampler(8000, 24000).process(x))


def test_any_int16_array_layout_and_other_integer_types_are_accepted(implementation: str) -> None:
    x = np.rint(tone(700, 16000, 0.1)).astype(np.int16)
    want = StreamResampler(16000, 8000).process(x)
    strided = np.zeros(2 * len(x), dtype=np.int16)
    strided[::2] = x
    for same in (strided[::2], x.astype(">i2"), x.astype(np.int32), x.tolist()):
        assert np.array_equal(StreamResampler(16000, 8000).process(same), want)
    with pytest.raises(ResampleError, match="int16"):
        StreamResampler(16000, 8000).process(x.astype(np.int32) * 4)  # out of the int16 range


def test_native_polyphase_refuses_bad_input_clearly() -> None:
    from media._native import Polyphase

    design = resample._design(24000, 8000, None, None, 1.0)
    p = Polyphase(design.group, design.up, design.down, design.lookback)
    x = np.rint(tone(500, 24000, 0.02)).astype(np.int16)
    # Raw native-endian PCM16 bytes are int16 samples too.
    assert p.process(x[:241].tobytes()) == Polyphase(design.group, 1, 3, design.lookback).process(x[:241])
    assert p.pending_input == 1
    with pytest.raises(TypeError, match="int16"):
        p.process(x.astype(np.float32))
    with pytest.raises(TypeError, match="int16"):
        p.process(x.astype(">i2"))  # not native byte order
    with pytest.raises(TypeError):
        p.process([1, 2, 3])  # type: ignore[arg-type]  # a list has no buffer
    with pytest.raises(ValueError, match="even length"):
        p.process(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="1-D"):
        p.process(np.zeros((2, 480), dtype=np.int16))
    assert p.pending_input == 1  # refused input left the stream alone
    with pytest.raises(ValueError, match="shape"):
        Polyphase(design.group, 2, 3, design.lookback)
    with pytest.raises(ValueError, match="window"):
        Polyphase(design.group, 1, 3, 10)
    with pytest.raises(TypeError, match="float"):
        Polyphase(design.group.astype(np.int32), 1, 3, design.lookback)
    bad = design.group.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        Polyphase(bad, 1, 3, design.lookback)
    with pytest.raises(ValueError):
        Polyphase(design.group, 0, 3, design.lookback)


def test_without_the_compiled_module_the_numpy_path_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "media._native", None)  # what an install without a compiler sees
    assert resample._native_polyphase() is None
