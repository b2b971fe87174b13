"""OpenAI Realtime (GA) client event builders and server event names.

Pure functions: tenant settings in, JSON-ready dicts out. The GA shape nests audio settings under
``session.audio.input`` / ``session.audio.output`` and requires ``session.type = "realtime"``
(openai-python ``types/realtime/realtime_session_create_request.py``). Azure Voice Live speaks the
older beta-style dialect (flat ``input_audio_format``, ``response.audio.delta``); ``Dialect.BETA``
builds that shape and ``normalize_event_type`` maps its server event names onto the GA ones so the
call logic handles one vocabulary.
"""

from __future__ import annotations

import binascii
import enum
import json
from dataclasses import dataclass, field
from typing import Any

from sip import voicelive
from tenants.config import AudioMode, AzureSemanticVad, NoiseSuppression, ServerVad, TenantConfig, VoiceSpec


class Dialect(enum.Enum):
    GA = "ga"
    BETA = "beta"  # Azure Voice Live and preview deployments


# Server event types the bridge acts on (GA names).
SESSION_CREATED = "session.created"
SESSION_UPDATED = "session.updated"
SPEECH_STARTED = "input_audio_buffer.speech_started"
SPEECH_STOPPED = "input_audio_buffer.speech_stopped"
COMMITTED = "input_audio_buffer.committed"
AUDIO_DELTA = "response.output_audio.delta"
AUDIO_DONE = "response.output_audio.done"
OUTPUT_TRANSCRIPT_DONE = "response.output_audio_transcript.done"
INPUT_TRANSCRIPT_DONE = "conversation.item.input_audio_transcription.completed"
RESPONSE_CREATED = "response.created"
RESPONSE_DONE = "response.done"
FUNCTION_ARGS_DONE = "response.function_call_arguments.done"
OUTPUT_ITEM_DONE = "response.output_item.done"
ERROR = "error"

_BETA_TO_GA = {
    "response.audio.delta": AUDIO_DELTA,
    "response.audio.done": AUDIO_DONE,
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": OUTPUT_TRANSCRIPT_DONE,
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
    "conversation.item.created": "conversation.item.added",
}


def normalize_event_type(event_type: str) -> str:
    """GA name for a server event type of either dialect; unknown types pass through."""
    return _BETA_TO_GA.get(event_type, event_type)


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters or {"type": "object", "properties": {}},
        }


def _turn_detection(tenant: TenantConfig) -> dict[str, Any]:
    """GA turn detection; Voice Live's semantic detectors become ``semantic_vad``."""
    td = tenant.turn_detection
    if not isinstance(td, ServerVad):
        eagerness = "auto" if isinstance(td, AzureSemanticVad) else td.eagerness
        return {
            "type": "semantic_vad",
            "eagerness": eagerness,
            "create_response": td.create_response,
            "interrupt_response": td.interrupt_response,
        }
    out: dict[str, Any] = {
        "type": "server_vad",
        "threshold": td.threshold,
        "prefix_padding_ms": td.prefix_padding_ms,
        "silence_duration_ms": td.silence_duration_ms,
        "create_response": td.create_response,
        "interrupt_response": td.interrupt_response,
    }
    if td.idle_timeout_ms is not None:
        out["idle_timeout_ms"] = td.idle_timeout_ms
    return out


def _ga_voice(tenant: TenantConfig) -> str | None:
    """The GA voice, or None (the service's default) for a voice OpenAI does not have."""
    voice = tenant.voice
    name = voice.name if isinstance(voice, VoiceSpec) and voice.type == "openai" else voice
    return name if isinstance(name, str) and name in voicelive.OPENAI_VOICES else None


def audio_format_json(tenant: TenantConfig, dialect: Dialect = Dialect.GA) -> dict[str, Any] | str:
    """The model-side audio format for this tenant's calls."""
    passthrough = tenant.audio_mode is AudioMode.PASSTHROUGH
    if dialect is Dialect.BETA:
        return "g711_ulaw" if passthrough else "pcm16"
    if passthrough:
        return {"type": "audio/pcmu"}
    return {"type": "audio/pcm", "rate": 24000}


def session_update(
    tenant: TenantConfig,
    *,
    model: str,
    tools: tuple[ToolSpec, ...] = (),
    dialect: Dialect = Dialect.GA,
) -> dict[str, Any]:
    """The ``session.update`` event that configures the model for one tenant's call."""
    tool_list = [t.to_json() for t in tools]
    if dialect is Dialect.BETA:
        return voicelive.session_update(tenant, tools=tool_list)
    fmt = audio_format_json(tenant, dialect)
    noise: dict[str, Any] | None = None
    if tenant.noise_suppression is NoiseSuppression.MODEL:
        kind = tenant.model_noise_reduction
        noise = {"type": kind if kind in ("near_field", "far_field") else "near_field"}
    transcription: dict[str, Any] | None = None
    if tenant.transcription:
        transcription = {"model": tenant.transcription_model}
        if tenant.language:
            transcription["language"] = tenant.language
    audio_in: dict[str, Any] = {
        "format": fmt,
        "turn_detection": _turn_detection(tenant),
        "transcription": transcription,
        "noise_reduction": noise,
    }
    audio_out: dict[str, Any] = {"format": fmt, "speed": tenant.speed}
    voice = _ga_voice(tenant)
    if voice is not None:
        audio_out["voice"] = voice
    session: dict[str, Any] = {
        "type": "realtime",
        "model": model,
        "instructions": tenant.instructions,
        "output_modalities": ["audio"],
        "audio": {"input": audio_in, "output": audio_out},
        "max_output_tokens": tenant.max_output_tokens,
    }
    if tool_list:
        session["tools"] = tool_list
        session["tool_choice"] = "auto"
    return {"type": "session.update", "session": session}


def greeting_response(greeting: str) -> dict[str, Any]:
    """``response.create`` asking the model to say the tenant's greeting first."""
    return {
        "type": "response.create",
        "response": {
            "instructions": (
                "Start the call by greeting the caller with exactly these words, then wait: "
                + greeting
            ),
        },
    }


_APPEND_HEAD_TEXT = '{"type":"input_audio_buffer.append","audio":"'
_APPEND_TAIL_TEXT = '"}'
# The append event as UTF-8 around its base64 audio (for builders that encode the audio themselves).
APPEND_HEAD = _APPEND_HEAD_TEXT.encode()
APPEND_TAIL = _APPEND_TAIL_TEXT.encode()


def append_audio_json(b64_audio: str) -> str:
    """``input_audio_buffer.append`` serialised directly: this runs 50 times a second per call."""
    return _APPEND_HEAD_TEXT + b64_audio + _APPEND_TAIL_TEXT


def append_audio_message(audio: bytes | bytearray) -> bytes:
    """The same event as UTF-8 bytes, straight from the audio (base64 is ASCII, needs no escaping)."""
    return APPEND_HEAD + binascii.b2a_base64(audio, newline=False) + APPEND_TAIL


def truncate(item_id: str, audio_end_ms: int) -> dict[str, Any]:
    return {
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": max(0, int(audio_end_ms)),
    }


def user_text(text: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
    }


def function_output(call_id: str, output: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": call_id, "output": json.dumps(output)},
    }


def response_create() -> dict[str, Any]:
    return {"type": "response.create"}


def response_cancel() -> dict[str, Any]:
    return {"type": "response.cancel"}
