"""What the simulated callers say: utterances cut from the speech fixtures, over a line-noise floor.

Every caller frame carries a white-noise floor at ``NOISE_FLOOR_DBFS`` (a phone line is never
digitally silent), well under the model's speech threshold (the simulator's energy detector opens a
turn at -45 dBFS and holds it down to -51 dBFS). Utterances are stretches of the recorded and
synthetic speech fixtures with no pause long enough to end a turn, cut so that their last frame is
loud: the caller knows exactly which frame is its last speech frame, and so does the model's
detector, which is what the inbound latency is measured between.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.int16]

RATE_HZ = 8000
FRAME_SAMPLES = 160  # 20 ms at 8 kHz
FRAME_SECONDS = 0.020
NOISE_FLOOR_DBFS = -60.0
CLIPS = ("real_cmu_8k", "real_libri1_8k", "en_f_8k", "ptbr_f_8k", "ptbr_m_8k")

# Frame levels (dBFS over 20 ms) used to cut the fixtures.
_LOUD_DB = -40.0  # a frame every detector calls speech
_QUIET_DB = -51.0  # below the simulator's hold level: a pause
_MAX_PAUSE_FRAMES = 15  # 300 ms: shorter than the 500 ms of silence that ends a turn
_MIN_FRAMES = 50  # 1 s
_MAX_FRAMES = 200  # 4 s


@dataclass(frozen=True, slots=True)
class Utterance:
    frames: tuple[bytes, ...]  # 20 ms slin16 8 kHz payloads, noise floor included

    @property
    def seconds(self) -> float:
        return len(self.frames) * FRAME_SECONDS


def default_fixtures_dir() -> Path:
    # The speech recordings the test suite uses (tests/data/README.md lists their sources).
    return Path(__file__).resolve().parents[2] / "tests" / "data"


def _read_wav(path: Path) -> Samples:
    with wave.open(str(path), "rb") as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2 or wav.getframerate() != RATE_HZ:
            raise ValueError(f"{path} is not 8 kHz mono PCM16")
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16).copy()


def _levels_db(frames: npt.NDArray[np.int16]) -> npt.NDArray[np.float64]:
    power = np.mean(np.square(frames, dtype=np.float64), axis=1)
    return 10.0 * np.log10(np.maximum(power, 1e-3) / (32768.0 * 32768.0))


def cut_utterances(samples: Samples) -> list[Samples]:
    """Stretches of speech of 1-4 s, starting at their first loud frame, ending on a loud frame."""
    n = len(samples) // FRAME_SAMPLES
    frames = samples[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES)
    levels = _levels_db(frames)
    out: list[Samples] = []
    i = 0
    while i < n:
        if levels[i] < _LOUD_DB:
            i += 1
            continue
        start = i
        last_loud = i
        quiet = 0
        j = i + 1
        while j < n and j - start < _MAX_FRAMES:
            if levels[j] >= _LOUD_DB:
                last_loud = j
            quiet = quiet + 1 if levels[j] < _QUIET_DB else 0
            if quiet > _MAX_PAUSE_FRAMES:
                break
            j += 1
        end = last_loud + 1
        if end - start >= _MIN_FRAMES:
            out.append(frames[start:end].reshape(-1).copy())
        i = max(j, end)
    return out


def noise_frames(count: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    rms = 32768.0 * 10 ** (NOISE_FLOOR_DBFS / 20)
    noise = np.clip(np.rint(rng.normal(0.0, rms, count * FRAME_SAMPLES)), -32768, 32767).astype(np.int16)
    return [noise[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES].tobytes() for k in range(count)]


def load_utterances(fixtures_dir: Path, seed: int = 7) -> list[Utterance]:
    """All utterances of the speech fixtures, each with its own noise floor added."""
    rng = np.random.default_rng(seed)
    rms = 32768.0 * 10 ** (NOISE_FLOOR_DBFS / 20)
    utterances: list[Utterance] = []
    for name in CLIPS:
        path = fixtures_dir / "speech" / f"{name}.wav"
        for speech in cut_utterances(_read_wav(path)):
            mixed = speech.astype(np.float64) + rng.normal(0.0, rms, len(speech))
            pcm = np.clip(np.rint(mixed), -32768, 32767).astype(np.int16)
            utterances.append(Utterance(tuple(pcm[k : k + FRAME_SAMPLES].tobytes()
                                              for k in range(0, len(pcm), FRAME_SAMPLES))))
    if not utterances:
        raise RuntimeError(f"no utterances found in {fixtures_dir / 'speech'}")
    return utterances
