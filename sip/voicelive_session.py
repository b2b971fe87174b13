"""The session configuration of Azure Voice Live, validated as the service validates it.

Sans-I/O, like ``sip.realtime_session`` for the OpenAI GA protocol: ``apply_voicelive_update``
returns the effective Voice Live session after a ``session.update`` or raises ``InvalidRequest``
and changes nothing. The shape is the service's (azure-ai-voicelive ``RequestSession``): flat
``input_audio_format`` / ``output_audio_format``, ``voice`` as an OpenAI voice name or a voice
object (``openai``, ``azure-standard``, ``azure-custom``, ``azure-personal``), turn detection
``server_vad`` / ``azure_semantic_vad`` / ``_en`` / ``_multilingual``, noise reduction, echo
cancellation, transcription, ``temperature`` and ``max_response_output_tokens``. GA-only fields
(``type``, ``audio``, ``output_modalities``) are unknown parameters here, as they are to the
service. ``ga_view`` gives the same session in the GA shape the simulator's machinery reads.
"""

from __future__ import annotations

import copy
from typing import Any

from sip.realtime_session import (
    SERVER_VAD_DEFAULTS,
    InvalidRequest,
    check_keys,
    expect_bool,
    expect_choice,
    expect_dict,
    expect_int,
    expect_number,
    expect_str,
    max_output_tokens,
    parse_tools,
    tool_choice,
)
from sip.voicelive import OPENAI_VOICES, is_azure_voice

Json = dict[str, Any]

INPUT_FORMATS = ("pcm16", "g711_ulaw", "g711_alaw")
OUTPUT_FORMATS = ("pcm16", "pcm16_8000hz", "pcm16_16000hz", "g711_ulaw", "g711_alaw")
TURN_TYPES = ("server_vad", "azure_semantic_vad", "azure_semantic_vad_en", "azure_semantic_vad_multilingual")
EOU_MODELS = ("semantic_detection_v1", "semantic_detection_v1_en", "semantic_detection_v1_multilingual")
NOISE_TYPES = ("azure_deep_noise_suppression", "near_field", "far_field")
TRANSCRIPTION_MODELS = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "azure-speech")
VOICE_TYPES = ("openai", "azure-standard", "azure-custom", "azure-personal")

_SERVER_VAD_KEYS = ("type", "threshold", "prefix_padding_ms", "silence_duration_ms",
                    "end_of_utterance_detection", "auto_truncate", "create_response", "interrupt_response")
_SEMANTIC_KEYS = (*_SERVER_VAD_KEYS, "speech_duration_ms", "remove_filler_words", "languages")
_SESSION_KEYS = frozenset({
    "model", "modalities", "animation", "voice", "instructions", "input_audio_sampling_rate",
    "input_audio_format", "output_audio_format", "turn_detection", "input_audio_noise_reduction",
    "input_audio_echo_cancellation", "avatar", "input_audio_transcription", "output_audio_timestamp_types",
    "tools", "tool_choice", "parallel_tool_calls", "temperature", "max_response_output_tokens",
    "reasoning_effort", "interim_response", "include", "metadata",
    # Read-only fields a client may echo back from session.created.
    "id", "object",
})


def default_voicelive_session(session_id: str, model: str) -> Json:
    return {
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "modalities": ["text", "audio"],
        "instructions": "",
        "voice": {"type": "openai", "name": "alloy"},
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "input_audio_sampling_rate": 24000,
        "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                           "silence_duration_ms": 500, "create_response": True,
                           "interrupt_response": True},
        "input_audio_noise_reduction": None,
        "input_audio_echo_cancellation": None,
        "input_audio_transcription": None,
        "tools": [],
        "tool_choice": "auto",
        "temperature": 0.8,
        "max_response_output_tokens": "inf",
    }


def _voice(value: Any, where: str) -> Json:
    if isinstance(value, str):
        # A bare name is an OpenAI voice; Azure voices come as objects.
        expect_choice(value, where, OPENAI_VOICES)
        return {"type": "openai", "name": value}
    voice = expect_dict(value, where)
    kind = expect_choice(voice.get("type"), f"{where}.type", VOICE_TYPES)
    if "name" not in voice:
        raise InvalidRequest(f"Missing required parameter: '{where}.name'.", code="missing_required_parameter",
                             param=f"{where}.name")
    name = expect_str(voice["name"], f"{where}.name")
    if kind == "openai":
        check_keys(voice, ("type", "name"), where)
        expect_choice(name, f"{where}.name", OPENAI_VOICES)
        return {"type": kind, "name": name}
    check_keys(voice, ("type", "name", "endpoint_id", "model", "temperature", "custom_lexicon_url",
                       "custom_text_normalization_url", "prefer_locales", "locale", "style", "pitch",
                       "rate", "volume"), where)
    if kind == "azure-standard" and not is_azure_voice(name):
        raise InvalidRequest(f"Invalid value: '{name}'. Voice name is not a supported Azure standard voice.",
                             code="invalid_voice", param=f"{where}.name")
    if kind == "azure-custom" and not isinstance(voice.get("endpoint_id"), str):
        raise InvalidRequest(f"Missing required parameter: '{where}.endpoint_id'.",
                             code="missing_required_parameter", param=f"{where}.endpoint_id")
    if "temperature" in voice:
        expect_number(voice["temperature"], f"{where}.temperature", 0.0, 1.0)
    if "rate" in voice:
        rate = expect_str(voice["rate"], f"{where}.rate")
        try:
            ok = 0.5 <= float(rate) <= 2.0
        except ValueError:
            ok = False
        if not ok:
            raise InvalidRequest(f"Invalid '{where}.rate': expected a number between 0.5 and 2.0 as a "
                                 f"string, but got '{rate}' instead.", param=f"{where}.rate")
    return dict(voice)


def _eou(value: Any, where: str) -> Json:
    eou = expect_dict(value, where)
    check_keys(eou, ("model", "threshold_level", "timeout_ms", "threshold", "timeout"), where)
    expect_choice(eou.get("model"), f"{where}.model", EOU_MODELS)
    if "threshold_level" in eou:
        expect_choice(eou["threshold_level"], f"{where}.threshold_level", ("low", "medium", "high", "default"))
    if "timeout_ms" in eou:
        expect_int(eou["timeout_ms"], f"{where}.timeout_ms", 0, 10_000)
    return dict(eou)


def _turn_detection(value: Any, where: str) -> Json | None:
    if value is None:
        return None
    td = expect_dict(value, where)
    kind = expect_choice(td.get("type"), f"{where}.type", TURN_TYPES)
    check_keys(td, _SERVER_VAD_KEYS if kind == "server_vad" else _SEMANTIC_KEYS, where)
    out: Json = {"type": kind}
    if "threshold" in td:
        out["threshold"] = expect_number(td["threshold"], f"{where}.threshold", 0.0, 1.0)
    for key in ("prefix_padding_ms", "silence_duration_ms", "speech_duration_ms"):
        if key in td:
            out[key] = expect_int(td[key], f"{where}.{key}", 0, 10_000)
    for key in ("remove_filler_words", "auto_truncate", "create_response", "interrupt_response"):
        if key in td:
            out[key] = expect_bool(td[key], f"{where}.{key}")
    if "languages" in td:
        langs = td["languages"]
        if not isinstance(langs, list) or not all(isinstance(x, str) for x in langs):
            raise InvalidRequest(f"Invalid type for '{where}.languages': expected an array of strings.",
                                 code="invalid_type", param=f"{where}.languages")
        out["languages"] = list(langs)
    if "end_of_utterance_detection" in td and td["end_of_utterance_detection"] is not None:
        out["end_of_utterance_detection"] = _eou(td["end_of_utterance_detection"],
                                                 f"{where}.end_of_utterance_detection")
    out.setdefault("create_response", True)
    out.setdefault("interrupt_response", True)
    return out


def _typed(value: Any, where: str, choices: tuple[str, ...], keys: tuple[str, ...]) -> Json | None:
    if value is None:
        return None
    obj = expect_dict(value, where)
    check_keys(obj, keys, where)
    expect_choice(obj.get("type"), f"{where}.type", choices)
    return dict(obj)


def _transcription(value: Any, where: str) -> Json | None:
    if value is None:
        return None
    tr = expect_dict(value, where)
    check_keys(tr, ("model", "language", "custom_speech", "phrase_list", "prompt"), where)
    expect_choice(tr.get("model"), f"{where}.model", TRANSCRIPTION_MODELS)
    if "language" in tr:
        expect_str(tr["language"], f"{where}.language")
    return dict(tr)


def apply_voicelive_update(current: Json, patch: Any, *, voice_locked: bool) -> Json:
    """The effective Voice Live session after ``session.update``; raises ``InvalidRequest`` and
    changes nothing when any field is invalid."""
    patch = expect_dict(patch, "session")
    check_keys(patch, _SESSION_KEYS, "session")
    new = copy.deepcopy(current)
    if "model" in patch:
        new["model"] = expect_str(patch["model"], "session.model")
    if "instructions" in patch:
        new["instructions"] = expect_str(patch["instructions"], "session.instructions")
    if "modalities" in patch:
        mods = patch["modalities"]
        if not isinstance(mods, list) or not mods:
            raise InvalidRequest("Invalid 'session.modalities': expected a non-empty array.",
                                 param="session.modalities")
        new["modalities"] = [expect_choice(m, "session.modalities", ("text", "audio", "animation", "avatar"))
                             for m in mods]
    if "voice" in patch:
        voice = _voice(patch["voice"], "session.voice")
        if voice != new["voice"] and voice_locked:
            raise InvalidRequest("Cannot update a conversation's voice if assistant audio is present.",
                                 code="cannot_update_voice", param="session.voice")
        new["voice"] = voice
    if "input_audio_format" in patch:
        new["input_audio_format"] = expect_choice(patch["input_audio_format"], "session.input_audio_format",
                                                  INPUT_FORMATS)
    if "output_audio_format" in patch:
        new["output_audio_format"] = expect_choice(patch["output_audio_format"],
                                                   "session.output_audio_format", OUTPUT_FORMATS)
    if "input_audio_sampling_rate" in patch:
        rate = patch["input_audio_sampling_rate"]
        if rate not in (16000, 24000) or isinstance(rate, bool):
            raise InvalidRequest(f"Invalid value: {rate!r}. Supported values are: 16000, 24000.",
                                 param="session.input_audio_sampling_rate")
        new["input_audio_sampling_rate"] = rate
    if "turn_detection" in patch:
        new["turn_detection"] = _turn_detection(patch["turn_detection"], "session.turn_detection")
    if "input_audio_noise_reduction" in patch:
        new["input_audio_noise_reduction"] = _typed(
            patch["input_audio_noise_reduction"], "session.input_audio_noise_reduction", NOISE_TYPES,
            ("type",))
    if "input_audio_echo_cancellation" in patch:
        new["input_audio_echo_cancellation"] = _typed(
            patch["input_audio_echo_cancellation"], "session.input_audio_echo_cancellation",
            ("server_echo_cancellation",), ("type", "reference_source", "channels"))
    if "input_audio_transcription" in patch:
        new["input_audio_transcription"] = _transcription(patch["input_audio_transcription"],
                                                          "session.input_audio_transcription")
    if "tools" in patch:
        new["tools"] = parse_tools(patch["tools"], "session.tools")
    if "tool_choice" in patch:
        new["tool_choice"] = tool_choice(patch["tool_choice"], "session.tool_choice")
    if "temperature" in patch:
        new["temperature"] = expect_number(patch["temperature"], "session.temperature", 0.0, 2.0)
    if "max_response_output_tokens" in patch:
        new["max_response_output_tokens"] = max_output_tokens(patch["max_response_output_tokens"],
                                                              "session.max_response_output_tokens")
    for key in ("animation", "avatar", "output_audio_timestamp_types", "parallel_tool_calls",
                "reasoning_effort", "interim_response", "include", "metadata"):
        if key in patch:
            new[key] = copy.deepcopy(patch[key])
    return new


_GA_FORMATS: dict[str, Json] = {
    "pcm16": {"type": "audio/pcm", "rate": 24000},
    "pcm16_8000hz": {"type": "audio/pcm", "rate": 8000},
    "pcm16_16000hz": {"type": "audio/pcm", "rate": 16000},
    "g711_ulaw": {"type": "audio/pcmu"},
    "g711_alaw": {"type": "audio/pcma"},
}


def ga_view(session: Json, current_ga: Json) -> Json:
    """The Voice Live ``session`` in the GA shape (the simulator's machinery reads that one)."""
    ga = copy.deepcopy(current_ga)
    ga["model"] = session["model"]
    ga["instructions"] = session["instructions"]
    ga["output_modalities"] = ["audio"] if "audio" in session["modalities"] else ["text"]
    ga["tools"] = session["tools"]
    ga["tool_choice"] = session["tool_choice"]
    ga["max_output_tokens"] = session["max_response_output_tokens"]
    td = session["turn_detection"]
    ga_td: Json | None = None
    if td is not None:
        # The simulator's energy detector stands in for both kinds of detection.
        ga_td = dict(SERVER_VAD_DEFAULTS)
        for key in ("threshold", "prefix_padding_ms", "silence_duration_ms", "create_response",
                    "interrupt_response"):
            if key in td:
                ga_td[key] = td[key]
    fmt_in = _GA_FORMATS[session["input_audio_format"]]
    if fmt_in.get("rate") == 24000:
        fmt_in = {"type": "audio/pcm", "rate": session.get("input_audio_sampling_rate", 24000)}
    ga["audio"]["input"] = {
        "format": fmt_in,
        "turn_detection": ga_td,
        "transcription": session["input_audio_transcription"],
        "noise_reduction": None,
    }
    ga["audio"]["output"] = {"format": dict(_GA_FORMATS[session["output_audio_format"]]),
                             "voice": session["voice"]["name"], "speed": 1.0}
    return ga
