"""A local server of the OpenAI Realtime API (GA protocol) with a deterministic model behind it.

callbridge starts it when no model API key is configured, so a PBX administrator can test a line
end to end without a cloud account; the test suite and the load benchmarks use it as the model.
The official ``openai`` SDK connects to it unchanged::

    client = AsyncOpenAI(api_key="anything", websocket_base_url=server.url)   # ws://host:port/v1
    async with client.realtime.connect(model="gpt-realtime") as conn: ...

Wire surface
------------
* ``GET /v1/realtime?model=...`` (the SDK appends ``/realtime`` to ``websocket_base_url``) and
  ``GET /openai/v1/realtime?model=...`` (the Azure OpenAI v1 surface). A key must be presented as
  ``Authorization: Bearer <key>`` or ``api-key: <key>``; any value is accepted unless the server
  was given ``api_key``. A missing or wrong key is refused with HTTP 401 before the upgrade.
* A request carrying ``OpenAI-Beta: realtime=v1`` is upgraded, sent an ``error`` and closed with
  code 4000 "beta_api_shape_disabled", as the hosted service does since the beta shape was shut down.
* Client events: ``session.update``, ``input_audio_buffer.append`` / ``.commit`` / ``.clear``,
  ``conversation.item.create`` / ``.retrieve`` / ``.truncate`` / ``.delete``, ``response.create``,
  ``response.cancel``. Anything else (and bad JSON, bad fields, beta-era flat session fields) gets
  an ``error`` event shaped like the service's (``type``, ``code``, ``message``, ``param``,
  ``event_id`` of the offending client event); the connection stays up.
* Server events use the GA names and field sets of ``openai.types.realtime``.
* Sessions end after ``max_session_seconds`` (default 60 minutes) with close code 1001, like the
  service.

Theory of operation
-------------------
Input audio is decoded per the session's ``audio.input.format`` (PCM16 24 kHz, G.711 mu-law or
A-law 8 kHz) and cut into 20 ms frames. With ``turn_detection`` set, an energy detector stands in
for the service's VAD: a frame is speech when its RMS level exceeds a level derived from
``threshold`` (0.5 maps to -45 dBFS, each 0.1 to 5 dB; once speaking, 6 dB less keeps the turn open).
Three speech frames in a row open a turn; ``silence_duration_ms`` of non-speech closes it.
``semantic_vad`` is approximated with a silence wait chosen by its ``eagerness``. Positions count
from the first byte of audio appended in the session, as the service's do:
``audio_start_ms`` = onset - ``prefix_padding_ms``, ``audio_end_ms`` = the position at which the
silence wait ran out (so it includes the silence).

    turn detector     frame is speech        frame is silence
    idle              run += 1; at 3 ->      run = 0
                      speaking, emit
                      speech_started
    speaking          silence = 0            silence += 20 ms; at silence_duration_ms ->
                                             idle, emit speech_stopped, commit the turn

A committed turn becomes a user ``message`` item (``input_audio``), announced with
``input_audio_buffer.committed``, ``conversation.item.added`` and ``conversation.item.done``, then
``conversation.item.input_audio_transcription.completed`` when transcription is configured (the
simulator cannot recognise words: the transcript reads ``[caller speech 2.3 s]``). With
``create_response`` (the default) a response follows. A turn that starts while a response is
streaming cancels it when ``interrupt_response`` is true (the default): ``response.done`` with
status ``cancelled`` and reason ``turn_detected``.

One response streams at a time (a second ``response.create`` gets
``conversation_already_has_active_response``). Its events come in the service's order:
``response.created``, ``rate_limits.updated``, ``response.output_item.added``,
``conversation.item.added``, ``response.content_part.added``, then ``response.output_audio.delta``
interleaved with ``response.output_audio_transcript.delta``, then ``response.output_audio.done``,
``response.output_audio_transcript.done``, ``response.content_part.done``,
``response.output_item.done``, ``conversation.item.done`` and ``response.done`` (also after a
cancellation, with the item ``incomplete``). Audio deltas carry ``delta_ms`` each in the session's
output format: the first ``LEAD_MS`` (200 ms) at once, then one per ``delta_ms / pace`` seconds of
``clock`` (which must advance in real time), so ``pace=1.0`` is real time. With
``output_modalities: ["text"]`` the same words come as ``response.output_text.delta`` / ``.done``.

What a response says is deterministic; the latest user-side conversation item decides:

* a ``function_call_output`` item: a short spoken confirmation, transcript ``[tool result received]``;
* a text item with the tool hook below: a function call;
* no caller turn in the conversation yet: the greeting, a recorded voice saying
  "Hello, this is the callbridge test line. Say something and I will repeat it.";
* a caller turn: the caller's own audio played back (at most 10 s), transcript
  ``[echo of caller speech 2.3 s]``;
* a text item after the caller has spoken: the short clip, transcript ``[reply to text message]``.

With ``server_vad`` ``idle_timeout_ms`` set, silence that long after the last response finished
playing emits ``input_audio_buffer.timeout_triggered`` and a short prompt, transcript
``[are you still there?]``.

Test hook for function calling: when the last user item is a text message containing
``call_tool:<name> <arguments>`` and the session (or the ``response.create``) declares a function
tool ``<name>``, the response is a ``function_call`` item instead of audio
(``response.output_item.added``, ``response.function_call_arguments.delta`` / ``.done``,
``response.output_item.done``, ``response.done``). ``<arguments>`` is passed on verbatim (``{}`` when
empty), so malformed JSON can be sent on purpose. An undeclared tool (or ``tool_choice: "none"``)
gets the short clip with transcript ``[tool <name> is not available]``; each hook fires once. A
bridge that forwards DTMF digits as text lets a phone keypad trigger tools this way.
``conversation.item.create`` alone never starts a response.

``SimulatorServer.sessions`` keeps a ``SimulatedSession`` record per accepted connection with what the
client sent (session updates, truncations, cancellations, response requests, speech timestamps on
the server's clock), so tests can assert what a bridge did. Audio is never kept beyond the last
caller turn (at most 10 s).

Timing log (``events_log``, ``--events-log FILE``): one JSON line per timing event, stamped with the
server's clock (``time.monotonic()`` by default, which is system-wide on Linux, so another process
on the host can line its own readings up with them). Off by default; when off the audio path pays
one ``is None`` test per append. Lines (``s`` is the session id, ``t`` the clock reading)::

    {"e": "open", "s", "t"}
    {"e": "speech_started", "s", "t", "agent": true|false}     t: just before the event is sent;
                                                                agent: a response was streaming audio
    {"e": "speech_end", "s", "t", "stopped": t2}               t: arrival of the append that completed
                                                                the turn's last speech frame
    {"e": "first_audio", "s", "r", "t", "kind"}                t: just before the first delta is sent
    {"e": "done", "s", "r", "t", "status", "audio_ms", "voiced_ms": [first, last]}
                                                                voiced_ms: span of non-zero samples
                                                                within the audio sent
    {"e": "close", "s", "t"}
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import copy
import functools
import hashlib
import importlib.resources
import io
import itertools
import json
import logging
import math
import re
import secrets
import signal
import string
import time
import wave
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr
from aiohttp import WSMsgType, web

from media.codec import ALAW_8K, FRAME_MS, MODEL_RATE_HZ, SLIN_24K, ULAW_8K, AudioFormat
from media.pacing import Pacer

log = logging.getLogger(__name__)

Samples = npt.NDArray[np.int16]
Json = dict[str, Any]

REALTIME_PATHS = ("/v1/realtime", "/openai/v1/realtime")
DEFAULT_MODEL = "gpt-realtime"
# The service limits one append to 15 MiB of base64.
MAX_APPEND_BYTES = 15 * 1024 * 1024
_MAX_MESSAGE_BYTES = MAX_APPEND_BYTES + 64 * 1024
MAX_SESSION_SECONDS = 3600.0
# A manual commit needs at least this much audio (the service's "buffer too small" rule).
MIN_COMMIT_MS = 100
ECHO_CAP_MS = 10_000
# Audio sent at once when a response starts, before real-time pacing: the service also runs
# ahead of playback, and the client's playout buffer is primed against event-loop jitter.
LEAD_MS = 200
# Energy VAD: threshold 0.5 -> -45 dBFS, 5 dB per 0.1; hysteresis while a turn is open.
_VAD_DB_AT_ZERO = -70.0
_VAD_DB_PER_UNIT = 50.0
_VAD_HOLD_DB = 6.0
_VAD_ONSET_FRAMES = 3
# semantic_vad is approximated with a fixed silence wait per eagerness.
_SEMANTIC_SILENCE_MS = {"low": 1500, "medium": 800, "auto": 800, "high": 400}
_SEMANTIC_PREFIX_MS = 300
# Bounded observability records.
_MAX_EVENTS_RECORDED = 100_000
# Appends remembered for the timing log: a turn ends silence_duration_ms after its last speech frame.
_ARRIVALS_KEPT = 1024

GREETING_TRANSCRIPT = "Hello, this is the callbridge test line. Say something and I will repeat it."
# The first words of the greeting recording ("Hello, this is the callbridge test line."), reused
# for short replies; the recording has a pause there.
_SHORT_CLIP_MS = 2400

_SERVER_VAD_DEFAULTS: Json = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "idle_timeout_ms": None,
    "create_response": True,
    "interrupt_response": True,
}
_SEMANTIC_VAD_DEFAULTS: Json = {
    "type": "semantic_vad",
    "eagerness": "auto",
    "create_response": True,
    "interrupt_response": True,
}
_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
_CLIENT_EVENT_TYPES = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
)
_APPEND_PREFIX = '{"type":"input_audio_buffer.append","audio":"'
_PCM16_LE = np.dtype("<i2")
_TOOL_HOOK = re.compile(r"call_tool:([A-Za-z0-9_.\-]+)[ \t]*(.*)", re.DOTALL)


class SimulatorError(Exception):
    """Base of the simulator's errors."""


class InvalidRequest(SimulatorError):
    """A client event the service would refuse; becomes an ``error`` event, never a disconnect."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = "invalid_value",
        param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.error_type = error_type


# --------------------------------------------------------------------------- observability record


@dataclass(slots=True)
class SimulatedSession:
    """What one client connection sent and what the simulator decided, for tests to inspect."""

    id: str
    model: str
    path: str
    opened_at: float
    session_config: Json = field(default_factory=dict)
    session_updates: list[Json] = field(default_factory=list)
    events_in: list[str] = field(default_factory=list)
    truncates: list[Json] = field(default_factory=list)
    cancels: list[Json] = field(default_factory=list)
    response_requests: list[Json] = field(default_factory=list)
    responses: list[Json] = field(default_factory=list)
    items_created: list[Json] = field(default_factory=list)
    errors_sent: list[Json] = field(default_factory=list)
    speech_started_at: list[float] = field(default_factory=list)
    speech_stopped_at: list[float] = field(default_factory=list)
    input_audio_ms: float = 0.0
    # SHA-256 of every appended audio byte in order, for tests that check what arrived, exactly.
    input_sha256: Any = field(default_factory=hashlib.sha256)
    closed_at: float | None = None
    close_code: int | None = None


# --------------------------------------------------------------------------- session configuration


def _default_session(session_id: str, model: str) -> Json:
    pcm: Json = {"type": "audio/pcm", "rate": MODEL_RATE_HZ}
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "You are the callbridge realtime simulator.",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "include": None,
        "expires_at": int(time.time() + MAX_SESSION_SECONDS),
        "audio": {
            "input": {
                "format": dict(pcm),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": dict(_SERVER_VAD_DEFAULTS),
            },
            "output": {"format": dict(pcm), "voice": "marin", "speed": 1.0},
        },
    }


def _check_keys(obj: Json, allowed: tuple[str, ...] | frozenset[str], where: str) -> None:
    for key in obj:
        if key not in allowed:
            raise InvalidRequest(f"Unknown parameter: '{where}.{key}'.", code="unknown_parameter",
                                 param=f"{where}.{key}")


def _expect_dict(value: Any, where: str) -> Json:
    if not isinstance(value, dict):
        raise InvalidRequest(f"Invalid type for '{where}': expected an object, but got "
                             f"{type(value).__name__} instead.", code="invalid_type", param=where)
    return value


def _expect_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"Invalid type for '{where}': expected a string, but got "
                             f"{type(value).__name__} instead.", code="invalid_type", param=where)
    return value


def _expect_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"Invalid type for '{where}': expected a boolean, but got "
                             f"{type(value).__name__} instead.", code="invalid_type", param=where)
    return value


def _expect_int(value: Any, where: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"Invalid type for '{where}': expected an integer, but got "
                             f"{type(value).__name__} instead.", code="invalid_type", param=where)
    if value < low or (high is not None and value > high):
        bound = f"at least {low}" if high is None else f"between {low} and {high}"
        raise InvalidRequest(f"Invalid '{where}': expected a value {bound}, but got {value} instead.",
                             param=where)
    return value


def _expect_number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"Invalid type for '{where}': expected a number, but got "
                             f"{type(value).__name__} instead.", code="invalid_type", param=where)
    if not (low <= value <= high):
        raise InvalidRequest(f"Invalid '{where}': expected a value between {low} and {high}, but got "
                             f"{value} instead.", param=where)
    return float(value)


def _expect_choice(value: Any, where: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        listed = ", ".join(f"'{c}'" for c in choices)
        raise InvalidRequest(f"Invalid value: {json.dumps(value)}. Supported values are: {listed}.",
                             param=where)
    return str(value)


def _audio_format(value: Any, where: str) -> Json:
    fmt = _expect_dict(value, where)
    kind = _expect_choice(fmt.get("type"), f"{where}.type", ("audio/pcm", "audio/pcmu", "audio/pcma"))
    if kind == "audio/pcm":
        _check_keys(fmt, ("type", "rate"), where)
        rate = fmt.get("rate", MODEL_RATE_HZ)
        if rate != MODEL_RATE_HZ or isinstance(rate, bool):
            raise InvalidRequest(f"Invalid value: {json.dumps(rate)}. Supported values are: 24000.",
                                 param=f"{where}.rate")
        return {"type": kind, "rate": MODEL_RATE_HZ}
    _check_keys(fmt, ("type",), where)
    return {"type": kind}


def _turn_detection(value: Any, where: str) -> Json | None:
    if value is None:
        return None
    td = _expect_dict(value, where)
    kind = _expect_choice(td.get("type"), f"{where}.type", ("server_vad", "semantic_vad"))
    if kind == "server_vad":
        _check_keys(td, tuple(_SERVER_VAD_DEFAULTS), where)
        out = dict(_SERVER_VAD_DEFAULTS)
        if "threshold" in td:
            out["threshold"] = _expect_number(td["threshold"], f"{where}.threshold", 0.0, 1.0)
        for key in ("prefix_padding_ms", "silence_duration_ms"):
            if key in td:
                out[key] = _expect_int(td[key], f"{where}.{key}", 0, 10_000)
        if td.get("idle_timeout_ms") is not None:
            out["idle_timeout_ms"] = _expect_int(td["idle_timeout_ms"], f"{where}.idle_timeout_ms", 1)
    else:
        _check_keys(td, tuple(_SEMANTIC_VAD_DEFAULTS), where)
        out = dict(_SEMANTIC_VAD_DEFAULTS)
        if "eagerness" in td:
            out["eagerness"] = _expect_choice(td["eagerness"], f"{where}.eagerness",
                                              ("low", "medium", "high", "auto"))
    for key in ("create_response", "interrupt_response"):
        if key in td:
            out[key] = _expect_bool(td[key], f"{where}.{key}")
    return out


def _tools(value: Any, where: str) -> list[Json]:
    if not isinstance(value, list):
        raise InvalidRequest(f"Invalid type for '{where}': expected an array.", code="invalid_type",
                             param=where)
    tools: list[Json] = []
    for i, raw in enumerate(value):
        tool = _expect_dict(raw, f"{where}[{i}]")
        kind = _expect_choice(tool.get("type", "function"), f"{where}[{i}].type", ("function", "mcp"))
        if kind == "function":
            _check_keys(tool, ("type", "name", "description", "parameters"), f"{where}[{i}]")
            if "name" not in tool:
                raise InvalidRequest(f"Missing required parameter: '{where}[{i}].name'.",
                                     code="missing_required_parameter", param=f"{where}[{i}].name")
            _expect_str(tool["name"], f"{where}[{i}].name")
            if "parameters" in tool:
                _expect_dict(tool["parameters"], f"{where}[{i}].parameters")
        tools.append(dict(tool, type=kind))
    return tools


def _tool_choice(value: Any, where: str) -> Any:
    if isinstance(value, str):
        return _expect_choice(value, where, ("auto", "none", "required"))
    choice = _expect_dict(value, where)
    _expect_choice(choice.get("type"), f"{where}.type", ("function", "mcp"))
    return dict(choice)


def _output_modalities(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or len(value) != 1:
        raise InvalidRequest(f"Invalid '{where}': exactly one of 'audio' or 'text' is supported.",
                             param=where)
    return [_expect_choice(value[0], f"{where}[0]", ("audio", "text"))]


def _max_output_tokens(value: Any, where: str) -> int | str:
    if value == "inf":
        return "inf"
    return _expect_int(value, where, 1, 4096)


_SESSION_KEYS = frozenset({
    "type", "model", "instructions", "output_modalities", "audio", "tools", "tool_choice",
    "max_output_tokens", "tracing", "truncation", "prompt", "include", "parallel_tool_calls",
    "reasoning",
    # Read-only fields a client may echo back from session.created.
    "id", "object", "expires_at",
})


def apply_session_update(current: Json, patch: Any, *, voice_locked: bool) -> Json:
    """The effective session after a GA ``session.update``; raises ``InvalidRequest`` and changes
    nothing when any field is invalid (the service rejects the whole update)."""
    patch = _expect_dict(patch, "session")
    if "type" not in patch:
        raise InvalidRequest("Missing required parameter: 'session.type'.",
                             code="missing_required_parameter", param="session.type")
    _expect_choice(patch["type"], "session.type", ("realtime",))
    _check_keys(patch, _SESSION_KEYS, "session")
    new = copy.deepcopy(current)
    if "model" in patch:
        new["model"] = _expect_str(patch["model"], "session.model")
    if "instructions" in patch:
        new["instructions"] = _expect_str(patch["instructions"], "session.instructions")
    if "output_modalities" in patch:
        new["output_modalities"] = _output_modalities(patch["output_modalities"], "session.output_modalities")
    if "tools" in patch:
        new["tools"] = _tools(patch["tools"], "session.tools")
    if "tool_choice" in patch:
        new["tool_choice"] = _tool_choice(patch["tool_choice"], "session.tool_choice")
    if "max_output_tokens" in patch:
        new["max_output_tokens"] = _max_output_tokens(patch["max_output_tokens"], "session.max_output_tokens")
    for key in ("tracing", "truncation", "prompt", "include", "parallel_tool_calls", "reasoning"):
        if key in patch:
            new[key] = copy.deepcopy(patch[key])
    if "audio" in patch:
        audio = _expect_dict(patch["audio"], "session.audio")
        _check_keys(audio, ("input", "output"), "session.audio")
        if "input" in audio:
            ain = _expect_dict(audio["input"], "session.audio.input")
            _check_keys(ain, ("format", "transcription", "noise_reduction", "turn_detection"),
                        "session.audio.input")
            target = new["audio"]["input"]
            if "format" in ain:
                target["format"] = _audio_format(ain["format"], "session.audio.input.format")
            if "turn_detection" in ain:
                target["turn_detection"] = _turn_detection(ain["turn_detection"],
                                                           "session.audio.input.turn_detection")
            if "noise_reduction" in ain:
                nr = ain["noise_reduction"]
                if nr is not None:
                    nr = _expect_dict(nr, "session.audio.input.noise_reduction")
                    _check_keys(nr, ("type", "strength"), "session.audio.input.noise_reduction")
                    _expect_choice(nr.get("type"), "session.audio.input.noise_reduction.type",
                                   ("near_field", "far_field"))
                    nr = dict(nr)
                target["noise_reduction"] = nr
            if "transcription" in ain:
                tr = ain["transcription"]
                if tr is not None:
                    tr = _expect_dict(tr, "session.audio.input.transcription")
                    _check_keys(tr, ("model", "language", "languages", "prompt", "keywords", "delay"),
                                "session.audio.input.transcription")
                    if "model" in tr:
                        _expect_str(tr["model"], "session.audio.input.transcription.model")
                    tr = dict(tr)
                target["transcription"] = tr
        if "output" in audio:
            aout = _expect_dict(audio["output"], "session.audio.output")
            _check_keys(aout, ("format", "voice", "speed"), "session.audio.output")
            target = new["audio"]["output"]
            if "format" in aout:
                target["format"] = _audio_format(aout["format"], "session.audio.output.format")
            if "voice" in aout:
                voice = aout["voice"]
                if isinstance(voice, dict):
                    _check_keys(voice, ("id",), "session.audio.output.voice")
                    _expect_str(voice.get("id"), "session.audio.output.voice.id")
                    voice = dict(voice)
                else:
                    _expect_str(voice, "session.audio.output.voice")
                if voice != target["voice"] and voice_locked:
                    raise InvalidRequest(
                        "Cannot update a conversation's voice if assistant audio is present.",
                        code="cannot_update_voice", param="session.audio.output.voice")
                target["voice"] = voice
            if "speed" in aout:
                target["speed"] = _expect_number(aout["speed"], "session.audio.output.speed", 0.25, 1.5)
    return new


def _codec(fmt: Json) -> AudioFormat:
    kind = fmt.get("type")
    if kind == "audio/pcmu":
        return ULAW_8K
    if kind == "audio/pcma":
        return ALAW_8K
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
def _encoded_clip(kind: str, codec: AudioFormat) -> bytes:
    samples = greeting_samples()
    if kind == "short":
        samples = samples[: MODEL_RATE_HZ * _SHORT_CLIP_MS // 1000]
    return _encode(samples, MODEL_RATE_HZ, codec)


def _encode(samples: Samples, rate_hz: int, codec: AudioFormat) -> bytes:
    if rate_hz != codec.rate_hz and len(samples):
        samples = np.asarray(soxr.resample(samples, rate_hz, codec.rate_hz), dtype=np.int16)
    return codec.encode(samples)


# --------------------------------------------------------------------------- turn detection

_NO_SAMPLES: Samples = np.zeros(0, dtype=np.int16)


@dataclass(frozen=True, slots=True)
class _Turn:
    """A committed stretch of input audio (positions in ms from the session's first audio)."""

    start_ms: int
    end_ms: int
    speech_end_ms: int
    audio: Samples
    rate_hz: int


@dataclass(frozen=True, slots=True)
class _SpeechStarted:
    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class _SpeechStopped:
    turn: _Turn


@dataclass(frozen=True, slots=True)
class _VadParams:
    on_db: float
    prefix_padding_ms: int
    silence_duration_ms: int

    @classmethod
    def from_config(cls, td: Json) -> _VadParams:
        if td["type"] == "semantic_vad":
            return cls(_VAD_DB_AT_ZERO + _VAD_DB_PER_UNIT * 0.5, _SEMANTIC_PREFIX_MS,
                       _SEMANTIC_SILENCE_MS[td.get("eagerness") or "auto"])
        return cls(_VAD_DB_AT_ZERO + _VAD_DB_PER_UNIT * float(td["threshold"]),
                   int(td["prefix_padding_ms"]), int(td["silence_duration_ms"]))


class InputAudioBuffer:
    """The input audio buffer of one session: framing, energy turn detection and turn capture.

    Sans-I/O: ``feed(samples)`` returns the detector's events in order. Audio is retained only for
    the uncommitted stretch (while idle, just the prefix padding) and at most ``ECHO_CAP_MS`` of it.
    """

    def __init__(self, rate_hz: int, vad: _VadParams | None, stream_ms: int = 0) -> None:
        self.rate_hz = rate_hz
        self._frame_len = rate_hz * FRAME_MS // 1000
        self._carry: Samples = _NO_SAMPLES
        self.vad: _VadParams | None = None
        self._on_energy = self._hold_energy = 0.0
        self.set_vad(vad)
        self.stream_ms = stream_ms  # whole frames seen since the session's first audio
        self.pending_start_ms = stream_ms  # start of the uncommitted stretch
        self._frames: deque[Samples] = deque()
        self._frames_start_ms = stream_ms  # position of self._frames[0]
        self._cap_frames = ECHO_CAP_MS // FRAME_MS
        self.speaking = False
        self._run = 0
        self._silence_ms = 0
        self._speech_end_ms = 0

    @property
    def pending_ms(self) -> int:
        return self.stream_ms - self.pending_start_ms

    def set_vad(self, vad: _VadParams | None) -> None:
        if vad is None or self.vad is None:
            self.speaking = False
            self._run = 0
        self.vad = vad
        if vad is not None:
            # Levels are compared as frame energies (sum of squares), so no logarithm per frame:
            # energy = frame_len * full_scale^2 * 10^(dBFS / 10).
            full = self._frame_len * 32768.0 * 32768.0
            self._on_energy = full * 10.0 ** (vad.on_db / 10.0)
            self._hold_energy = full * 10.0 ** ((vad.on_db - _VAD_HOLD_DB) / 10.0)

    def feed(self, samples: Samples) -> list[_SpeechStarted | _SpeechStopped]:
        if self._carry.size:
            samples = np.concatenate((self._carry, samples))
        size = self._frame_len
        n = len(samples) // size
        self._carry = samples[n * size:].copy() if len(samples) > n * size else _NO_SAMPLES
        if n == 0:
            return []
        events: list[_SpeechStarted | _SpeechStopped] = []
        if n == 1:
            # The usual case: one 20 ms frame per append.
            frame = samples if len(samples) == size else samples[:size]
            flat = frame.astype(np.float32)
            self._frame(frame, float(flat @ flat), events)
            return events
        frames = samples[: n * size].reshape(n, size)
        squares = frames.astype(np.float32)
        squares *= squares
        energies = squares.sum(axis=1).tolist()
        for i in range(n):
            self._frame(frames[i], energies[i], events)
        return events

    def _frame(self, frame: Samples, energy: float, events: list[_SpeechStarted | _SpeechStopped]) -> None:
        self.stream_ms += FRAME_MS
        self._frames.append(frame)
        vad = self.vad
        if vad is None or not self.speaking:
            # Idle (or no detector): keep the prefix padding plus the onset run, or with no detector
            # the first seconds of the manual-commit stretch.
            limit = (vad.prefix_padding_ms // FRAME_MS + _VAD_ONSET_FRAMES) if vad else self._cap_frames
            if vad is not None:
                while len(self._frames) > limit:
                    self._frames.popleft()
                    self._frames_start_ms += FRAME_MS
            elif len(self._frames) > limit:
                self._frames.pop()
        elif len(self._frames) > self._cap_frames:
            self._frames.pop()
        if vad is None:
            return
        if not self.speaking:
            if energy >= self._on_energy:
                self._run += 1
            else:
                self._run = 0
            if self._run >= _VAD_ONSET_FRAMES:
                onset_ms = self.stream_ms - self._run * FRAME_MS
                start_ms = max(self.pending_start_ms, onset_ms - vad.prefix_padding_ms, self._frames_start_ms)
                while self._frames_start_ms < start_ms:
                    self._frames.popleft()
                    self._frames_start_ms += FRAME_MS
                self.pending_start_ms = start_ms
                self.speaking = True
                self._silence_ms = 0
                self._speech_end_ms = self.stream_ms
                events.append(_SpeechStarted(start_ms))
            return
        if energy >= self._hold_energy:
            self._silence_ms = 0
            self._speech_end_ms = self.stream_ms
            return
        self._silence_ms += FRAME_MS
        if self._silence_ms >= vad.silence_duration_ms:
            self.speaking = False
            self._run = 0
            events.append(_SpeechStopped(self._take(self._speech_end_ms)))

    def commit(self) -> _Turn:
        """Commit everything not yet committed (manual ``input_audio_buffer.commit``)."""
        self.speaking = False
        self._run = 0
        return self._take(self.stream_ms)

    def clear(self) -> None:
        self._carry = _NO_SAMPLES
        self.speaking = False
        self._run = 0
        self._frames.clear()
        self.pending_start_ms = self._frames_start_ms = self.stream_ms

    def _take(self, speech_end_ms: int) -> _Turn:
        keep = max(0, (speech_end_ms - self._frames_start_ms) // FRAME_MS)
        frames = list(itertools.islice(self._frames, 0, keep))
        audio = np.concatenate(frames) if frames else np.zeros(0, dtype=np.int16)
        turn = _Turn(self.pending_start_ms, self.stream_ms, speech_end_ms, audio, self.rate_hz)
        self._frames.clear()
        self.pending_start_ms = self._frames_start_ms = self.stream_ms
        return turn


# --------------------------------------------------------------------------- conversation state


@dataclass(slots=True)
class _Item:
    id: str
    type: str  # message | function_call | function_call_output
    role: str | None = None
    status: str = "completed"
    content: list[Json] = field(default_factory=list)
    name: str | None = None
    call_id: str | None = None
    arguments: str | None = None
    output: str | None = None
    # Caller audio of a committed turn (kept for the latest turn only) and its duration.
    audio: Samples | None = None
    audio_rate_hz: int = 0
    audio_ms: int = 0
    # Assistant audio produced so far, in ms, and whether a tool hook in this item was used.
    produced_ms: int = 0
    truncated: bool = False
    hook_used: bool = False

    def to_json(self) -> Json:
        out: Json = {"id": self.id, "object": "realtime.item", "type": self.type, "status": self.status}
        if self.type == "message":
            out["role"] = self.role
            out["content"] = copy.deepcopy(self.content)
        elif self.type == "function_call":
            out.update(name=self.name, call_id=self.call_id, arguments=self.arguments)
        else:
            out.update(call_id=self.call_id, output=self.output)
        return out

    def text(self) -> str:
        return " ".join(str(c.get("text") or "") for c in self.content if c.get("type") == "input_text")


@dataclass(slots=True)
class _Response:
    id: str
    kind: str
    conversation: bool
    modality: str
    codec: AudioFormat
    voice: Any
    item: _Item
    transcript: str
    audio: bytes = b""
    metadata: Any = None
    status: str = "in_progress"
    finished: bool = False
    sent_bytes: int = 0
    transcript_sent: str = ""
    first_audio_at: float | None = None
    wake: asyncio.Future[None] | None = None
    task: asyncio.Task[None] | None = None
    status_reason: str | None = None


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


_ID_ALPHABET = string.ascii_letters + string.digits


def _random_tag(n: int = 12) -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(n))


# --------------------------------------------------------------------------- one connection


class SimulatedConnection:
    """Protocol state and event loop of one client connection."""

    def __init__(self, server: SimulatorServer, ws: web.WebSocketResponse, record: SimulatedSession) -> None:
        self._server = server
        self._ws = ws
        self.record = record
        self._clock = server.clock
        self._tag = _random_tag()
        self._seq = itertools.count(1)
        self._out_lock = asyncio.Lock()
        self._session = _default_session(record.id, record.model)
        record.session_config = self._session
        self._in_codec = SLIN_24K
        self._input = InputAudioBuffer(MODEL_RATE_HZ, _VadParams.from_config(_SERVER_VAD_DEFAULTS))
        self._items: list[_Item] = []
        self._by_id: dict[str, _Item] = {}
        self._active: _Response | None = None
        self._voice_locked = False
        self._next_turn_item_id = self._new_id("item")
        self._timing = server.timing_log
        # (stream position after the append in ms, arrival time), only while timing is logged.
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=_ARRIVALS_KEPT)
        self._tg: asyncio.TaskGroup | None = None
        self._idle_task: asyncio.Task[None] | None = None
        self._limit_task: asyncio.Task[None] | None = None
        self._peer_gone = False
        self._handlers: dict[str, Callable[[Json], Awaitable[None]]] = {
            "session.update": self._on_session_update,
            "input_audio_buffer.append": self._on_append,
            "input_audio_buffer.commit": self._on_commit,
            "input_audio_buffer.clear": self._on_clear,
            "conversation.item.create": self._on_item_create,
            "conversation.item.retrieve": self._on_item_retrieve,
            "conversation.item.truncate": self._on_item_truncate,
            "conversation.item.delete": self._on_item_delete,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
            "output_audio_buffer.clear": self._on_output_audio_buffer_clear,
        }

    # -- plumbing ------------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{self._tag}{next(self._seq):x}"

    async def _send(self, *events: Json) -> None:
        await self._send_raw([json.dumps(self._stamp(e), separators=(",", ":")) for e in events])

    def _stamp(self, event: Json) -> Json:
        return {"event_id": self._new_id("event"), **event}

    async def _send_raw(self, frames: list[str]) -> None:
        async with self._out_lock:
            for frame in frames:
                if self._peer_gone or self._ws.closed:
                    self._peer_gone = True
                    return
                try:
                    await self._ws.send_str(frame)
                except ConnectionResetError:
                    # The client went away; the receive loop ends on its own.
                    self._peer_gone = True
                    return

    async def _send_error(self, exc: InvalidRequest, client_event_id: Any) -> None:
        error: Json = {
            "type": exc.error_type,
            "code": exc.code,
            "message": exc.message,
            "param": exc.param,
            "event_id": client_event_id if isinstance(client_event_id, str) else None,
        }
        self.record.errors_sent.append(error)
        await self._send({"type": "error", "error": error})

    def _record_event(self, event_type: str) -> None:
        events = self.record.events_in
        if len(events) < _MAX_EVENTS_RECORDED:
            events.append(event_type)

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                if self._server.max_session_seconds > 0:
                    self._limit_task = tg.create_task(self._session_limit())
                await self._send({"type": "session.created", "session": self._session})
                async for msg in self._ws:
                    if msg.type is WSMsgType.TEXT:
                        await self._receive_text(msg.data)
                    elif msg.type is WSMsgType.BINARY:
                        self._record_event("<binary>")
                        await self._send_error(InvalidRequest(
                            "Binary frames are not supported; send events as JSON text frames.",
                            code="invalid_json"), None)
                    else:
                        break
            finally:
                self._teardown()

    def _teardown(self) -> None:
        self._peer_gone = True
        if self._active is not None:
            self._stop_streaming(self._active)
            self._active = None
        for task in (self._idle_task, self._limit_task):
            if task is not None:
                task.cancel()

    async def close(self, code: int, message: str) -> None:
        if self.record.close_code is None:
            self.record.close_code = code
        await self._ws.close(code=code, message=message.encode())

    async def _session_limit(self) -> None:
        limit = self._server.max_session_seconds
        await asyncio.sleep(limit)
        self._limit_task = None  # from here on the close handshake must not be cancelled by teardown
        minutes = limit / 60
        shown = f"{minutes:.0f}" if minutes == int(minutes) else f"{minutes:g}"
        await self.close(1001, f"Your session hit the maximum duration of {shown} minutes.")

    async def _receive_text(self, data: str) -> None:
        if data.startswith(_APPEND_PREFIX) and data.endswith('"}'):
            # Fast path for the audio stream (50 events a second per call), as bridges serialise it:
            # base64 contains neither quotes nor backslashes, so the payload is the whole middle.
            audio = data[len(_APPEND_PREFIX):-2]
            if '"' not in audio and "\\" not in audio:
                self._record_event("input_audio_buffer.append")
                try:
                    await self._on_append({"audio": audio})
                except InvalidRequest as exc:
                    await self._send_error(exc, None)
                return
        try:
            event = json.loads(data)
        except ValueError:
            self._record_event("<invalid json>")
            await self._send_error(InvalidRequest("We could not parse the JSON body of your request.",
                                                  code="invalid_json"), None)
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            self._record_event("<no type>")
            await self._send_error(InvalidRequest("Missing required parameter: 'type'.",
                                                  code="missing_required_parameter", param="type"), None)
            return
        kind = event["type"]
        self._record_event(kind)
        handler = self._handlers.get(kind)
        try:
            if handler is None:
                listed = ", ".join(f"'{t}'" for t in _CLIENT_EVENT_TYPES)
                raise InvalidRequest(f"Invalid value: '{kind}'. Supported values are: {listed}.",
                                     param="type")
            await handler(event)
        except InvalidRequest as exc:
            await self._send_error(exc, event.get("event_id"))

    # -- session -------------------------------------------------------------------------------

    async def _on_session_update(self, event: Json) -> None:
        if "session" not in event:
            raise InvalidRequest("Missing required parameter: 'session'.",
                                 code="missing_required_parameter", param="session")
        self.record.session_updates.append(copy.deepcopy(event["session"]))
        new = apply_session_update(self._session, event["session"], voice_locked=self._voice_locked)
        old_input = self._session["audio"]["input"]
        self._session = new
        self.record.session_config = new
        new_input = new["audio"]["input"]
        td = new_input["turn_detection"]
        vad = _VadParams.from_config(td) if td is not None else None
        if new_input["format"] != old_input["format"]:
            # A new input format starts a new buffer; positions keep counting.
            self._in_codec = _codec(new_input["format"])
            self._input = InputAudioBuffer(self._in_codec.rate_hz, vad, self._input.stream_ms)
        else:
            self._input.set_vad(vad)
        await self._send({"type": "session.updated", "session": new})
        self._arm_idle_timer(0.0)

    # -- input audio ---------------------------------------------------------------------------

    async def _on_append(self, event: Json) -> None:
        arrived = self._clock() if self._timing is not None else 0.0
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise InvalidRequest("Missing required parameter: 'audio'.", code="missing_required_parameter",
                                 param="audio")
        if len(audio) > MAX_APPEND_BYTES:
            raise InvalidRequest(f"Invalid 'audio': string too long. Expected a string with maximum length "
                                 f"{MAX_APPEND_BYTES}, but got a string with length {len(audio)} instead.",
                                 code="string_above_max_length", param="audio")
        try:
            payload = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("Invalid 'audio'. Expected base64-encoded audio.", param="audio") from None
        codec = self._in_codec
        if codec.bytes_per_sample == 2:
            # A trailing odd byte cannot be half a sample of the next append; it is dropped.
            samples = np.frombuffer(payload, dtype=_PCM16_LE, count=len(payload) // 2)
            if _PCM16_LE != np.int16:
                samples = samples.astype(np.int16)
        else:
            samples = codec.decode(payload)
        self.record.input_audio_ms += len(samples) * 1000.0 / codec.rate_hz
        self.record.input_sha256.update(payload)
        detected = self._input.feed(samples)
        if self._timing is not None:
            self._arrivals.append((self._input.stream_ms, arrived))
        for ev in detected:
            if isinstance(ev, _SpeechStarted):
                await self._speech_started(ev)
            else:
                await self._speech_stopped(ev.turn)

    async def _speech_started(self, ev: _SpeechStarted) -> None:
        now = self._clock()
        self.record.speech_started_at.append(now)
        if self._timing is not None:
            active = self._active
            self._timing.write("speech_started", self.record.id, now,
                               agent=active is not None and active.first_audio_at is not None)
        self._cancel_idle_timer()
        await self._send({"type": "input_audio_buffer.speech_started", "audio_start_ms": ev.audio_start_ms,
                          "item_id": self._next_turn_item_id})
        td = self._session["audio"]["input"]["turn_detection"]
        active = self._active
        if active is not None and active.conversation and td is not None and td["interrupt_response"]:
            await self._finish(active, "cancelled", "turn_detected")

    async def _speech_stopped(self, turn: _Turn) -> None:
        now = self._clock()
        self.record.speech_stopped_at.append(now)
        if self._timing is not None:
            arrived = next((t for end_ms, t in self._arrivals if end_ms >= turn.speech_end_ms), None)
            if arrived is not None:
                self._timing.write("speech_end", self.record.id, arrived, stopped=now)
        await self._send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": turn.end_ms,
                          "item_id": self._next_turn_item_id})
        await self._commit_turn(turn)
        td = self._session["audio"]["input"]["turn_detection"]
        if td is not None and td["create_response"] and self._active is None:
            await self._start_response(None)
        else:
            self._arm_idle_timer(0.0)

    async def _on_commit(self, event: Json) -> None:
        pending = self._input.pending_ms
        if pending < MIN_COMMIT_MS:
            raise InvalidRequest(
                f"Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {pending:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty")
        await self._commit_turn(self._input.commit())

    async def _on_clear(self, event: Json) -> None:
        self._input.clear()
        await self._send({"type": "input_audio_buffer.cleared"})

    async def _commit_turn(self, turn: _Turn) -> None:
        item_id = self._next_turn_item_id
        self._next_turn_item_id = self._new_id("item")
        # Speech span: from the (padded) start to the last speech frame; the trailing silence the
        # detector waited for is not echoed.
        span_ms = max(0, min(turn.speech_end_ms, turn.end_ms) - turn.start_ms)
        item = _Item(item_id, "message", role="user", content=[{"type": "input_audio", "transcript": None}])
        item.audio = turn.audio[: turn.rate_hz * min(span_ms, ECHO_CAP_MS) // 1000]
        item.audio_rate_hz = turn.rate_hz
        item.audio_ms = span_ms
        previous = self._items[-1].id if self._items else None
        self._insert(item, previous)
        await self._send(
            {"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous},
            {"type": "conversation.item.added", "item": item.to_json(), "previous_item_id": previous},
            {"type": "conversation.item.done", "item": item.to_json(), "previous_item_id": previous},
        )
        transcription = self._session["audio"]["input"]["transcription"]
        if transcription is not None:
            transcript = f"[caller speech {span_ms / 1000:.1f} s]"
            item.content[0]["transcript"] = transcript
            await self._send(
                {"type": "conversation.item.input_audio_transcription.delta", "item_id": item_id,
                 "content_index": 0, "delta": transcript},
                {"type": "conversation.item.input_audio_transcription.completed", "item_id": item_id,
                 "content_index": 0, "transcript": transcript,
                 "usage": {"type": "duration", "seconds": round(span_ms / 1000, 3)}},
            )

    # -- idle timeout (server_vad idle_timeout_ms) ---------------------------------------------

    def _arm_idle_timer(self, playback_remaining: float) -> None:
        self._cancel_idle_timer()
        td = self._session["audio"]["input"]["turn_detection"]
        if td is None or td.get("idle_timeout_ms") is None or self._tg is None or self._peer_gone:
            return
        if self._active is not None or self._input.speaking:
            return
        delay = playback_remaining + td["idle_timeout_ms"] / 1000
        self._idle_task = self._tg.create_task(self._idle_timeout(delay))

    def _cancel_idle_timer(self) -> None:
        if self._idle_task is not None:
            self._idle_task.cancel()
            self._idle_task = None

    async def _idle_timeout(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._idle_task = None
        if self._active is not None or self._input.speaking:
            return
        turn = self._input.commit()
        await self._send({"type": "input_audio_buffer.timeout_triggered", "audio_start_ms": turn.start_ms,
                          "audio_end_ms": turn.end_ms, "item_id": self._next_turn_item_id})
        await self._commit_turn(_Turn(turn.start_ms, turn.end_ms, turn.start_ms,
                                      np.zeros(0, dtype=np.int16), turn.rate_hz))
        await self._start_response(None, kind_override="idle")

    # -- conversation items --------------------------------------------------------------------

    def _insert(self, item: _Item, previous_item_id: str | None) -> None:
        if item.audio is not None:
            for older in self._items:
                older.audio = None  # only the latest caller audio is kept
        if previous_item_id is None:
            self._items.append(item)
        elif previous_item_id == "root":
            self._items.insert(0, item)
        else:
            index = next(i for i, it in enumerate(self._items) if it.id == previous_item_id)
            self._items.insert(index + 1, item)
        self._by_id[item.id] = item

    def _parse_item(self, raw: Any) -> _Item:
        data = _expect_dict(raw, "item")
        kind = _expect_choice(data.get("type"), "item.type",
                              ("message", "function_call", "function_call_output"))
        item_id = data.get("id")
        if item_id is None:
            item_id = self._new_id("item")
        elif not isinstance(item_id, str) or not item_id or len(item_id) > 32:
            raise InvalidRequest("Invalid 'item.id': expected a string of at most 32 characters.",
                                 param="item.id")
        elif item_id in self._by_id:
            raise InvalidRequest(f"Item with id '{item_id}' already exists.", code="item_already_exists",
                                 param="item.id")
        if kind == "function_call_output":
            _check_keys(data, ("type", "id", "object", "status", "call_id", "output"), "item")
            for key in ("call_id", "output"):
                if key not in data:
                    raise InvalidRequest(f"Missing required parameter: 'item.{key}'.",
                                         code="missing_required_parameter", param=f"item.{key}")
                _expect_str(data[key], f"item.{key}")
            return _Item(item_id, kind, call_id=data["call_id"], output=data["output"])
        if kind == "function_call":
            _check_keys(data, ("type", "id", "object", "status", "call_id", "name", "arguments"), "item")
            for key in ("name", "arguments"):
                if key not in data:
                    raise InvalidRequest(f"Missing required parameter: 'item.{key}'.",
                                         code="missing_required_parameter", param=f"item.{key}")
                _expect_str(data[key], f"item.{key}")
            return _Item(item_id, kind, name=data["name"], arguments=data["arguments"],
                         call_id=str(data.get("call_id") or self._new_id("call")))
        _check_keys(data, ("type", "id", "object", "status", "role", "content"), "item")
        role = _expect_choice(data.get("role"), "item.role", ("user", "assistant", "system"))
        content = data.get("content")
        if not isinstance(content, list) or not content:
            raise InvalidRequest("Invalid 'item.content': expected a non-empty array.", param="item.content")
        allowed = {"user": ("input_text", "input_audio", "input_image"), "system": ("input_text",),
                   "assistant": ("output_text", "output_audio")}[role]
        parts: list[Json] = []
        item = _Item(item_id, kind, role=role)
        for i, raw_part in enumerate(content):
            part = _expect_dict(raw_part, f"item.content[{i}]")
            ptype = _expect_choice(part.get("type"), f"item.content[{i}].type", allowed)
            if ptype in ("input_text", "output_text"):
                text = _expect_str(part.get("text"), f"item.content[{i}].text")
                parts.append({"type": ptype, "text": text})
            elif ptype == "input_audio":
                audio_b64 = _expect_str(part.get("audio"), f"item.content[{i}].audio")
                try:
                    payload = base64.b64decode(audio_b64, validate=True)
                except (binascii.Error, ValueError):
                    raise InvalidRequest("Invalid 'audio'. Expected base64-encoded audio.",
                                         param=f"item.content[{i}].audio") from None
                samples = self._in_codec.decode(payload)
                item.audio = samples[: self._in_codec.rate_hz * ECHO_CAP_MS // 1000]
                item.audio_rate_hz = self._in_codec.rate_hz
                item.audio_ms = len(samples) * 1000 // self._in_codec.rate_hz
                parts.append({"type": ptype, "transcript": part.get("transcript")})
            elif ptype == "output_audio":
                parts.append({"type": ptype, "transcript": part.get("transcript")})
            else:
                parts.append({"type": ptype, "image_url": part.get("image_url"),
                              "detail": part.get("detail")})
        item.content = parts
        return item

    async def _on_item_create(self, event: Json) -> None:
        if "item" not in event:
            raise InvalidRequest("Missing required parameter: 'item'.", code="missing_required_parameter",
                                 param="item")
        previous = event.get("previous_item_id")
        if previous is not None and previous != "root" and previous not in self._by_id:
            raise InvalidRequest(f"Previous item with id '{previous}' not found.", param="previous_item_id")
        item = self._parse_item(event["item"])
        self.record.items_created.append(copy.deepcopy(event["item"]))
        if previous is None:
            previous_id = self._items[-1].id if self._items else None
        else:
            previous_id = None if previous == "root" else previous
        self._insert(item, previous)
        body = item.to_json()
        await self._send(
            {"type": "conversation.item.added", "item": body, "previous_item_id": previous_id},
            {"type": "conversation.item.done", "item": body, "previous_item_id": previous_id},
        )

    def _lookup(self, event: Json, action: str) -> _Item:
        if "item_id" not in event:
            raise InvalidRequest("Missing required parameter: 'item_id'.", code="missing_required_parameter",
                                 param="item_id")
        item_id = event["item_id"]
        item = self._by_id.get(item_id) if isinstance(item_id, str) else None
        if item is None:
            raise InvalidRequest(f"Error {action} item: the item with id '{item_id}' does not exist.",
                                 code="item_not_found", param="item_id")
        return item

    async def _on_item_retrieve(self, event: Json) -> None:
        item = self._lookup(event, "retrieving")
        await self._send({"type": "conversation.item.retrieved", "item": item.to_json()})

    async def _on_item_delete(self, event: Json) -> None:
        item = self._lookup(event, "deleting")
        self._items.remove(item)
        del self._by_id[item.id]
        await self._send({"type": "conversation.item.deleted", "item_id": item.id})

    async def _on_item_truncate(self, event: Json) -> None:
        for key in ("item_id", "content_index", "audio_end_ms"):
            if key not in event:
                raise InvalidRequest(f"Missing required parameter: '{key}'.",
                                     code="missing_required_parameter", param=key)
        audio_end_ms = _expect_int(event["audio_end_ms"], "audio_end_ms", 0)
        content_index = _expect_int(event["content_index"], "content_index", 0)
        entry: Json = {"item_id": event["item_id"], "content_index": content_index,
                       "audio_end_ms": audio_end_ms, "at": self._clock(), "accepted": False,
                       "produced_ms": None}
        self.record.truncates.append(entry)
        item = self._lookup(event, "truncating")
        is_audio = (item.type == "message" and item.role == "assistant"
                    and any(c.get("type") == "output_audio" for c in item.content) and item.produced_ms > 0)
        if not is_audio:
            raise InvalidRequest("Only model output audio messages can be truncated",
                                 code="unsupported_content_type", param="item_id")
        entry["produced_ms"] = item.produced_ms
        if content_index != 0:
            raise InvalidRequest(
                f"Invalid 'content_index': the item has no content at index {content_index}.",
                param="content_index")
        if audio_end_ms > item.produced_ms:
            raise InvalidRequest(f"Audio content of {item.produced_ms}ms is already shorter than "
                                 f"{audio_end_ms}ms", param="audio_end_ms")
        entry["accepted"] = True
        item.produced_ms = audio_end_ms
        item.truncated = True
        # The model forgets what the caller never heard, transcript included.
        for part in item.content:
            if part.get("type") == "output_audio":
                part["transcript"] = ""
        await self._send({"type": "conversation.item.truncated", "item_id": item.id,
                          "content_index": content_index, "audio_end_ms": audio_end_ms})

    async def _on_output_audio_buffer_clear(self, event: Json) -> None:
        raise InvalidRequest("output_audio_buffer.clear is only supported for WebRTC and SIP sessions.",
                             code="unsupported_event", param="type")

    # -- responses -----------------------------------------------------------------------------

    async def _on_response_create(self, event: Json) -> None:
        params = event.get("response")
        if params is not None:
            params = _expect_dict(params, "response")
            _check_keys(params, ("audio", "conversation", "input", "instructions", "max_output_tokens",
                                 "metadata", "output_modalities", "prompt", "tool_choice", "tools",
                                 "parallel_tool_calls", "reasoning"), "response")
            if "instructions" in params:
                _expect_str(params["instructions"], "response.instructions")
            if "output_modalities" in params:
                _output_modalities(params["output_modalities"], "response.output_modalities")
            if "tools" in params:
                _tools(params["tools"], "response.tools")
            if "tool_choice" in params:
                _tool_choice(params["tool_choice"], "response.tool_choice")
            if "max_output_tokens" in params:
                _max_output_tokens(params["max_output_tokens"], "response.max_output_tokens")
            if "audio" in params:
                audio = _expect_dict(params["audio"], "response.audio")
                _check_keys(audio, ("output",), "response.audio")
                out = _expect_dict(audio.get("output", {}), "response.audio.output")
                _check_keys(out, ("format", "voice"), "response.audio.output")
                if "format" in out:
                    _audio_format(out["format"], "response.audio.output.format")
        self.record.response_requests.append(copy.deepcopy(params) if params else {})
        if self._active is not None:
            raise InvalidRequest(
                f"Conversation already has an active response in progress: {self._active.id}. "
                "Wait until the response is finished before creating a new one.",
                code="conversation_already_has_active_response")
        await self._start_response(params)

    async def _on_response_cancel(self, event: Json) -> None:
        active = self._active
        wanted = event.get("response_id")
        entry: Json = {"response_id": wanted, "at": self._clock(), "active": active is not None}
        self.record.cancels.append(entry)
        if active is None or (wanted is not None and wanted != active.id):
            raise InvalidRequest("Cancellation failed: no active response found",
                                 code="response_cancel_not_active")
        entry["cancelled_response_id"] = active.id
        await self._finish(active, "cancelled", "client_cancelled")

    def _plan(
        self, params: Json, kind_override: str | None
    ) -> tuple[str, str, Samples | None, int, Json | None]:
        """What the next response says: (kind, transcript, source audio, its rate, tool call)."""
        if kind_override == "idle":
            return "idle", "[are you still there?]", None, 0, None
        last: _Item | None = None
        for item in reversed(self._items):
            if item.type == "function_call_output" or (item.type == "message" and item.role == "user"):
                last = item
                break
        if last is not None and last.type == "function_call_output":
            return "confirmation", "[tool result received]", None, 0, None
        if last is not None and not last.hook_used:
            match = _TOOL_HOOK.search(last.text())
            if match is not None:
                name, args = match.group(1), match.group(2).strip() or "{}"
                tools = params.get("tools", self._session["tools"]) or []
                choice = params.get("tool_choice", self._session["tool_choice"])
                declared = any(t.get("type") == "function" and t.get("name") == name for t in tools)
                if declared and choice != "none":
                    last.hook_used = True
                    return "tool_call", "", None, 0, {"name": name, "arguments": args}
                return "text_reply", f"[tool {name} is not available]", None, 0, None
        heard = [it for it in self._items if it.type == "message" and it.role == "user" and it.audio_ms > 0]
        if not heard:
            return "greeting", GREETING_TRANSCRIPT, None, 0, None
        if last is not None and last.audio_ms > 0 and last.audio is not None and len(last.audio):
            seconds = len(last.audio) / last.audio_rate_hz
            return "echo", f"[echo of caller speech {seconds:.1f} s]", last.audio, last.audio_rate_hz, None
        return "text_reply", "[reply to text message]", None, 0, None

    async def _start_response(self, params: Json | None, kind_override: str | None = None) -> None:
        params = params or {}
        self._cancel_idle_timer()
        if self._peer_gone:
            return
        kind, transcript, source, source_rate, tool = self._plan(params, kind_override)
        modality = (params.get("output_modalities") or self._session["output_modalities"])[0]
        out_cfg = self._session["audio"]["output"]
        override = (params.get("audio") or {}).get("output") or {}
        codec = _codec(_audio_format(override["format"], "response.audio.output.format")
                       if "format" in override else out_cfg["format"])
        conversation = params.get("conversation", "auto") != "none"
        response_id = self._new_id("resp")
        item_id = self._new_id("item")
        if tool is not None:
            item = _Item(item_id, "function_call", status="in_progress", name=tool["name"],
                         call_id=self._new_id("call"), arguments="")
        else:
            item = _Item(item_id, "message", role="assistant", status="in_progress")
        voice = override.get("voice", out_cfg["voice"])
        resp = _Response(response_id, kind, conversation, modality, codec, voice, item, transcript,
                         metadata=params.get("metadata"))
        if tool is None and modality == "audio":
            if source is not None:
                resp.audio = _encode(source, source_rate, codec)
            else:
                resp.audio = _encoded_clip("greeting" if kind == "greeting" else "short", codec)
        self._active = resp
        self.record.responses.append({"id": response_id, "kind": kind, "status": "in_progress",
                                      "item_id": item_id, "audio_ms": 0, "created_at": self._clock()})
        previous = self._items[-1].id if (conversation and self._items) else None
        if conversation:
            self._insert(item, None)
        created: list[Json] = [
            {"type": "response.created", "response": self._response_json(resp)},
            {"type": "rate_limits.updated", "rate_limits": [
                {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                {"name": "tokens", "limit": 400000, "remaining": 395000, "reset_seconds": 0.75}]},
            {"type": "response.output_item.added", "response_id": response_id, "output_index": 0,
             "item": item.to_json()},
        ]
        if conversation:
            created.append({"type": "conversation.item.added", "item": item.to_json(),
                            "previous_item_id": previous})
        if tool is not None:
            await self._send(*created)
            await self._emit_tool_call(resp, tool["arguments"])
            return
        if modality == "audio":
            part: Json = {"type": "audio", "transcript": ""}
            item.content = [{"type": "output_audio", "transcript": ""}]
        else:
            part = {"type": "text", "text": ""}
            item.content = [{"type": "output_text", "text": ""}]
        created.append({"type": "response.content_part.added", "response_id": response_id,
                        "item_id": item_id, "output_index": 0, "content_index": 0, "part": part})
        await self._send(*created)
        if modality == "text":
            await self._emit_text(resp)
            return
        if self._tg is None:
            raise SimulatorError("response started outside the connection's task group")
        resp.task = self._tg.create_task(self._stream_audio(resp))

    async def _emit_tool_call(self, resp: _Response, arguments: str) -> None:
        item = resp.item
        base = {"response_id": resp.id, "item_id": item.id, "output_index": 0, "call_id": item.call_id}
        half = max(1, len(arguments) // 2)
        deltas = [arguments[:half], arguments[half:]] if len(arguments) > 1 else [arguments]
        await self._send(*[{"type": "response.function_call_arguments.delta", **base, "delta": d}
                           for d in deltas if d])
        item.arguments = arguments
        await self._send({"type": "response.function_call_arguments.done", **base, "name": item.name,
                          "arguments": arguments})
        await self._finish(resp, "completed", None)

    async def _emit_text(self, resp: _Response) -> None:
        base = {"response_id": resp.id, "item_id": resp.item.id, "output_index": 0, "content_index": 0}
        words = resp.transcript.split(" ")
        await self._send(*[{"type": "response.output_text.delta", **base,
                            "delta": w if i == 0 else " " + w} for i, w in enumerate(words)])
        resp.transcript_sent = resp.transcript
        await self._finish(resp, "completed", None)

    async def _stream_audio(self, resp: _Response) -> None:
        codec = resp.codec
        chunk = codec.bytes_for_ms(self._server.delta_ms)
        audio = resp.audio
        nchunks = max(1, math.ceil(len(audio) / chunk))
        words = resp.transcript.split(" ") if resp.transcript else []
        prefix = (f'{{"type":"response.output_audio.delta","response_id":"{resp.id}",'
                  f'"item_id":"{resp.item.id}","output_index":0,"content_index":0,"event_id":"')
        base = {"response_id": resp.id, "item_id": resp.item.id, "output_index": 0, "content_index": 0}
        period = self._server.delta_ms / 1000 / self._server.pace
        lead = max(1, LEAD_MS // self._server.delta_ms)  # chunks sent at once
        # Chunk number ``lead`` is due one period after the start, the next one period later, ...
        pacer = Pacer(self._clock() + period, period=period)
        word_index = 0
        for n in range(nchunks):
            if n >= lead:
                delay = pacer.delay(self._clock())
                if delay > 0:
                    await self._pause(resp, delay)
            if resp.finished or self._peer_gone:
                return
            frames: list[str] = []
            # Transcript words are spread evenly over the audio, each ahead of the audio it names.
            while word_index < len(words) and word_index * nchunks <= n * len(words):
                text = words[word_index] if word_index == 0 else " " + words[word_index]
                resp.transcript_sent += text
                frames.append(json.dumps({"event_id": self._new_id("event"),
                                          "type": "response.output_audio_transcript.delta", **base,
                                          "delta": text}, separators=(",", ":")))
                word_index += 1
            piece = audio[n * chunk:(n + 1) * chunk]
            if piece:
                resp.sent_bytes += len(piece)
                if not resp.item.truncated:
                    resp.item.produced_ms = int(codec.duration_ms(resp.sent_bytes))
                if resp.first_audio_at is None:
                    resp.first_audio_at = self._clock()
                    self._voice_locked = True
                    if self._timing is not None:
                        self._timing.write("first_audio", self.record.id, resp.first_audio_at,
                                           r=resp.id, kind=resp.kind)
                frames.append(prefix + self._new_id("event") + '","delta":"'
                              + base64.b64encode(piece).decode("ascii") + '"}')
            await self._send_raw(frames)
            if n >= lead:
                pacer.frame_sent(self._clock())
        await self._finish(resp, "completed", None)

    async def _pause(self, resp: _Response, delay: float) -> None:
        # A sleep that _stop_streaming can cut short, without cancelling a task mid-send.
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        handle = loop.call_later(delay, _resolve, fut)
        resp.wake = fut
        try:
            await fut
        finally:
            handle.cancel()
            resp.wake = None

    def _stop_streaming(self, resp: _Response) -> None:
        resp.finished = True
        if resp.wake is not None:
            _resolve(resp.wake)

    async def _finish(self, resp: _Response, status: str, reason: str | None) -> None:
        """Close a response: its parts, its item, then ``response.done``."""
        if resp.status != "in_progress" or self._peer_gone:
            return
        self._stop_streaming(resp)
        if self._active is resp:
            self._active = None
        resp.status = status
        resp.status_reason = reason
        item = resp.item
        item.status = "completed" if status == "completed" else "incomplete"
        events: list[Json] = []
        base = {"response_id": resp.id, "item_id": item.id, "output_index": 0}
        if item.type == "message":
            transcript = resp.transcript if status == "completed" else resp.transcript_sent
            if resp.modality == "audio":
                item.content = [{"type": "output_audio", "transcript": transcript}]
                events += [
                    {"type": "response.output_audio.done", **base, "content_index": 0},
                    {"type": "response.output_audio_transcript.done", **base, "content_index": 0,
                     "transcript": transcript},
                    {"type": "response.content_part.done", **base, "content_index": 0,
                     "part": {"type": "audio", "transcript": transcript}},
                ]
            else:
                item.content = [{"type": "output_text", "text": transcript}]
                events += [
                    {"type": "response.output_text.done", **base, "content_index": 0, "text": transcript},
                    {"type": "response.content_part.done", **base, "content_index": 0,
                     "part": {"type": "text", "text": transcript}},
                ]
        body = item.to_json()
        events.append({"type": "response.output_item.done", "response_id": resp.id, "output_index": 0,
                       "item": body})
        if resp.conversation:
            index = next((i for i, it in enumerate(self._items) if it is item), None)
            previous = self._items[index - 1].id if index else None
            events.append({"type": "conversation.item.done", "item": body, "previous_item_id": previous})
        events.append({"type": "response.done", "response": self._response_json(resp)})
        summary = next((r for r in reversed(self.record.responses) if r["id"] == resp.id), None)
        if summary is not None:
            summary.update(status=status, reason=reason, audio_ms=item.produced_ms, done_at=self._clock())
        if self._timing is not None and resp.first_audio_at is not None:
            self._timing.write("done", self.record.id, self._clock(), r=resp.id, status=status,
                               audio_ms=item.produced_ms,
                               voiced_ms=_voiced_span_ms(resp.audio[:resp.sent_bytes], resp.codec))
        await self._send(*events)
        playback_remaining = 0.0
        if resp.first_audio_at is not None and status == "completed":
            playback_remaining = max(0.0, item.produced_ms / 1000 - (self._clock() - resp.first_audio_at))
        self._arm_idle_timer(playback_remaining)

    def _response_json(self, resp: _Response) -> Json:
        out: Json = {
            "object": "realtime.response",
            "id": resp.id,
            "status": resp.status,
            "status_details": None,
            "output": [],
            "conversation_id": f"conv_{self._tag}" if resp.conversation else None,
            "output_modalities": [resp.modality],
            "max_output_tokens": self._session["max_output_tokens"],
            "audio": {"output": {"format": _format_json(resp.codec), "voice": resp.voice}},
            "usage": None,
            "metadata": resp.metadata,
        }
        if resp.status == "in_progress":
            return out
        if resp.status == "cancelled":
            out["status_details"] = {"type": "cancelled", "reason": resp.status_reason}
        else:
            out["status_details"] = {"type": resp.status}
        out["output"] = [resp.item.to_json()]
        audio_tokens = resp.item.produced_ms // 50  # roughly 20 audio tokens per second
        text_tokens = max(1, len(resp.transcript_sent or resp.item.arguments or "") // 4)
        input_audio = sum(it.audio_ms for it in self._items if it.role == "user") // 100
        input_text = len(self._session["instructions"]) // 4 + sum(len(it.text()) for it in self._items) // 4
        out["usage"] = {
            "total_tokens": audio_tokens + text_tokens + input_audio + input_text,
            "input_tokens": input_audio + input_text,
            "output_tokens": audio_tokens + text_tokens,
            "input_token_details": {"text_tokens": input_text, "audio_tokens": input_audio, "image_tokens": 0,
                                    "cached_tokens": 0,
                                    "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0,
                                                              "image_tokens": 0}},
            "output_token_details": {"text_tokens": text_tokens, "audio_tokens": audio_tokens},
        }
        return out


def _format_json(codec: AudioFormat) -> Json:
    if codec == ULAW_8K:
        return {"type": "audio/pcmu"}
    if codec == ALAW_8K:
        return {"type": "audio/pcma"}
    return {"type": "audio/pcm", "rate": MODEL_RATE_HZ}


def _voiced_span_ms(audio: bytes, codec: AudioFormat) -> list[float]:
    """First and last millisecond of ``audio`` holding a non-zero sample ([0, 0] when none)."""
    samples = codec.decode(audio)
    nonzero = np.flatnonzero(samples)
    if not len(nonzero):
        return [0.0, 0.0]
    per_ms = codec.rate_hz / 1000
    return [round(nonzero[0] / per_ms, 3), round((nonzero[-1] + 1) / per_ms, 3)]


class TimingLog:
    """The JSON-lines timing log (see the module docstring). Written from the event loop through a
    buffered file: a few lines per turn, flushed at close."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "w", encoding="utf-8", buffering=1 << 16)

    def write(self, event: str, session: str, at: float, /, **fields: Any) -> None:
        line = {"e": event, "s": session, "t": at, **fields}
        self._file.write(json.dumps(line, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._file.close()


# --------------------------------------------------------------------------- the server


class SimulatorServer:
    """The realtime-protocol server. ``await start()``, then point the SDK at ``url``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        pace: float = 1.0,
        api_key: str | None = None,
        delta_ms: int = 50,
        clock: Callable[[], float] = time.monotonic,
        max_session_seconds: float = MAX_SESSION_SECONDS,
        events_log: str | None = None,
    ) -> None:
        if pace <= 0:
            raise ValueError("pace must be positive")
        if delta_ms < FRAME_MS or delta_ms % 10:
            raise ValueError("delta_ms must be a multiple of 10 and at least 20")
        self.host = host
        self.port = port
        self.pace = pace
        self.delta_ms = delta_ms
        self.clock = clock
        self.max_session_seconds = max_session_seconds
        self._api_key = api_key
        self.sessions: list[SimulatedSession] = []
        # Connections refused at the handshake or right after it, as (reason, path).
        self.rejections: list[tuple[str, str]] = []
        self._live: set[SimulatedConnection] = set()
        self._runner: web.AppRunner | None = None
        self._closed = False
        self._events_log = events_log
        self.timing_log: TimingLog | None = None

    @property
    def url(self) -> str:
        """The SDK's ``websocket_base_url`` for this server, e.g. ``ws://127.0.0.1:1234/v1``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}/v1"

    async def start(self) -> None:
        greeting_samples()  # fail at start-up, not on the first call, if the package data is missing
        if self._events_log is not None:
            self.timing_log = TimingLog(self._events_log)
        app = web.Application()
        for path in REALTIME_PATHS:
            app.router.add_get(path, self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        address = runner.addresses[0]
        self.port = int(address[1])
        log.info("realtime simulator listening on %s", self.url)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._close_all(1001, "server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.timing_log is not None:
            self.timing_log.close()
            self.timing_log = None

    async def drop_all(self, code: int = 1011) -> None:
        """Close every live session with ``code`` (simulates the model service failing)."""
        await self._close_all(code, "The server had an error while processing your request.")

    async def _close_all(self, code: int, message: str) -> None:
        live = list(self._live)
        if live:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.gather(*(c.close(code, message) for c in live), return_exceptions=True)

    async def __aenter__(self) -> SimulatorServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _auth_error(self, request: web.Request) -> str | None:
        bearer = request.headers.get("Authorization", "")
        key = bearer[7:].strip() if bearer[:7].lower() == "bearer " else None
        api_key = request.headers.get("api-key")
        presented = [k for k in (key, api_key) if k]
        if not presented:
            return ("You didn't provide an API key. You need to provide your API key in an Authorization "
                    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
        if self._api_key is not None and not any(
            secrets.compare_digest(k.encode(), self._api_key.encode()) for k in presented
        ):
            return "Incorrect API key provided."
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        problem = self._auth_error(request)
        if problem is not None:
            self.rejections.append(("unauthorized", request.path))
            return web.json_response({"error": {"message": problem, "type": "invalid_request_error",
                                                "code": "invalid_api_key", "param": None}}, status=401)
        ws = web.WebSocketResponse(max_msg_size=_MAX_MESSAGE_BYTES, autoping=True)
        if not ws.can_prepare(request).ok:
            return web.json_response({"error": {"message": "Expected a WebSocket upgrade request.",
                                                "type": "invalid_request_error", "code": None,
                                                "param": None}}, status=426)
        try:
            await ws.prepare(request)
        except ConnectionResetError:
            # The client gave up during the handshake.
            self.rejections.append(("handshake_aborted", request.path))
            return ws
        if "realtime=v1" in request.headers.get("OpenAI-Beta", ""):
            self.rejections.append(("beta_api_shape_disabled", request.path))
            error = {"type": "invalid_request_error", "code": "beta_api_shape_disabled", "param": None,
                     "event_id": None,
                     "message": "The Realtime API beta shape is disabled; connect without the "
                                "'OpenAI-Beta: realtime=v1' header and use the GA event shapes."}
            await ws.send_str(json.dumps({"type": "error", "event_id": f"event_{_random_tag()}",
                                          "error": error}))
            await ws.close(code=4000, message=b"beta_api_shape_disabled")
            return ws
        model = request.query.get("model") or request.query.get("deployment") or DEFAULT_MODEL
        record = SimulatedSession(id=f"sess_{_random_tag(20)}", model=model, path=request.path,
                                  opened_at=self.clock())
        self.sessions.append(record)
        conn = SimulatedConnection(self, ws, record)
        self._live.add(conn)
        if self.timing_log is not None:
            self.timing_log.write("open", record.id, record.opened_at)
        log.debug("simulated session %s opened (model %s)", record.id, model)
        try:
            await conn.run()
        except Exception:
            # The connection boundary: a bug in one session closes that session only.
            log.error("simulated session %s failed", record.id, exc_info=True)
            await ws.close(code=1011, message=b"internal error")
        finally:
            self._live.discard(conn)
            record.closed_at = self.clock()
            if self.timing_log is not None:
                self.timing_log.write("close", record.id, record.closed_at)
            if record.close_code is None:
                record.close_code = ws.close_code
            log.debug("simulated session %s closed (%s)", record.id, ws.close_code)
        return ws


# --------------------------------------------------------------------------- command line


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "simulator",
        help="run the built-in realtime model simulator (OpenAI Realtime GA protocol)",
        description="Serve the OpenAI Realtime API (GA) locally with a deterministic model: it greets, "
                    "echoes what the caller says and answers 'call_tool:<name> <json>' text with a "
                    "function call. Point clients at the printed websocket_base_url.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port, 0 for any (default 8765)")
    parser.add_argument("--pace", type=float, default=1.0,
                        help="audio delivery speed as a multiple of real time (default 1.0)")
    parser.add_argument("--delta-ms", type=int, default=50, help="audio per delta event in ms (default 50)")
    parser.add_argument("--api-key", default=None,
                        help="accept only this key (default: any key is accepted)")
    parser.add_argument("--events-log", default=None, metavar="FILE",
                        help="write a JSON line per timing event (monotonic clock) to FILE "
                             "(load benchmarks)")
    parser.add_argument("--uvloop", action="store_true", help="use uvloop's event loop when installed")
    parser.set_defaults(func=_run_command)


def _run_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvloop: Any = None
    if args.uvloop:
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed; using asyncio's loop")
    try:
        if uvloop is not None:
            uvloop.run(_serve(args))
        else:
            asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
    return 0


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = SimulatorServer(args.host, args.port, pace=args.pace, api_key=args.api_key,
                             delta_ms=args.delta_ms, events_log=args.events_log)
    async with server:
        print(f"realtime simulator ready: websocket_base_url={server.url}", flush=True)
        await stop.wait()

