"""The session configuration of the OpenAI Realtime API (GA), validated as the service validates it.

Sans-I/O: ``apply_session_update(current, patch)`` returns the effective session after a client's
``session.update`` or raises ``InvalidRequest`` with the ``code``, ``param`` and message the service
puts in its ``error`` event; the update is then rejected whole. The ``expect_*`` checks are the
field-level rules the service applies to every client event.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from media.codec import MODEL_RATE_HZ

log = logging.getLogger(__name__)

Samples = npt.NDArray[np.int16]
Json = dict[str, Any]

SERVER_VAD_DEFAULTS: Json = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "idle_timeout_ms": None,
    "create_response": True,
    "interrupt_response": True,
}
SEMANTIC_VAD_DEFAULTS: Json = {
    "type": "semantic_vad",
    "eagerness": "auto",
    "create_response": True,
    "interrupt_response": True,
}
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")

class InvalidRequest(Exception):
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


def default_session(session_id: str, model: str, expires_at: int) -> Json:
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
        "expires_at": expires_at,
        "audio": {
            "input": {
                "format": dict(pcm),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": dict(SERVER_VAD_DEFAULTS),
            },
            "output": {"format": dict(pcm), "voice": "marin", "speed": 1.0},
        },
    }


def check_keys(obj: Json, allowed: tuple[str, ...] | frozenset[str], where: str) -> None:
    for key in obj:
        if key not in allowed:
            raise InvalidRequest(f"Unknown parameter: '{where}.{key}'.", code="unknown_parameter",
                                 param=f"{where}.{key}")


def expect_dict(value: Any, where: str) -> Json:
    if not isinstance(value, dict):
        raise InvalidRequest(f"Invalid type for '{where}': expected an object, but got "
                             f"{type(value).__name__} instead.", code="invalid_type", param=where)
    return value


def expect_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"Invalid type for '{where}': expected a string, but got "
                             f"{type(value).__name__} instead.", code="invalid_type", param=where)
    return value


def expect_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"Invalid type for '{where}': expected a boolean, but got "
                             f"{type(value).__name__} instead.", code="invalid_type", param=where)
    return value


def expect_int(value: Any, where: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"Invalid type for '{where}': expected an integer, but got "
                             f"{type(value).__name__} instead.", code="invalid_type", param=where)
    if value < low or (high is not None and value > high):
        bound = f"at least {low}" if high is None else f"between {low} and {high}"
        raise InvalidRequest(f"Invalid '{where}': expected a value {bound}, but got {value} instead.",
                             param=where)
    return value


def expect_number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"Invalid type for '{where}': expected a number, but got "
                             f"{type(value).__name__} instead.", code="invalid_type", param=where)
    if not (low <= value <= high):
        raise InvalidRequest(f"Invalid '{where}': expected a value between {low} and {high}, but got "
                             f"{value} instead.", param=where)
    return float(value)


def expect_choice(value: Any, where: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        listed = ", ".join(f"'{c}'" for c in choices)
        raise InvalidRequest(f"Invalid value: {json.dumps(value)}. Supported values are: {listed}.",
                             param=where)
    return str(value)


def audio_format(value: Any, where: str) -> Json:
    fmt = expect_dict(value, where)
    kind = expect_choice(fmt.get("type"), f"{where}.type", ("audio/pcm", "audio/pcmu", "audio/pcma"))
    if kind == "audio/pcm":
        check_keys(fmt, ("type", "rate"), where)
        rate = fmt.get("rate", MODEL_RATE_HZ)
        if rate != MODEL_RATE_HZ or isinstance(rate, bool):
            raise InvalidRequest(f"Invalid value: {json.dumps(rate)}. Supported values are: 24000.",
                                 param=f"{where}.rate")
        return {"type": kind, "rate": MODEL_RATE_HZ}
    check_keys(fmt, ("type",), where)
    return {"type": kind}


def turn_detection(value: Any, where: str) -> Json | None:
    if value is None:
        return None
    td = expect_dict(value, where)
    kind = expect_choice(td.get("type"), f"{where}.type", ("server_vad", "semantic_vad"))
    if kind == "server_vad":
        check_keys(td, tuple(SERVER_VAD_DEFAULTS), where)
        out = dict(SERVER_VAD_DEFAULTS)
        if "threshold" in td:
            out["threshold"] = expect_number(td["threshold"], f"{where}.threshold", 0.0, 1.0)
        for key in ("prefix_padding_ms", "silence_duration_ms"):
            if key in td:
                out[key] = expect_int(td[key], f"{where}.{key}", 0, 10_000)
        if td.get("idle_timeout_ms") is not None:
            out["idle_timeout_ms"] = expect_int(td["idle_timeout_ms"], f"{where}.idle_timeout_ms", 1)
    else:
        check_keys(td, tuple(SEMANTIC_VAD_DEFAULTS), where)
        out = dict(SEMANTIC_VAD_DEFAULTS)
        if "eagerness" in td:
            out["eagerness"] = expect_choice(td["eagerness"], f"{where}.eagerness",
                                              ("low", "medium", "high", "auto"))
    for key in ("create_response", "interrupt_response"):
        if key in td:
            out[key] = expect_bool(td[key], f"{where}.{key}")
    return out


def parse_tools(value: Any, where: str) -> list[Json]:
    if not isinstance(value, list):
        raise InvalidRequest(f"Invalid type for '{where}': expected an array.", code="invalid_type",
                             param=where)
    tools: list[Json] = []
    for i, raw in enumerate(value):
        tool = expect_dict(raw, f"{where}[{i}]")
        kind = expect_choice(tool.get("type", "function"), f"{where}[{i}].type", ("function", "mcp"))
        if kind == "function":
            check_keys(tool, ("type", "name", "description", "parameters"), f"{where}[{i}]")
            if "name" not in tool:
                raise InvalidRequest(f"Missing required parameter: '{where}[{i}].name'.",
                                     code="missing_required_parameter", param=f"{where}[{i}].name")
            expect_str(tool["name"], f"{where}[{i}].name")
            if "parameters" in tool:
                expect_dict(tool["parameters"], f"{where}[{i}].parameters")
        tools.append(dict(tool, type=kind))
    return tools


def tool_choice(value: Any, where: str) -> Any:
    if isinstance(value, str):
        return expect_choice(value, where, ("auto", "none", "required"))
    choice = expect_dict(value, where)
    expect_choice(choice.get("type"), f"{where}.type", ("function", "mcp"))
    return dict(choice)


def output_modalities(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or len(value) != 1:
        raise InvalidRequest(f"Invalid '{where}': exactly one of 'audio' or 'text' is supported.",
                             param=where)
    return [expect_choice(value[0], f"{where}[0]", ("audio", "text"))]


def max_output_tokens(value: Any, where: str) -> int | str:
    if value == "inf":
        return "inf"
    return expect_int(value, where, 1, 4096)


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
    patch = expect_dict(patch, "session")
    if "type" not in patch:
        raise InvalidRequest("Missing required parameter: 'session.type'.",
                             code="missing_required_parameter", param="session.type")
    expect_choice(patch["type"], "session.type", ("realtime",))
    check_keys(patch, _SESSION_KEYS, "session")
    new = copy.deepcopy(current)
    if "model" in patch:
        new["model"] = expect_str(patch["model"], "session.model")
    if "instructions" in patch:
        new["instructions"] = expect_str(patch["instructions"], "session.instructions")
    if "output_modalities" in patch:
        new["output_modalities"] = output_modalities(patch["output_modalities"], "session.output_modalities")
    if "tools" in patch:
        new["tools"] = parse_tools(patch["tools"], "session.tools")
    if "tool_choice" in patch:
        new["tool_choice"] = tool_choice(patch["tool_choice"], "session.tool_choice")
    if "max_output_tokens" in patch:
        new["max_output_tokens"] = max_output_tokens(patch["max_output_tokens"], "session.max_output_tokens")
    for key in ("tracing", "truncation", "prompt", "include", "parallel_tool_calls", "reasoning"):
        if key in patch:
            new[key] = copy.deepcopy(patch[key])
    if "audio" in patch:
        audio = expect_dict(patch["audio"], "session.audio")
        check_keys(audio, ("input", "output"), "session.audio")
        if "input" in audio:
            ain = expect_dict(audio["input"], "session.audio.input")
            check_keys(ain, ("format", "transcription", "noise_reduction", "turn_detection"),
                        "session.audio.input")
            target = new["audio"]["input"]
            if "format" in ain:
                target["format"] = audio_format(ain["format"], "session.audio.input.format")
            if "turn_detection" in ain:
                target["turn_detection"] = turn_detection(ain["turn_detection"],
                                                           "session.audio.input.turn_detection")
            if "noise_reduction" in ain:
                nr = ain["noise_reduction"]
                if nr is not None:
                    nr = expect_dict(nr, "session.audio.input.noise_reduction")
                    check_keys(nr, ("type", "strength"), "session.audio.input.noise_reduction")
                    expect_choice(nr.get("type"), "session.audio.input.noise_reduction.type",
                                   ("near_field", "far_field"))
                    nr = dict(nr)
                target["noise_reduction"] = nr
            if "transcription" in ain:
                tr = ain["transcription"]
                if tr is not None:
                    tr = expect_dict(tr, "session.audio.input.transcription")
                    check_keys(tr, ("model", "language", "languages", "prompt", "keywords", "delay"),
                                "session.audio.input.transcription")
                    if "model" in tr:
                        expect_str(tr["model"], "session.audio.input.transcription.model")
                    tr = dict(tr)
                target["transcription"] = tr
        if "output" in audio:
            aout = expect_dict(audio["output"], "session.audio.output")
            check_keys(aout, ("format", "voice", "speed"), "session.audio.output")
            target = new["audio"]["output"]
            if "format" in aout:
                target["format"] = audio_format(aout["format"], "session.audio.output.format")
            if "voice" in aout:
                voice = aout["voice"]
                if isinstance(voice, dict):
                    check_keys(voice, ("id",), "session.audio.output.voice")
                    expect_str(voice.get("id"), "session.audio.output.voice.id")
                    voice = dict(voice)
                else:
                    # The service knows its voices: an unknown name fails the whole update.
                    expect_choice(expect_str(voice, "session.audio.output.voice"),
                                  "session.audio.output.voice", VOICES)
                if voice != target["voice"] and voice_locked:
                    raise InvalidRequest(
                        "Cannot update a conversation's voice if assistant audio is present.",
                        code="cannot_update_voice", param="session.audio.output.voice")
                target["voice"] = voice
            if "speed" in aout:
                target["speed"] = expect_number(aout["speed"], "session.audio.output.speed", 0.25, 1.5)
    return new
