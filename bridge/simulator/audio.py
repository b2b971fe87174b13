"""What the simulated model says: the greeting recording and the clips cut from it, encoded per session format."""

from __future__ import annotations

import functools
import importlib.resources
import io
import logging
import wave
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr

from media.codec import ALAW_8K, MODEL_RATE_HZ, SLIN_8K, SLIN_16K, SLIN_24K, ULAW_8K, AudioFormat

log = logging.getLogger(__name__)

Samples = npt.NDArray[np.int16]
Json = dict[str, Any]

class SimulatorError(Exception):
    """Base of the simulator's errors."""


GREETING_TRANSCRIPT = "Hello, this is the callbridge test line. Say something and I will repeat it."
# The first words of the greeting recording ("Hello, this is the callbridge test line."), reused
# for short replies; the recording has a pause there.
_SHORT_CLIP_MS = 2400

def codec_for(fmt: Json) -> AudioFormat:
    kind = fmt.get("type")
    if kind == "audio/pcmu":
        return ULAW_8K
    if kind == "audio/pcma":
        return ALAW_8K
    rate = fmt.get("rate", 24000)  # Voice Live's pcm16_8000hz / pcm16_16000hz / 16 kHz input
    if rate == 8000:
        return SLIN_8K
    if rate == 16000:
        return SLIN_16K
    return SLIN_24K


# --------------------------------------------------------------------------- audio sources


@functools.cache
def greeting_samples() -> Samples:
    """The greeting recording: 24 kHz mono PCM16."""
    data = importlib.resources.files("bridge").joinpath("data/simulator_greeting.wav").read_bytes()
    with wave.open(io.BytesIO(data), "rb") as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2 or wav.getframerate() != MODEL_RATE_HZ:
            raise SimulatorError("the greeting recording must be 24 kHz mono PCM16")
        pcm = wav.readframes(wav.getnframes())
    samples: Samples = np.frombuffer(pcm, dtype=np.int16).copy()
    samples.setflags(write=False)
    return samples


@functools.lru_cache(maxsize=8)
def encoded_clip(kind: str, codec: AudioFormat) -> bytes:
    samples = greeting_samples()
    if kind == "short":
        samples = samples[: MODEL_RATE_HZ * _SHORT_CLIP_MS // 1000]
    return encode(samples, MODEL_RATE_HZ, codec)


def encode(samples: Samples, rate_hz: int, codec: AudioFormat) -> bytes:
    if rate_hz != codec.rate_hz and len(samples):
        samples = np.asarray(soxr.resample(samples, rate_hz, codec.rate_hz), dtype=np.int16)
    return codec.encode(samples)



def format_json(codec: AudioFormat) -> Json:
    if codec == ULAW_8K:
        return {"type": "audio/pcmu"}
    if codec == ALAW_8K:
        return {"type": "audio/pcma"}
    return {"type": "audio/pcm", "rate": MODEL_RATE_HZ}


def voiced_span_ms(audio: bytes, codec: AudioFormat) -> list[float]:
    """First and last millisecond of ``audio`` holding a non-zero sample ([0, 0] when none)."""
    samples = codec.decode(audio)
    nonzero = np.flatnonzero(samples)
    if not len(nonzero):
        return [0.0, 0.0]
    per_ms = codec.rate_hz / 1000
    return [round(nonzero[0] / per_ms, 3), round((nonzero[-1] + 1) / per_ms, 3)]
