"""Test signals for the media benchmark: recorded speech, noise at a set SNR, a G.711 phone channel."""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import signal

from media import g711

RATE_HZ = 8000
REPO_ROOT = Path(__file__).resolve().parents[2]
# The speech and noise recordings the test suite uses (tests/data/README.md lists their sources).
FIXTURES_DIR = REPO_ROOT / "tests" / "data"
SPEECH_CLIPS = ("real_libri1_8k.wav", "real_cmu_8k.wav")
# Every voice in the fixtures; babble behind a target clip is the sum of all the others.
VOICES = (*SPEECH_CLIPS, "ptbr_f_8k.wav", "ptbr_m_8k.wav", "en_f_8k.wav")
STATIONARY_NOISES = ("white", "pink", "hum")
NOISE_TYPES = (*STATIONARY_NOISES, "babble")
SNRS_DB = (0, 5, 10, 20)

Floats = npt.NDArray[np.float64]


def read_wav(path: Path) -> tuple[Floats, int]:
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
            raise ValueError(f"{path}: expected mono 16-bit PCM")
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        return data.astype(np.float64), wav.getframerate()


def speech(name: str) -> Floats:
    samples, rate = read_wav(FIXTURES_DIR / "speech" / name)
    if rate != RATE_HZ:
        raise ValueError(f"{name}: expected {RATE_HZ} Hz, got {rate}")
    return samples


def hum(n: int, mains_hz: float, rng: np.random.Generator) -> Floats:
    """Mains hum and buzz: the fundamental and its harmonics up to 3.4 kHz.

    A rectifier or a ground loop puts most energy in the low harmonics and an odd-harmonic buzz
    above; amplitudes fall as 1/k (odd) and 1/(2k) (even), phases are random, and each harmonic
    wanders slowly by a fraction of a hertz like real mains frequency does.
    """
    t = np.arange(n) / RATE_HZ
    drift = 0.2 * np.sin(2 * np.pi * 0.13 * t + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(mains_hz + drift) / RATE_HZ
    out = np.zeros(n)
    for k in range(1, int(3400 // mains_hz) + 1):
        amplitude = 1.0 / k if k % 2 else 0.5 / k
        out += amplitude * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    return out


def babble(n: int, target: str, rng: np.random.Generator, talkers: int | None = None) -> Floats:
    """Multi-talker babble: every voice of the fixtures but the target's (or ``talkers`` of them
    drawn at random), each at the same active level, started at a random point and looped to
    ``n`` samples, summed.

    Four talkers (one recorded, three synthetic, two languages): a café or call-centre background
    in which single words still surface now and then, the hardest case for a suppressor, whose
    noise estimate follows a speech-like level and spectrum.
    """
    out = np.zeros(n)
    voices = [voice for voice in VOICES if voice != target]
    if talkers is not None:
        voices = [str(v) for v in rng.choice(voices, talkers, replace=False)]
    for voice in voices:
        x = speech(voice)
        x = np.roll(x, int(rng.integers(0, len(x)))) / active_level(x)
        out += np.resize(x, n)  # np.resize repeats the clip as often as needed
    return out


def noise(kind: str, n: int, clip_index: int) -> Floats:
    """``n`` samples of noise; white and pink come from the fixtures, hum and babble are generated.

    Hum alternates 50 Hz and 60 Hz mains from clip to clip so both are represented.
    """
    rng = np.random.default_rng(1000 + clip_index)
    if kind == "hum":
        return hum(n, 50.0 if clip_index % 2 == 0 else 60.0, rng)
    if kind == "babble":
        return babble(n, SPEECH_CLIPS[clip_index], rng)
    samples, _ = read_wav(FIXTURES_DIR / "noise" / f"{kind}_8k.wav")
    if len(samples) < n:
        raise ValueError(f"{kind} noise fixture is shorter than the speech clip")
    start = int(rng.integers(0, len(samples) - n + 1))
    return samples[start : start + n]


_CHANNEL_BAND = signal.butter(4, (300, 3400), btype="bandpass", fs=RATE_HZ, output="sos")


def active_level(x: Floats) -> float:
    """RMS over the 20 ms frames that carry speech (within 35 dB of the loudest frames).

    A simplification of ITU-T P.56's active speech level, good enough to set SNRs consistently.
    """
    frames = x[: len(x) // 160 * 160].reshape(-1, 160)
    power = np.mean(frames**2, axis=1)
    loud = np.percentile(power, 95)
    return float(np.sqrt(np.mean(power[power > loud * 10 ** (-35 / 10)])))


def mulaw_channel(x: Floats) -> npt.NDArray[np.int16]:
    """Clip to int16 and pass through G.711 mu-law encode and decode."""
    pcm = np.clip(np.rint(x), -32768, 32767).astype(np.int16)
    return g711.ulaw_decode(g711.ulaw_encode(pcm))


@dataclass(frozen=True, slots=True)
class Condition:
    clip: str
    noise: str  # "clean" or one of NOISE_TYPES
    snr_db: float | None
    reference: Floats  # the clean speech
    received: npt.NDArray[np.int16]  # what the bridge gets from the phone line


def make_condition(clip_index: int, clip: str, kind: str, snr_db: float | None) -> Condition:
    """Speech plus noise at ``snr_db`` (noise band-limited as the line would), through mu-law."""
    clean = speech(clip)
    if kind == "clean":
        return Condition(clip, kind, None, clean, mulaw_channel(clean))
    assert snr_db is not None
    n = noise(kind, len(clean), clip_index)
    # The phone channel's band-pass applies to the caller's background noise (G.712 channel);
    # the speech fixtures are already band-limited. Zero-phase, so nothing shifts in time.
    n = signal.sosfiltfilt(_CHANNEL_BAND, n)
    n *= active_level(clean) / np.sqrt(np.mean(n**2)) * 10 ** (-snr_db / 20)
    return Condition(clip, kind, snr_db, clean, mulaw_channel(clean + n))
