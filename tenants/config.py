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


class ServerVad(_Frozen):
    type: Literal["server_vad"] = "server_vad"
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(300, ge=0, le=5000)
    silence_duration_ms: int = Field(500, ge=0, le=10000)
    interrupt_response: bool = True
    create_response: bool = True
    idle_timeout_ms: int | None = Field(None, ge=5000, le=30000)


class SemanticVad(_Frozen):
    type: Literal["semantic_vad"] = "semantic_vad"
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    interrupt_response: bool = True
    create_response: bool = True


TurnDetection = Annotated[ServerVad | SemanticVad, Field(discriminator="type")]


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
    voice: str = "marin"
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
    model_noise_reduction: Literal["near_field", "far_field"] = "near_field"
    audio_mode: AudioMode = AudioMode.PCM
    recording: bool = True
    retention_days: int | None = Field(None, ge=0)
    max_call_duration: float = Field(1800.0, gt=0)
    max_concurrent_calls: int = Field(20, ge=1)
    transfer_targets: tuple[TransferTarget, ...] = ()
    dtmf_transfer_digit: str | None = None  # e.g. "0": press 0 for a human (first transfer target)
    webhook_url: str | None = None
    webhook_secret: str | None = None

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
