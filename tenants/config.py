"""TenantConfig: everything that decides how one tenant's calls behave.

Every field has a documented default so that a record may set only what it needs. Records are
validated strictly: a key that is not a field is an error naming the key (see ``parse_tenant``).
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class TenantError(ValueError):
    """A tenant record that cannot be used."""


class NoiseSuppression(enum.StrEnum):
    ADAPTIVE = "adaptive"  # Speex where the line has steady noise; clean lines and babble untouched
    OFF = "off"
    SPEEX = "speex"  # Speex preprocessor at 8 kHz, always
    WEBRTC = "webrtc"  # WebRTC noise suppression at 16 kHz
    MODEL = "model"  # no local stage; ask the model for its own noise reduction


class AudioMode(enum.StrEnum):
    PCM = "pcm"  # decode, suppress, resample to 24 kHz PCM16
    PASSTHROUGH = "passthrough"  # G.711 mu-law straight to the model (audio/pcmu), no local DSP


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EndOfUtterance(_Frozen):
    """Voice Live's semantic end-of-utterance detection (``end_of_utterance_detection``)."""

    model: Literal["semantic_detection_v1", "semantic_detection_v1_en", "semantic_detection_v1_multilingual"] = (
        "semantic_detection_v1"
    )
    threshold_level: Literal["low", "medium", "high", "default"] | None = None
    timeout_ms: int | None = Field(None, ge=0, le=10000)
    # The older spellings (a 0-1 threshold, a timeout in seconds), still accepted by the service.
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    timeout: float | None = Field(None, ge=0.0, le=10.0)


class ServerVad(_Frozen):
    type: Literal["server_vad"] = "server_vad"
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(300, ge=0, le=5000)
    silence_duration_ms: int = Field(500, ge=0, le=10000)
    interrupt_response: bool = True
    create_response: bool = True
    idle_timeout_ms: int | None = Field(None, ge=5000, le=30000)
    # Voice Live only (rejected for OpenAI sessions when set).
    end_of_utterance_detection: EndOfUtterance | None = None
    auto_truncate: bool | None = None


class SemanticVad(_Frozen):
    type: Literal["semantic_vad"] = "semantic_vad"
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    interrupt_response: bool = True
    create_response: bool = True


class AzureSemanticVad(_Frozen):
    """Voice Live's semantic VAD (``azure_semantic_vad``, ``_en``, ``_multilingual``)."""

    type: Literal["azure_semantic_vad", "azure_semantic_vad_en", "azure_semantic_vad_multilingual"] = (
        "azure_semantic_vad"
    )
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    prefix_padding_ms: int | None = Field(None, ge=0, le=5000)
    silence_duration_ms: int | None = Field(None, ge=0, le=10000)
    speech_duration_ms: int | None = Field(None, ge=0, le=10000)
    remove_filler_words: bool | None = None
    languages: tuple[str, ...] | None = None
    end_of_utterance_detection: EndOfUtterance | None = None
    auto_truncate: bool | None = None
    interrupt_response: bool = True
    create_response: bool = True


TurnDetection = Annotated[ServerVad | SemanticVad | AzureSemanticVad, Field(discriminator="type")]


class VoiceSpec(_Frozen):
    """A voice given as an object, in Voice Live's shape: ``{"type": "azure-custom", "name": ...,
    "endpoint_id": ...}``; a plain name (``"marin"``, ``"pt-BR-FranciscaNeural"``) is a string."""

    type: Literal["openai", "azure-standard", "azure-custom", "azure-personal"]
    name: str = Field(..., min_length=1)
    endpoint_id: str | None = None  # azure-custom
    model: str | None = None  # azure-personal
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    rate: str | None = None
    style: str | None = None
    locale: str | None = None


class TransferTarget(_Frozen):
    """A place the agent may hand the caller to."""

    name: str  # what the model calls it, e.g. "sales"
    description: str = ""
    kind: Literal["extension", "queue", "external"] = "extension"
    destination: str  # extension number, queue name, or external number
    context: str = "from-internal"  # dialplan context to continue in
    announcement: str | None = None  # what the agent says before leaving


class TenantConfig(_Frozen):
    tenant_id: str
    slug: str
    name: str = ""
    active: bool = True
    numbers: tuple[str, ...] = ()  # E.164 numbers, or prefix patterns ending in "*"

    provider: Literal["openai", "azure_openai", "azure_voicelive", "simulator", "default"] = "default"
    model: str | None = None  # None: the deployment's configured model
    instructions: str = "You are a helpful phone assistant. Keep answers short."
    # An OpenAI voice name, an Azure neural voice name (pt-BR-FranciscaNeural,
    # en-US-Ava:DragonHDLatestNeural) or a Voice Live voice object.
    voice: str | VoiceSpec = "marin"
    # Voice Live: sampling temperature of Azure standard voices (0-1).
    voice_temperature: float | None = Field(None, ge=0.0, le=1.0)
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    max_output_tokens: int | Literal["inf"] = "inf"
    speed: float = Field(1.0, ge=0.25, le=1.5)
    language: str | None = None  # e.g. "pt"; hints transcription
    greeting: str | None = None  # what the agent says first; None: wait for the caller
    turn_detection: TurnDetection = Field(default_factory=ServerVad)
    transcription: bool = True
    transcription_model: str = "gpt-4o-mini-transcribe"
    noise_suppression: NoiseSuppression = NoiseSuppression.ADAPTIVE
    noise_suppression_level_db: int = Field(-25, ge=-60, le=0)
    # The model's own noise reduction (noise_suppression "model"); None: the provider's own
    # (Voice Live: azure_deep_noise_suppression; OpenAI: near_field).
    model_noise_reduction: Literal["near_field", "far_field", "azure_deep_noise_suppression"] | None = None
    # Voice Live's server echo cancellation (the agent's own voice removed from caller audio).
    echo_cancellation: bool = False
    audio_mode: AudioMode = AudioMode.PCM
    recording: bool = True
    retention_days: int | None = Field(None, ge=0)
    max_call_duration: float = Field(1800.0, gt=0)
    max_concurrent_calls: int = Field(20, ge=1)
    transfer_targets: tuple[TransferTarget, ...] = ()
    dtmf_transfer_digit: str | None = None  # e.g. "0": press 0 for a human (first transfer target)
    webhook_url: str | None = None
    webhook_secret: str | None = None
    # A setting the provider cannot take: "refuse" keeps the number out of service (reported at
    # start-up and by ``callbridge tenants validate``); "provider_defaults" takes the call with
    # the provider's defaults for that setting.
    unsupported_settings: Literal["refuse", "provider_defaults"] = "refuse"

    @property
    def voice_name(self) -> str:
        """The voice's name, whichever way it was given."""
        return self.voice if isinstance(self.voice, str) else self.voice.name

    # Credential of the tenant's WebSocket media clients (/ws/audio, FreeSWITCH and token-based
    # Twilio-format streams); None: those calls need none unless the deployment requires one.
    media_token: str | None = Field(None, min_length=16, max_length=512, repr=False)

    @field_validator("slug")
    @classmethod
    def _slug_shape(cls, value: str) -> str:
        if not _SLUG.match(value):
            raise ValueError("slug must be lowercase letters, digits, '-' or '_' (max 63)")
        return value


def parse_tenant(record: dict[str, Any]) -> TenantConfig:
    """Validate one tenant record; TenantError names every unknown or invalid key."""
    try:
        return TenantConfig.model_validate(record)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "record"
            if error["type"] == "extra_forbidden":
                problems.append(f"unknown key {where!r}")
            else:
                problems.append(f"{where}: {error['msg']}")
        raise TenantError("; ".join(problems)) from None
