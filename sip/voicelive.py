"""Azure Voice Live: endpoint forms, voices, and the ``session.update`` a tenant's call sends.

Pure functions. Voice Live speaks the beta-era realtime shape (flat ``input_audio_format``,
``turn_detection`` and ``voice`` at the session's top level) with its own additions
(azure-ai-voicelive ``models/_models.py`` ``RequestSession``): voices as objects
(``{"type": "azure-standard", "name": "pt-BR-FranciscaNeural", "rate": "1.1"}`` or
``{"type": "openai", "name": "alloy"}``), ``azure_semantic_vad`` / ``_en`` / ``_multilingual``
turn detection with ``speech_duration_ms``, ``remove_filler_words`` and
``end_of_utterance_detection``, ``input_audio_noise_reduction`` of type
``azure_deep_noise_suppression``, ``input_audio_echo_cancellation`` of type
``server_echo_cancellation``, ``temperature`` and ``max_response_output_tokens``.

Endpoint forms (the SDK appends ``/voice-live/realtime`` to the endpoint's path)::

    https://<resource>.services.ai.azure.com        AI Foundry resource       key or Entra ID
    https://<resource>.cognitiveservices.azure.com  the same resource's older  key or Entra ID
                                                    custom subdomain
    https://<region>.api.cognitive.microsoft.com    regional endpoint          key only (a token
                                                                               needs a custom
                                                                               subdomain)
    https://<resource>.openai.azure.com             Azure OpenAI host of the   rewritten to
                                                    same resource; it serves   https://<resource>.
                                                    /openai/ paths only        cognitiveservices.azure.com
    http(s)://<anything else>                       a gateway or local server  taken as given
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tenants.config import (
    AudioMode,
    AzureSemanticVad,
    EndOfUtterance,
    NoiseSuppression,
    SemanticVad,
    ServerVad,
    TenantConfig,
    VoiceSpec,
)

# Token scope of Cognitive Services resources (Voice Live included).
COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"
REALTIME_PATH = "/voice-live/realtime"
# API versions the service documents for the realtime endpoint.
API_VERSIONS = ("2025-05-01-preview", "2025-10-01", "2026-01-01-preview", "2026-04-10", "2026-07-15")
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
# Azure neural voice names: <lang>-<REGION>[-<variant>]-<Name>[:<model>]Neural, e.g.
# pt-BR-FranciscaNeural, en-US-AvaMultilingualNeural, en-US-Ava:DragonHDLatestNeural,
# zh-CN-henan-YundengNeural.
_AZURE_VOICE = re.compile(r"^[a-z]{2,3}-[A-Z]{2}(?:-[a-z]+)?-[A-Z][A-Za-z0-9]*(?::[A-Za-z0-9]+)?Neural$")


class EndpointForm(enum.StrEnum):
    FOUNDRY = "services.ai.azure.com"
    COGNITIVE_SERVICES = "cognitiveservices.azure.com"
    REGIONAL = "api.cognitive.microsoft.com"
    AZURE_OPENAI = "openai.azure.com"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class VoiceLiveEndpoint:
    """Where the SDK is pointed (``url``, an http(s) base) and what the configured form allows."""

    configured: str
    url: str
    form: EndpointForm
    entra_id: bool  # a Microsoft Entra token is accepted at this host

    @property
    def realtime_url(self) -> str:
        """The WebSocket URL the SDK opens (without its query)."""
        parts = urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + REALTIME_PATH, "", ""))


class EndpointError(ValueError):
    """An endpoint that is not an http(s) URL."""


def parse_endpoint(configured: str) -> VoiceLiveEndpoint:
    """The endpoint the SDK gets for a configured ``AZURE_VOICELIVE_ENDPOINT`` value."""
    text = configured.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.hostname:
        raise EndpointError(f"voice live endpoint {configured!r} is not an https:// URL")
    host = parts.hostname.lower()
    path = parts.path.rstrip("/")
    # A full realtime URL pasted from the portal: keep its base.
    for tail in (REALTIME_PATH, "/voice-live"):
        if path.endswith(tail):
            path = path[: -len(tail)]
    netloc = parts.netloc
    form = EndpointForm.OTHER
    for candidate in (EndpointForm.FOUNDRY, EndpointForm.COGNITIVE_SERVICES, EndpointForm.REGIONAL,
                      EndpointForm.AZURE_OPENAI):
        if host.endswith("." + candidate.value):
            form = candidate
            break
    if form is EndpointForm.AZURE_OPENAI:
        # The Azure OpenAI host serves /openai/... only; the same resource answers Voice Live on
        # its Cognitive Services subdomain.
        resource = host[: -len("." + form.value)]
        netloc = f"{resource}.{EndpointForm.COGNITIVE_SERVICES.value}"
        path = ""
    elif form is not EndpointForm.OTHER:
        path = ""  # Azure hosts: the SDK adds the whole path
    url = urlunsplit((scheme, netloc, path, "", ""))
    return VoiceLiveEndpoint(configured, url, form, entra_id=form is not EndpointForm.REGIONAL)


# --------------------------------------------------------------------------- voices


def is_azure_voice(name: str) -> bool:
    return bool(_AZURE_VOICE.match(name))


def voice_json(tenant: TenantConfig, *, rate_allowed: bool = True) -> dict[str, Any]:
    """The tenant's voice as a Voice Live voice object."""
    voice = tenant.voice
    if isinstance(voice, VoiceSpec):
        out: dict[str, Any] = {"type": voice.type, "name": voice.name}
        for key in ("endpoint_id", "model", "temperature", "rate", "style", "locale"):
            value = getattr(voice, key)
            if value is not None:
                out[key] = value
    elif voice in OPENAI_VOICES or not is_azure_voice(voice):
        return {"type": "openai", "name": voice}
    else:
        out = {"type": "azure-standard", "name": voice}
    if out["type"] == "openai":
        return out
    if tenant.voice_temperature is not None and "temperature" not in out:
        out["temperature"] = tenant.voice_temperature
    if rate_allowed and tenant.speed != 1.0 and "rate" not in out:
        out["rate"] = _rate(tenant.speed)
    return out


def _rate(speed: float) -> str:
    return f"{speed:.2f}".rstrip("0").rstrip(".")


# --------------------------------------------------------------------------- turn detection


def _eou(eou: EndOfUtterance) -> dict[str, Any]:
    out: dict[str, Any] = {"model": eou.model}
    if eou.threshold_level is not None:
        out["threshold_level"] = eou.threshold_level
    if eou.timeout_ms is not None:
        out["timeout_ms"] = eou.timeout_ms
    if eou.threshold is not None:
        out["threshold"] = eou.threshold
    if eou.timeout is not None:
        out["timeout"] = eou.timeout
    return out


def turn_detection_json(tenant: TenantConfig) -> dict[str, Any]:
    td = tenant.turn_detection
    out: dict[str, Any]
    if isinstance(td, ServerVad):
        out = {
            "type": "server_vad",
            "threshold": td.threshold,
            "prefix_padding_ms": td.prefix_padding_ms,
            "silence_duration_ms": td.silence_duration_ms,
        }
    elif isinstance(td, SemanticVad):
        # Voice Live has no semantic_vad: its own semantic detector is the equivalent.
        out = {"type": "azure_semantic_vad"}
    else:
        assert isinstance(td, AzureSemanticVad)
        out = {"type": td.type}
        for key in ("threshold", "prefix_padding_ms", "silence_duration_ms", "speech_duration_ms",
                    "remove_filler_words"):
            value = getattr(td, key)
            if value is not None:
                out[key] = value
        if td.languages is not None:
            out["languages"] = list(td.languages)
    if isinstance(td, ServerVad | AzureSemanticVad):
        if td.end_of_utterance_detection is not None:
            out["end_of_utterance_detection"] = _eou(td.end_of_utterance_detection)
        if td.auto_truncate is not None:
            out["auto_truncate"] = td.auto_truncate
    out["create_response"] = td.create_response
    out["interrupt_response"] = td.interrupt_response
    return out


# --------------------------------------------------------------------------- session


def audio_format(tenant: TenantConfig) -> str:
    return "g711_ulaw" if tenant.audio_mode is AudioMode.PASSTHROUGH else "pcm16"


def session_update(tenant: TenantConfig, *, tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``session.update`` of a Voice Live session for one tenant's call."""
    fmt = audio_format(tenant)
    session: dict[str, Any] = {
        "modalities": ["text", "audio"],
        "instructions": tenant.instructions,
        "voice": voice_json(tenant),
        "input_audio_format": fmt,
        "output_audio_format": fmt,
        "turn_detection": turn_detection_json(tenant),
        "temperature": tenant.temperature,
        "max_response_output_tokens": tenant.max_output_tokens,
    }
    if fmt == "pcm16":
        session["input_audio_sampling_rate"] = 24000
    if tenant.noise_suppression is NoiseSuppression.MODEL:
        session["input_audio_noise_reduction"] = {
            "type": tenant.model_noise_reduction or "azure_deep_noise_suppression"
        }
    if tenant.echo_cancellation:
        session["input_audio_echo_cancellation"] = {"type": "server_echo_cancellation"}
    if tenant.transcription:
        transcription: dict[str, Any] = {"model": tenant.transcription_model}
        if tenant.language:
            transcription["language"] = tenant.language
        session["input_audio_transcription"] = transcription
    if tools:
        session["tools"] = tools
        session["tool_choice"] = "auto"
    return {"type": "session.update", "session": session}
