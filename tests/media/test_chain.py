"""Inbound and outbound audio chains, measured on the audio they produce."""

from __future__ import annotations

import numpy as np
import pytest
from pesq import pesq
from scipy import signal

import media.noise
from media import g711
from media.chain import ChainError, InboundChain, OutboundChain
from media.noise import SuppressorError
from media.resample import ResampleError, StreamResampler
from tests.conftest import load_wav


@pytest.fixture(scope="module")
def speech8k(fixtures_dir) -> np.ndarray:
    samples, rate = load_wav(fixtures_dir / "speech" / "real_cmu_8k.wav")
    assert rate == 8000
    return g711.ulaw_decode(g711.ulaw_encode(samples))


@pytest.fixture(params=["default", "wheel"])
def speex_engine(request, monkeypatch) -> str:
    """Each chain test runs with Speex as make_suppressor picks it and with the wheel fallback
    (as on a host without libspeexdsp: the chain zero-stuffs to 16 kHz around it)."""
    if request.param == "wheel":
        monkeypatch.setattr(media.noise, "_speexdsp", lambda: None)
    return str(request.param)


def stream(process, x: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([process(x[i : i + n]) for i in range(0, len(x), n)])


def lag(reference: np.ndarray, processed: np.ndarray, max_lag: int = 1200) -> int:
    reference = reference.astype(np.float64)
    processed = processed.astype(np.float64)
    n = len(reference) - max_lag
    return int(np.argmax([np.dot(reference[:n], processed[d : d + n]) for d in range(max_lag)]))


@pytest.mark.parametrize("suppression", ["adaptive", "speex", "webrtc", "off", "model"])
@pytest.mark.parametrize("caller_rate", [8000, 16000])
def test_inbound_is_steady_and_delayed_by_its_reported_latency(
    fixtures_dir, suppression: str, caller_rate: int, speex_engine: str
) -> None:
    speech, _ = load_wav(fixtures_dir / "speech" / f"real_libri1_{caller_rate // 1000}k.wav")
    x = speech[: caller_rate * 3]
    chain = InboundChain(caller_rate, 24000, suppression)
    assert chain.latency_seconds <= 0.015
    n = caller_rate // 50
    outs = [chain.process(x[i : i + n]) for i in range(0, len(x), n)]
    assert {len(o) for o in outs} == {480}
    # The reference: the same speech taken to 24 kHz with no delay (zero-phase, offline).
    g = np.gcd(24000, caller_rate)
    ideal = signal.resample_poly(x.astype(np.float64), 24000 // g, caller_rate // g)
    # Within one 24 kHz sample: WebRTC's high-pass filter adds a little low-frequency group delay.
    assert abs(lag(ideal, np.concatenate(outs)) - round(chain.latency_seconds * 24000)) <= 1


def test_default_inbound_chain_meets_the_latency_budget(speex_engine: str) -> None:
    chain = InboundChain(8000)
    assert chain.suppression == "adaptive"
    assert isinstance(chain.suppressor, media.noise.AdaptiveSuppressor)
    wheel = speex_engine == "wheel" or not media.noise.speexdsp_available()
    assert isinstance(chain.suppressor._inner, media.noise.SpeexSuppressor) == wheel
    assert chain.latency_seconds <= 0.015
    assert OutboundChain(24000, 8000).latency_seconds <= 0.005


@pytest.mark.parametrize("suppression", ["adaptive", "off"])
def test_inbound_output_has_no_images_above_the_phone_band(
    fixtures_dir, speech8k, suppression: str, speex_engine: str
) -> None:
    """Nothing the 8 kHz line carried comes out above 4 kHz at 24 kHz, 60 dB down at least: neither
    speech nor speech in broadband noise, whose images lie just above 4 kHz. (Noise alone, pushed
    down 25 dB by the suppressor, would measure the output's int16 rounding instead.)"""
    white, _ = load_wav(fixtures_dir / "noise" / "white_8k.wav")
    noise = white[: len(speech8k)].astype(np.float64)
    noise *= np.sqrt(np.mean(speech8k.astype(np.float64) ** 2) / np.mean(noise**2)) / np.sqrt(10)
    noisy = g711.ulaw_decode(g711.ulaw_encode(np.clip(speech8k + noise, -32768, 32767).astype(np.int16)))
    for x in (speech8k, noisy):
        out = stream(InboundChain(8000, 24000, suppression).process, x, 160).astype(np.float64)
        spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out)))) ** 2
        freqs = np.fft.rfftfreq(len(out), 1 / 24000)
        band = spectrum[freqs < 4000].sum()
        images = spectrum[freqs >= 4000].sum()
        assert 10 * np.log10(images / band) < -60


def test_inbound_then_outbound_keeps_noisy_speech_improved(fixtures_dir, speech8k, speex_engine: str) -> None:
    clean, _ = load_wav(fixtures_dir / "speech" / "real_cmu_8k.wav")
    white, _ = load_wav(fixtures_dir / "noise" / "white_8k.wav")
    noise = white[: len(clean)].astype(np.float64)
    noise *= np.sqrt(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2)) * 10 ** (-10 / 20)
    received = g711.ulaw_decode(g711.ulaw_encode(np.clip(clean + noise, -32768, 32767).astype(np.int16)))
    inbound, outbound = InboundChain(8000), OutboundChain(24000, 8000)
    padded = np.concatenate((received, np.zeros(800, np.int16)))
    out = stream(lambda f: outbound.process(inbound.process(f)), padded, 160)
    delay = round((inbound.latency_seconds + outbound.latency_seconds) * 8000)
    out = out[delay : delay + len(clean)].astype(np.float64)
    ref = clean.astype(np.float64)
    assert pesq(8000, ref, out, "nb") - pesq(8000, ref, received.astype(np.float64), "nb") > 0.4


def test_odd_chunks_are_carried_not_lost(speech8k, speex_engine: str) -> None:
    whole = InboundChain(8000)
    expected = stream(whole.process, speech8k[:8000], 160)
    chunked = InboundChain(8000)
    rng = np.random.default_rng(4)
    parts, i = [], 0
    while i < 8000:
        size = int(rng.integers(1, 300))
        parts.append(chunked.process(speech8k[i : min(i + size, 8000)]))
        i += size
    got = np.concatenate(parts)
    # Everything but the last partial 10 ms block has come out, sample for sample the same.
    assert len(expected) - 240 < len(got) <= len(expected)
    assert np.array_equal(got, expected[: len(got)])


def test_reset_starts_over(speech8k) -> None:
    chain = InboundChain(8000)
    stream(chain.process, speech8k[8000:16000], 160)
    chain.reset()
    fresh = InboundChain(8000)
    x = speech8k[:4000]
    assert np.array_equal(stream(chain.process, x, 160), stream(fresh.process, x, 160))


def test_outbound_is_steady_and_flush_returns_the_tail() -> None:
    chain = OutboundChain(24000, 8000)
    t = np.arange(24000) / 24000
    x = np.rint(8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    lengths = [len(chain.process(x[i : i + 480])) for i in range(0, len(x), 480)]
    assert lengths == [160] * 50
    tail = chain.flush()
    assert len(tail) >= round(chain.latency_seconds * 8000)
    assert np.abs(tail[:10]).max() > 1000  # the tone's last few ms, not silence


def test_passthrough_chains_are_identities() -> None:
    x = np.arange(-1000, 1000, dtype=np.int16)
    inbound = InboundChain.passthrough(8000)
    outbound = OutboundChain.passthrough(8000)
    assert inbound.is_identity and outbound.is_identity
    assert inbound.latency_seconds == outbound.latency_seconds == 0
    assert np.array_equal(inbound.process(x), x)
    assert np.array_equal(outbound.process(x), x)
    assert not InboundChain(8000).is_identity


def test_model_mode_asks_the_model_and_suppresses_nothing_locally() -> None:
    chain = InboundChain(8000, 24000, "model")
    assert chain.model_noise_reduction
    assert chain.suppressor is None
    assert chain.latency_seconds < 0.004  # the 8 -> 24 kHz filter alone
    assert not InboundChain(8000, 24000, "speex").model_noise_reduction


def test_unknown_suppression_is_refused() -> None:
    with pytest.raises(SuppressorError):
        InboundChain(8000, 24000, "loud")


def test_bad_samples_are_refused_and_the_chain_stays_usable(speech8k) -> None:
    chain = InboundChain(8000)
    with pytest.raises(ChainError):
        chain.process(np.zeros(160, np.float64))
    with pytest.raises(ChainError):
        chain.process(np.zeros((2, 160), np.int16))
    with pytest.raises(ChainError):
        OutboundChain(24000, 8000).process(np.zeros(480, np.int32))
    assert len(chain.process(speech8k[:160])) == 480


@pytest.mark.parametrize("suppression", ["adaptive", "speex", "webrtc", "off"])
@pytest.mark.parametrize("caller_rate", [8000, 16000])
def test_pcm_output_is_the_arrays_bytes(speech8k, suppression: str, caller_rate: int, speex_engine: str) -> None:
    """process_pcm (what the model is sent) gives exactly process's samples, whichever stages run,
    across whole frames, partial blocks carried over, and a reset."""
    x = speech8k[:16000] if caller_rate == 8000 else np.repeat(speech8k[:8000], 2)
    arrays, pcm = InboundChain(caller_rate, 24000, suppression), InboundChain(caller_rate, 24000, suppression)
    rng = np.random.default_rng(7)
    sizes = [caller_rate // 50] * 20 + [int(s) for s in rng.integers(1, 400, 20)] + [caller_rate // 50] * 10
    i = 0
    for k, size in enumerate(sizes):
        if k == 35:
            arrays.reset()
            pcm.reset()
        chunk = x[i : i + size]
        i += size
        assert len(chunk) == size
        expected = arrays.process(chunk)
        got = pcm.process_pcm(chunk)
        assert isinstance(got, (bytes, bytearray))
        assert bytes(got) == expected.tobytes(), f"chunk {k} of {size} samples"


def test_pcm_output_refuses_what_process_refuses() -> None:
    chain = InboundChain(8000)
    for bad in (np.zeros(160, np.float64), np.zeros((2, 160), np.int16), np.zeros(160, ">i2")):
        with pytest.raises(ChainError):
            chain.process_pcm(bad)
    assert len(chain.process_pcm(np.zeros(160, np.int16))) == 960


def test_resampler_pcm_matches_and_refuses_odd_bytes() -> None:
    rng = np.random.default_rng(3)
    a, b = StreamResampler(8000, 24000), StreamResampler(8000, 24000)
    for size in (160, 1, 37, 160, 0, 333):
        x = rng.integers(-32768, 32767, size, dtype=np.int16)
        assert bytes(b.process_pcm(x.tobytes())) == a.process(x).tobytes()
        assert bytes(b.process_pcm(bytearray(x.tobytes()))) == a.process(x).tobytes()
    with pytest.raises(ResampleError, match="even length"):
        b.process_pcm(b"\x00\x01\x02")
