"""StreamResampler measured on the audio it produces: timing, frequency response, aliasing, clicks."""

from __future__ import annotations

import numpy as np
import pytest

from media.resample import ResampleError, StreamResampler, zero_stuff

TELEPHONY_PAIRS = [(8000, 24000), (24000, 8000), (16000, 24000), (24000, 16000), (8000, 16000), (16000, 8000)]
FRAME_SECONDS = 0.020


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
def test_every_20ms_frame_gives_20ms_out_with_low_latency(in_rate: int, out_rate: int) -> None:
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
def test_odd_chunks_total_exactly_and_carry_the_remainder(in_rate: int, out_rate: int) -> None:
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
def test_tone_level_frequency_and_delay_are_preserved(in_rate: int, out_rate: int) -> None:
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
def test_streaming_matches_one_shot(in_rate: int, out_rate: int) -> None:
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


def test_reset_forgets_history_and_flush_emits_the_tail() -> None:
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


def test_bad_input_is_refused_with_a_clear_error() -> None:
    r = StreamResampler(8000, 24000)
    with pytest.raises(ResampleError):
        r.process(np.zeros((2, 160), dtype=np.int16))
    with pytest.raises(ResampleError):
        r.process(np.zeros(160, dtype=np.float32))
    with pytest.raises(ResampleError):
        StreamResampler(0, 8000)
    assert len(r.process(np.zeros(0, dtype=np.int16))) == 0


def test_zero_stuffing_then_image_filter_equals_interpolation() -> None:
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
