"""Live call events: what ops staff watch while calls are in progress.

Theory of operation
-------------------
Each call's tap gets a ``LiveTap`` (beside the recorder's, through ``TeeTap``); it turns what the
call reports into events and hands them to the process's ``LiveEvents``, which copies each event
into the queue of every subscriber allowed to see the call's tenant. Publishing never waits: a
subscriber's queue is bounded, and when a slow reader lets it fill the oldest event is dropped
and counted (the next event the subscriber reads says how many it missed). A call is never slowed
by who watches it.

Events (JSON objects; every one has ``type``, ``seq``, ``at`` (Unix seconds), and, but for
``snapshot`` and ``dropped``, ``call_id`` and ``tenant``)::

    snapshot           first event of a subscription: {"calls": [call state...]} in progress
    call.started       transport, dialled, caller_id
    transcription      role (caller|agent), text, final (bool): deltas as they come, then the line
    agent_speaking     the caller starts hearing the agent
    agent_listening    the agent stopped (played out, or cut off)
    barge_in           played_ms: what the caller heard of the agent's cut-off turn
    dtmf               digit
    tool_call          tool (end_call|transfer_call), arguments
    transfer           target, kind, ok
    call.ended         outcome
    evaluation         overall_score, summary (after the call)
    evaluation_error   error (after the call)
    dropped            count: events this subscriber missed
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bridge.core.info import CallInfo
    from bridge.core.leg import CallTap
    from bridge.ops.metrics import Metrics

Json = dict[str, Any]

QUEUE_EVENTS = 256  # per subscriber
TRANSCRIPT_KEPT = 50  # final lines kept per call in progress, for the snapshot


@dataclass(slots=True)
class _CallState:
    call_id: str
    tenant: str
    transport: str
    dialled: str
    caller_id: str
    started_at: float
    speaking: bool = False
    transcript: deque[Json] = field(default_factory=lambda: deque(maxlen=TRANSCRIPT_KEPT))

    def view(self) -> Json:
        return {"call_id": self.call_id, "tenant": self.tenant, "transport": self.transport,
                "dialled": self.dialled, "caller_id": self.caller_id, "started_at": self.started_at,
                "speaking": self.speaking, "transcript": list(self.transcript)}


class Subscription:
    """One reader's bounded queue. ``get()`` waits for the next event."""

    def __init__(self, hub: LiveEvents, tenant: str | None, size: int) -> None:
        self._hub = hub
        self.tenant = tenant  # None: every tenant
        self._queue: deque[Json] = deque()
        self._size = size
        self._ready = asyncio.Event()
        self.dropped = 0
        self._unreported = 0

    def wants(self, tenant: str) -> bool:
        return self.tenant is None or self.tenant == tenant

    def put(self, event: Json) -> None:
        if len(self._queue) >= self._size:
            self._queue.popleft()
            self.dropped += 1
            self._unreported += 1
            self._hub.metrics_dropped()
        self._queue.append(event)
        self._ready.set()

    async def get(self) -> Json:
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        if self._unreported:
            count, self._unreported = self._unreported, 0
            return {"type": "dropped", "seq": 0, "at": time.time(), "count": count}
        return self._queue.popleft()

    def close(self) -> None:
        self._hub.unsubscribe(self)


class LiveEvents:
    def __init__(self, metrics: Metrics | None = None, *, queue_size: int = QUEUE_EVENTS) -> None:
        self._metrics = metrics
        self._queue_size = queue_size
        self._subscribers: set[Subscription] = set()
        self._calls: dict[str, _CallState] = {}
        self._seq = itertools.count(1)

    def metrics_dropped(self) -> None:
        if self._metrics is not None:
            self._metrics.live_events_dropped.inc()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self, tenant: str | None) -> Subscription:
        """A new subscription; its first event is the snapshot of the calls it may see."""
        sub = Subscription(self, tenant, self._queue_size)
        calls = [c.view() for c in self._calls.values() if sub.wants(c.tenant)]
        sub.put({"type": "snapshot", "seq": next(self._seq), "at": time.time(), "calls": calls})
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def publish(self, tenant: str, call_id: str, kind: str, /, **fields: Any) -> None:
        event: Json = {"type": kind, "seq": next(self._seq), "at": time.time(), "call_id": call_id,
                       "tenant": tenant, **fields}
        state = self._calls.get(call_id)
        if state is not None:
            if kind == "transcription" and fields.get("final"):
                state.transcript.append({"role": fields.get("role"), "text": fields.get("text"),
                                         "at": event["at"]})
            elif kind in ("agent_speaking", "agent_listening"):
                state.speaking = kind == "agent_speaking"
            elif kind == "call.ended":
                del self._calls[call_id]
        for sub in self._subscribers:
            if sub.wants(tenant):
                sub.put(event)

    def open_call(self, info: CallInfo) -> LiveTap:
        return LiveTap(self, info)

    def call_started(self, info: CallInfo) -> None:
        tenant = info.tenant.slug
        self._calls[info.call_id] = _CallState(info.call_id, tenant, info.transport, info.dialled,
                                               info.caller_id, info.started_at)
        self.publish(tenant, info.call_id, "call.started", transport=info.transport, dialled=info.dialled,
                     caller_id=info.caller_id, started_at=info.started_at)


class LiveTap:
    """A call's tap (``bridge.core.leg.CallTap``) that publishes live events; audio is ignored."""

    def __init__(self, hub: LiveEvents, info: CallInfo) -> None:
        self._hub = hub
        self._info = info
        self._started = False
        self._ended = False

    def caller_audio(self, samples: np.ndarray, rate_hz: int) -> None:
        return None

    def agent_audio(self, samples: np.ndarray, rate_hz: int) -> None:
        return None

    def transcript(self, role: str, text: str, at: float) -> None:
        text = text.strip()
        if text:
            self._publish("transcription", role=role, text=text, final=True)

    def event(self, name: str, **fields: Any) -> None:
        if name == "answered":
            if not self._started:
                self._started = True
                self._hub.call_started(self._info)
            return
        if name == "ended":
            if self._started and not self._ended:
                self._publish("call.ended", outcome=fields.get("outcome"))
                self._ended = True
            return
        if name in ("transcription", "agent_speaking", "agent_listening", "barge_in", "dtmf", "tool_call",
                    "transfer", "hold"):
            self._publish(name, **fields)

    def _publish(self, kind: str, /, **fields: Any) -> None:
        if self._started and not self._ended:
            self._hub.publish(self._info.tenant.slug, self._info.call_id, kind, **fields)


class TeeTap:
    """Two taps as one: the recorder's audio methods are bound directly (no extra call per frame)."""

    def __init__(self, first: CallTap, second: CallTap) -> None:
        self._first = first
        self._second = second
        self.caller_audio = first.caller_audio
        self.agent_audio = first.agent_audio

    def transcript(self, role: str, text: str, at: float) -> None:
        self._first.transcript(role, text, at)
        self._second.transcript(role, text, at)

    def event(self, name: str, **fields: Any) -> None:
        self._first.event(name, **fields)
        self._second.event(name, **fields)


def combined(first: CallTap | None, second: CallTap | None) -> CallTap | None:
    if first is None:
        return second
    if second is None:
        return first
    return TeeTap(first, second)
