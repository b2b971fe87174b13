"""Noise suppressors judged by the audio they produce: PESQ/STOI on recorded speech, delay, framing."""

from __future__ import annotations

import os

import numpy as np
import pytest
from pesq import pesq
from pystoi import stoi

from media import g711
from media.noise import (
    NoiseSuppressor,
    PassthroughSuppressor,
    SpeexDspSuppressor,
    SpeexSuppressor,
    SuppressorError,
    make_suppressor,
    speexdsp_available,
    working_rate_hz,
)
from tests.conftest import load_wav

RATE = 8000
# "speex" is whatever make_suppressor picks (libspeexdsp at the caller's rate where installed);
# "speex-wheel" is the pyspeex-noise fallback at 16 kHz, tested beside it.
WHEEL = "speex-wheel"


def build(mode: str, rate: int, level_db: int = -25) -> NoiseSuppressor:
    if mode == WHEEL:
        return SpeexSuppressor(rate, level_db)
    return make_suppressor(mode, rate, level_db)


@pytest.fixture(scope="module")
def clean(fixtures_dir) -> np.ndarray:
    samples, rate = load_wav(fixtures_dir / "speech" / "real_cmu_8k.wav")
    assert rate == RATE
    return samples.astype(np.float64)


@pytest.fixture(scope="module")
def white(fixtures_dir) -> np.ndarray:
    samples, _ = load_wav(fixtures_dir / "noise" / "white_8k.wav")
    return samples.astype(np.float64)


def phone_line(x: np.ndarray) -> np.ndarray:
    pcm = np.clip(np.rint(x), -32768, 32767).astype(np.int16)
    return g711.ulaw_decode(g711.ulaw_encode(pcm))


def at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    noise = noise[: len(speech)]
    gain = np.sqrt(np.mean(speech**2) / np.mean(noise**2)) * 10 ** (-snr_db / 20)
    return speech + gain * noise


def suppress(s: NoiseSuppressor, x: np.ndarray, frame_ms: int = 20) -> np.ndarray:
    """Stream through ``s`` in frames and return the output with its latency removed."""
    n = s.rate_hz * frame_ms // 1000
    delay = round(s.latency_seconds * s.rate_hz)
    padded = np.concatenate((x, np.zeros(-len(x) % n + n * (delay // n + 1), np.int16)))
    out = np.concatenate([s.process(padded[i : i + n]) for i in range(0, len(padded), n)])
    return out[delay : delay + len(x)].astype(np.float64)


def lag(reference: np.ndarray, processed: np.ndarray, max_lag: int = 400) -> int:
    n = len(reference) - max_lag
    return int(np.argmax([np.dot(reference[:n], processed[d : d + n]) for d in range(max_lag)]))


@pytest.mark.parametrize(("mode", "min_gain"), [("speex", 0.4), (WHEEL, 0.4), ("webrtc", 0.15)])
def test_suppressor_improves_noisy_speech(clean, white, mode: str, min_gain: float) -> None:
    received = phone_line(at_snr(clean, white, 5.0))
    out = suppress(build(mode, RATE), received)
    before = pesq(RATE, clean, received.astype(np.float64), "nb")
    after = pesq(RATE, clean, out, "nb")
    assert after - before >= min_gain, (before, after)
    assert stoi(clean, out, RATE) >= stoi(clean, received.astype(np.float64), RATE) - 0.01


@pytest.mark.parametrize(("mode", "min_pesq"), [("speex", 4.0), (WHEEL, 4.0), ("webrtc", 4.2), ("off", 4.4)])
def test_suppressor_does_not_harm_clean_speech(clean, mode: str, min_pesq: float) -> None:
    received = phone_line(clean)
    out = suppress(build(mode, RATE), received)
    assert pesq(RATE, clean, out, "nb") >= min_pesq
    assert stoi(clean, out, RATE) >= 0.975


@pytest.mark.parametrize("mode", ["adaptive", "speex", WHEEL, "webrtc"])
@pytest.mark.parametrize("rate", [8000, 16000])
def test_reported_latency_is_the_real_delay(fixtures_dir, mode: str, rate: int) -> None:
    speech, got_rate = load_wav(fixtures_dir / "speech" / f"real_libri1_{rate // 1000}k.wav")
    assert got_rate == rate
    rng = np.random.default_rng(2)
    x = np.clip(speech[: rate * 4] + rng.normal(0, 150, rate * 4), -32768, 32767).astype(np.int16)
    s = build(mode, rate)
    n = rate // 50
    out = np.concatenate([s.process(x[i : i + n]) for i in range(0, len(x), n)])
    assert len(out) == len(x)
    assert lag(x.astype(np.float64), out.astype(np.float64)) == round(s.latency_seconds * rate)
    assert s.latency_seconds <= 0.012


def test_steady_noise_is_pushed_down_by_the_configured_depth(white) -> None:
    noise = phone_line(white[: RATE * 6] * 0.3)
    residual = {}
    for level in (-15, -30):
        out = suppress(make_suppressor("speex", RATE, level), noise)[RATE * 3 :]
        residual[level] = 10 * np.log10(np.mean(out**2) / np.mean(noise[RATE * 3 :].astype(np.float64) ** 2))
    assert residual[-15] < -10
    assert residual[-30] < min(-18, residual[-15] - 5)


@pytest.mark.parametrize("mode", ["adaptive", "speex", WHEEL, "webrtc"])
def test_frame_size_does_not_change_the_output(clean, mode: str) -> None:
    x = phone_line(clean[: RATE * 2])
    outs = [suppress(build(mode, RATE), x, frame_ms) for frame_ms in (10, 20, 60)]
    assert np.array_equal(outs[0], outs[1])
    assert np.array_equal(outs[0], outs[2])


@pytest.mark.parametrize("mode", ["adaptive", "speex", WHEEL, "webrtc"])
def test_reset_starts_over(clean, mode: str) -> None:
    x = phone_line(clean[:RATE])
    s = build(mode, RATE)
    suppress(s, phone_line(clean[RATE : RATE * 3]))
    s.reset()
    assert np.array_equal(suppress(s, x), suppress(build(mode, RATE), x))


def test_off_and_model_leave_audio_alone() -> None:
    x = np.arange(-800, 800, dtype=np.int16)
    off = make_suppressor("off", RATE)
    model = make_suppressor("model", 16000)
    assert isinstance(off, PassthroughSuppressor) and isinstance(model, PassthroughSuppressor)
    assert off.latency_seconds == model.latency_seconds == 0
    assert np.array_equal(off.process(x), x)
    assert np.array_equal(model.process(x), x)
    assert not off.model_noise_reduction
    assert model.model_noise_reduction and model.mode == "model"


def test_all_modes_satisfy_the_protocol() -> None:
    for mode in ("adaptive", "off", "speex", "webrtc", "model"):
        for rate in (8000, 16000):
            s = make_suppressor(mode, rate)
            assert isinstance(s, NoiseSuppressor)
            assert s.rate_hz == rate
            assert len(s.process(np.zeros(rate // 50, np.int16))) == rate // 50


def test_bad_configuration_and_frames_are_refused() -> None:
    with pytest.raises(SuppressorError, match="unknown noise suppression mode"):
        make_suppressor("rnnoise", RATE)
    with pytest.raises(SuppressorError):
        make_suppressor("speex", 24000)
    with pytest.raises(SuppressorError):
        make_suppressor("speex", RATE, level_db=5)
    with pytest.raises(SuppressorError):
        make_suppressor("adaptive", RATE, level_db=0)
    adaptive = make_suppressor("adaptive", RATE)
    with pytest.raises(SuppressorError, match="multiple of 10 ms"):
        adaptive.process(np.zeros(100, np.int16))
    assert len(adaptive.process(np.zeros(160, np.int16))) == 160
    s = make_suppressor("speex", RATE)
    with pytest.raises(SuppressorError, match="multiple of 10 ms"):
        s.process(np.zeros(100, np.int16))
    with pytest.raises(SuppressorError):
        s.process(np.zeros(160, np.float32))
    # A refused frame leaves the suppressor usable.
    assert len(s.process(np.zeros(160, np.int16))) == 160


def test_speex_runs_on_libspeexdsp_at_the_callers_rate_where_installed() -> None:
    # CI installs the library (.ci/system-deps): there the fast engine must be the one in use.
    if os.environ.get("CI") == "true":
        assert speexdsp_available()
    if not speexdsp_available():
        assert isinstance(make_suppressor("speex", RATE), SpeexSuppressor)
        assert working_rate_hz("speex", RATE) == 16000
        return
    for rate in (8000, 16000):
        s = make_suppressor("speex", rate, -17)
        assert isinstance(s, SpeexDspSuppressor)
        assert working_rate_hz("speex", rate) == rate
        assert s.configured_level_db == -17  # read back from the library
        assert s.latency_seconds == 0.010
    assert working_rate_hz("webrtc", RATE) == 16000


def test_libspeexdsp_engine_takes_long_chunks_and_frees_its_state(clean) -> None:
    if not speexdsp_available():
        pytest.skip("libspeexdsp is not installed")
    x = phone_line(clean[: RATE * 2])
    whole = SpeexDspSuppressor(RATE).process(x[: RATE])  # 1 s at once: the buffer grows
    s = SpeexDspSuppressor(RATE)
    framed = np.concatenate([s.process(x[i : i + 160]) for i in range(0, RATE, 160)])
    assert np.array_equal(whole, framed)
    # Each suppressor's state is destroyed with it (and on reset): many calls do not pile up.
    before = _rss_kb()
    for _ in range(3000):
        t = SpeexDspSuppressor(RATE)
        t.process(x[:160])
        t.reset()
    assert _rss_kb() - before < 20_000


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_libspeexdsp_through_the_compiled_block_loop_equals_ctypes_calls(clean, monkeypatch) -> None:
    if not speexdsp_available():
        pytest.skip("libspeexdsp is not installed")
    import media.noise

    assert media.noise._RUN_BLOCKS is not None  # the compiled module is built (see test_resample)
    x = phone_line(clean[: RATE * 2])
    compiled = suppress(SpeexDspSuppressor(RATE), x)
    strided = SpeexDspSuppressor(RATE)
    wide = np.repeat(x, 2)[::2]  # a strided view of the same samples
    assert not wide.flags.c_contiguous
    assert np.array_equal(np.concatenate([strided.process(wide[i : i + 160]) for i in range(0, 1600, 160)]),
                          SpeexDspSuppressor(RATE).process(x[:1600]))
    monkeypatch.setattr(media.noise, "_RUN_BLOCKS", None)
    assert np.array_equal(compiled, suppress(SpeexDspSuppressor(RATE), x))


def test_compiled_block_loop_refuses_what_it_cannot_run() -> None:
    from media._native import run_blocks

    x = np.zeros(160, np.int16)
    with pytest.raises(ValueError, match="whole number"):
        run_blocks(1, 1, x[:100], 80)
    with pytest.raises(ValueError, match="positive"):
        run_blocks(1, 1, x, 0)
    with pytest.raises(ValueError, match="function and a state"):
        run_blocks(0, 1, x, 80)
    with pytest.raises(TypeError, match="int16"):
        run_blocks(1, 1, x.astype(np.float32), 80)
    with pytest.raises(TypeError):
        run_blocks(1, 1, x)  # type: ignore[call-arg]
