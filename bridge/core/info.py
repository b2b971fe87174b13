"""What a call is, as the records and logs see it: its identity, outcome and statistics."""

from __future__ import annotations

import enum
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tenants.config import TenantConfig


class Outcome(enum.StrEnum):
    NORMAL = "normal"
    CALLER_HANGUP = "caller_hangup"
    AGENT_HANGUP = "agent_hangup"
    TRANSFERRED = "transferred"
    MODEL_ERROR = "model_error"
    MODEL_REJECTED_CONFIG = "model_rejected_config"  # the model refused the tenant's session.update
    REFUSED = "refused"
    PROTOCOL_ERROR = "protocol_error"
    SHUTDOWN = "shutdown"
    TIMEOUT = "timeout"
    IDLE = "idle"  # the caller's leg sent no audio for too long
    ERROR = "error"



@dataclass(slots=True)
class CallInfo:
    transport: str
    tenant: TenantConfig
    dialled: str
    caller_id: str = ""
    call_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started_at: float = field(default_factory=time.time)  # wall clock, for records only
    answered_at: float | None = None
    ended_at: float | None = None
    outcome: Outcome | None = None
    barge_ins: int = 0
    transfer_target: str | None = None


@dataclass(slots=True)
class CallStatistics:
    frames_in: int = 0
    frames_out: int = 0
    agent_frames: int = 0
    inbound_dropped: int = 0
    underruns: int = 0
    truncates: list[tuple[str, int]] = field(default_factory=list)
    response_latencies: list[float] = field(default_factory=list)
    barge_in_reactions: list[float] = field(default_factory=list)


class CallLogAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = kwargs.setdefault("extra", {})
        extra.update(self.extra or {})
        return f"[{self.extra['call_id'][:8]} {self.extra['tenant']}] {msg}", kwargs  # type: ignore[index]


def mask_number(number: str) -> str:
    """A caller's number for logs: enough to tell calls apart, not enough to identify the caller."""
    if not number:
        return "unknown"
    return "*" * max(0, min(len(number) - 4, 8)) + number[-4:]

