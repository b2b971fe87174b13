"""What the simulated model says: the greeting recording and the clips cut from it, encoded per session format."""

from __future__ import annotations

import functools
import importlib.resources
import io
import logging
import re
import wave
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class Greeting:
    """One language's greeting recording (24 kHz mono PCM16 in ``bridge/data``) and its words.

    Both are espeak-ng voices. The Portuguese one: ``espeak-ng -v pt-br -s 160`` with the product
    name spelt "cólbridge" so that it is said as in English, resampled from 22.05 kHz to 24 kHz
    (soxr), cut after its last word and scaled to the English recording's peak level.
    """

    language: str  # ISO 639-1
    resource: str
    transcript: str
    # The end of its first sentence, where the recording pauses: the short clip used for
    # short replies.
    short_clip_ms: int


GREETINGS = {
    "en": Greeting("en", "data/simulator_greeting.wav",
                   "Hello, this is the callbridge test line. Say something and I will repeat it.", 2400),
    "pt": Greeting("pt", "data/simulator_greeting_pt.wav",
                   "Olá, esta é a linha de teste do callbridge. Diga alguma coisa e eu vou repetir.", 2900),
}
DEFAULT_LANGUAGE = "en"
GREETING_TRANSCRIPT = GREETINGS[DEFAULT_LANGUAGE].transcript

# Instructions that name a language, or are written in it (a few of its common words that are
# not English words; three different ones are needed).
_NAMED = {"pt": re.compile(r"\b(portugu[eê]se?s?|pt-br|pt-pt|pt_br)\b", re.IGNORECASE)}
_WORDS = {"pt": frozenset({"você", "não", "é", "uma", "para", "com", "seu", "sua", "está", "olá",
                           "obrigado", "obrigada", "então", "também", "pelo", "pela"})}


def session_language(transcription_language: str | None, instructions: list[str]) -> str:
    """The language the greeting is said in: the session's transcription language when a
    recording exists for it, else a language the instructions name or are written in, else
    English. ``instructions``: the response's own first, then the session's."""
    if transcription_language:
        primary = transcription_language.replace("_", "-").split("-")[0].lower()
        if primary in GREETINGS:
            return primary
    for text in instructions:
        words = set(re.findall(r"\w+", text.lower()))
        for language, named in _NAMED.items():
            if named.search(text) or len(words & _WORDS[language]) >= 3:
                return language
    return DEFAULT_LANGUAGE


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
def greeting_samples(language: str = DEFAULT_LANGUAGE) -> Samples:
    """The greeting recording in ``language`` (a key of GREETINGS): 24 kHz mono PCM16."""
    data = importlib.resources.files("bridge").joinpath(GREETINGS[language].resource).read_bytes()
    with wave.open(io.BytesIO(data), "rb") as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2 or wav.getframerate() != MODEL_RATE_HZ:
            raise SimulatorError("the greeting recording must be 24 kHz mono PCM16")
        pcm = wav.readframes(wav.getnframes())
    samples: Samples = np.frombuffer(pcm, dtype=np.int16).copy()
    samples.setflags(write=False)
    return samples


@functools.lru_cache(maxsize=16)
def encoded_clip(kind: str, codec: AudioFormat, language: str = DEFAULT_LANGUAGE) -> bytes:
    samples = greeting_samples(language)
    if kind == "short":
        samples = samples[: MODEL_RATE_HZ * GREETINGS[language].short_clip_ms // 1000]
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
