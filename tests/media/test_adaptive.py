"""The default noise suppression never makes a call worse: judged by PESQ and STOI on the recorded
speech of the fixtures, clean and behind multi-talker babble, and by what it does to steady noise."""

from __future__ import annotations

import numpy as np
import pytest
from pesq import pesq
from pystoi import stoi

from bench.media.signals import SNRS_DB, SPEECH_CLIPS, Condition, make_condition
from media.chain import InboundChain
from media.noise import DEFAULT_SUPPRESSION, AdaptiveSuppressor, NoiseSuppressor, make_suppressor

RATE = 8000
FRAME = 160
# The goal, per condition: never below the unprocessed input (STOI within its own noise), and
# clean speech within 0.05 PESQ of it.
CELL_PESQ = 0.0
CELL_STOI = -0.002
CLEAN_PESQ_LOSS = 0.05


def suppress(s: NoiseSuppressor, x: np.ndarray, frame: int = FRAME) -> np.ndarray:
    """Stream ``x`` through ``s`` in frames and return the output with its latency removed."""
    delay = round(s.latency_seconds * s.rate_hz)
    padded = np.concatenate((x, np.zeros(-len(x) % frame + frame * (delay // frame + 1), np.int16)))
    out = np.concatenate([s.process(padded[i : i + frame]) for i in range(0, len(padded), frame)])
    return out[delay : delay + len(x)]


def change(condition: Condition) -> tuple[float, float]:
    """PESQ-NB and STOI of the default suppressor's output minus those of its input."""
    received = condition.received.astype(np.float64)
    out = suppress(make_suppressor(DEFAULT_SUPPRESSION, RATE), condition.received).astype(np.float64)
    ref = condition.reference
    return (
        pesq(RATE, ref, out, "nb") - pesq(RATE, ref, received, "nb"),
        stoi(ref, out, RATE) - stoi(ref, received, RATE),
    )


def shares(s: AdaptiveSuppressor, x: np.ndarray) -> np.ndarray:
    """The wet share after each 20 ms frame."""
    out = []
    for i in range(0, len(x) - FRAME + 1, FRAME):
        s.process(x[i : i + FRAME])
        out.append(s.wet_share)
    return np.array(out)


def test_the_default_is_adaptive() -> None:
    assert DEFAULT_SUPPRESSION == "adaptive"
    assert isinstance(make_suppressor(DEFAULT_SUPPRESSION, RATE), AdaptiveSuppressor)


@pytest.mark.parametrize("clip", range(len(SPEECH_CLIPS)))
def test_clean_speech_is_left_as_it_came(clip: int) -> None:
    dp, ds = change(make_condition(clip, SPEECH_CLIPS[clip], "clean", None))
    assert dp >= -CLEAN_PESQ_LOSS, dp
    assert ds >= CELL_STOI, ds


@pytest.mark.parametrize("snr_db", SNRS_DB)
@pytest.mark.parametrize("clip", range(len(SPEECH_CLIPS)))
def test_babble_is_never_made_worse(clip: int, snr_db: float) -> None:
    dp, ds = change(make_condition(clip, SPEECH_CLIPS[clip], "babble", snr_db))
    assert dp >= CELL_PESQ, dp
    assert ds >= CELL_STOI, ds


@pytest.mark.parametrize(("kind", "snr_db"), [("white", 5), ("pink", 10), ("hum", 0), ("white", 20)])
def test_steady_noise_is_suppressed(kind: str, snr_db: float) -> None:
    # Speex alone gains 0.40-0.84 PESQ on these (bench/media); starting dry costs a little of it.
    dp, ds = change(make_condition(1, SPEECH_CLIPS[1], kind, snr_db))
    assert dp >= 0.3, dp
    assert ds >= CELL_STOI, ds


@pytest.mark.parametrize("kind", ["clean", "babble"])
def test_default_chain_passes_clean_and_babble_lines_through_untouched(kind: str) -> None:
    """On these lines the default chain's output is the unsuppressed chain's, sample for sample,
    only later by the suppressor's 10 ms: nothing at all is taken from the caller."""
    received = make_condition(0, SPEECH_CLIPS[0], kind, None if kind == "clean" else 5).received
    default, plain = InboundChain(RATE), InboundChain(RATE, suppression="off")
    frames = range(0, len(received) - FRAME + 1, FRAME)
    out = np.concatenate([default.process(received[i : i + FRAME]) for i in frames])
    ref = np.concatenate([plain.process(received[i : i + FRAME]) for i in frames])
    lag = round((default.latency_seconds - plain.latency_seconds) * 24000)
    assert lag == 240
    assert np.array_equal(out[lag:], ref[:-lag])


def test_the_line_is_judged_within_seconds_and_the_mix_moves_gently() -> None:
    noisy = make_condition(1, SPEECH_CLIPS[1], "white", 10).received
    s = make_suppressor(DEFAULT_SUPPRESSION, RATE)
    assert isinstance(s, AdaptiveSuppressor)
    trace = shares(s, noisy)
    assert trace[: 50 * 500 // 1000].max() == 0.0  # dry until the first judgement (0.5 s)
    assert trace[50 * 2 :].min() == 1.0  # all Speex from 2 s on
    assert np.abs(np.diff(trace)).max() <= 0.04 + 1e-12  # 2 % per 10 ms block at most
    for kind, snr in (("clean", None), ("babble", 0), ("babble", 20)):
        s.reset()
        assert shares(s, make_condition(0, SPEECH_CLIPS[0], kind, snr).received).max() == 0.0


def test_frame_size_and_reset_do_not_change_the_output() -> None:
    # Steady noise: the judgements and the ramp fall inside these 3 s.
    x = make_condition(1, SPEECH_CLIPS[1], "pink", 5).received[: RATE * 3]
    outs = [suppress(make_suppressor(DEFAULT_SUPPRESSION, RATE), x, frame) for frame in (80, 160, 480)]
    assert np.array_equal(outs[0], outs[1])
    assert np.array_equal(outs[0], outs[2])
    s = make_suppressor(DEFAULT_SUPPRESSION, RATE)
    suppress(s, x[::-1].copy())
    s.reset()
    assert np.array_equal(suppress(s, x), outs[1])


def test_compiled_block_levels_equal_numpy_and_refuse_bad_input(monkeypatch) -> None:
    import media.noise
    from media._native import block_levels

    assert media.noise._BLOCK_LEVELS is block_levels  # the compiled module is built (see test_resample)
    x = make_condition(0, SPEECH_CLIPS[0], "white", 10).received[: RATE * 2]
    assert np.allclose(block_levels(x, 80), media.noise._block_levels(x, 80), rtol=0, atol=1e-9)
    assert np.allclose(block_levels(x[::2], 80), media.noise._block_levels(x[::2].copy(), 80), rtol=0, atol=1e-9)
    compiled = suppress(make_suppressor(DEFAULT_SUPPRESSION, RATE), x)
    monkeypatch.setattr(media.noise, "_BLOCK_LEVELS", None)
    assert np.array_equal(compiled, suppress(make_suppressor(DEFAULT_SUPPRESSION, RATE), x))
    with pytest.raises(ValueError, match="whole number"):
        block_levels(x[:100], 80)
    with pytest.raises(ValueError, match="positive"):
        block_levels(x, 0)
    with pytest.raises(TypeError, match="int16"):
        block_levels(x.astype(np.float32), 80)


@pytest.mark.parametrize("talkers", [2, 3, 4])
def test_babble_of_other_mixes_and_starts_stays_untouched(talkers: int) -> None:
    """Beyond the benchmark's one babble per clip: other talkers, other starting points, each
    SNR. Babble heard for a moment can look steady, so a brief, small share is tolerated; over a
    call the share stays near zero."""
    from scipy import signal

    from bench.media.signals import _CHANNEL_BAND, active_level, babble, mulaw_channel, speech

    for seed in range(3):
        for clip in SPEECH_CLIPS:
            clean = speech(clip)
            rng = np.random.default_rng(500 + 10 * seed + talkers)
            noise = signal.sosfiltfilt(_CHANNEL_BAND, babble(len(clean), clip, rng, talkers))
            noise *= active_level(clean) / np.sqrt(np.mean(noise**2))
            for snr_db in (0, 10, 20, 30):
                s = make_suppressor(DEFAULT_SUPPRESSION, RATE)
                assert isinstance(s, AdaptiveSuppressor)
                trace = shares(s, mulaw_channel(clean + noise * 10 ** (-snr_db / 20)))
                assert trace.mean() <= 0.01, (seed, clip, snr_db, trace.mean())
                assert trace.max() <= 0.6, (seed, clip, snr_db, trace.max())
