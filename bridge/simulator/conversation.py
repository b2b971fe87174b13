"""Conversation state of one simulated session: items, responses, and the record tests inspect."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from media.codec import AudioFormat

log = logging.getLogger(__name__)

Samples = npt.NDArray[np.int16]
Json = dict[str, Any]

# --------------------------------------------------------------------------- observability record


@dataclass(slots=True)
class SimulatedSession:
    """What one client connection sent and what the simulator decided, for tests to inspect."""

    id: str
    model: str
    path: str
    opened_at: float
    # The effective session in the GA shape (whichever dialect the client spoke) and in the
    # client's own dialect (the same object on the OpenAI protocol, Voice Live's shape there).
    session_config: Json = field(default_factory=dict)
    service_config: Json = field(default_factory=dict)
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
    # The handshake: query parameters, how the client authenticated ("api-key", "bearer",
    # "query"), the credential it presented and the names of its request headers (lowercase).
    query: dict[str, str] = field(default_factory=dict)
    auth: str = ""
    credential: str = ""
    header_names: tuple[str, ...] = ()



# --------------------------------------------------------------------------- conversation state


@dataclass(slots=True)
class Item:
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
class Response:
    id: str
    kind: str
    conversation: bool
    modality: str
    codec: AudioFormat
    voice: Any
    item: Item
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


def resolve_future(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


_ID_ALPHABET = string.ascii_letters + string.digits


def random_tag(n: int = 12) -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(n))
