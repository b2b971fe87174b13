"""Caller audio taken in at no more than real time: what every caller leg whose peer can send
faster than real time puts between its socket and the call.

The intake cuts what the peer sends into 20 ms frames and passes them to the call at no more than
real time (``media.pacing.RealTimeLimit``: up to ``INTAKE_LEAD_SECONDS`` ahead, catching up on up
to ``INTAKE_CATCH_UP_SECONDS`` of network delay). Frames beyond that wait in a backlog of
``INTAKE_BACKLOG_SECONDS``; when it is full the oldest is dropped and counted
(``callbridge_frames_dropped_total{direction="inbound",reason="faster_than_real_time"}``). A peer
that sends faster than real time is therefore not an error: it loses audio, never memory, and the
flood neither reaches the model (at the tenant's cost) nor takes the event loop from other calls.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from bridge.core.call import Call
from bridge.core.silence import SilenceWatch
from bridge.ops.metrics import Metrics
from media.codec import FRAME_MS, AudioFormat
from media.pacing import RealTimeLimit

Clock = Callable[[], float]

INTAKE_LEAD_SECONDS = 0.5
INTAKE_CATCH_UP_SECONDS = 2.0
INTAKE_BACKLOG_SECONDS = 1.0


class CallerIntake:
    """Caller audio from a WebSocket peer, passed to the call in 20 ms frames at no more than real time."""

    def __init__(self, call: Call, metrics: Metrics, clock: Clock) -> None:
        fmt: AudioFormat = call.caller_format
        self._call = call
        self._clock = clock
        self._frame_bytes = fmt.frame_bytes
        self._bytes_per_second = fmt.rate_hz * fmt.bytes_per_sample
        self._limit = RealTimeLimit(INTAKE_LEAD_SECONDS, INTAKE_CATCH_UP_SECONDS)
        self._backlog: deque[bytes] = deque()
        self._max_backlog = int(INTAKE_BACKLOG_SECONDS * 1000) // FRAME_MS
        self._ready = asyncio.Event()
        self._dropped = metrics.frames_dropped.labels("inbound", "faster_than_real_time")
        self.dropped_frames = 0
        self.silence: SilenceWatch | None = None  # told of every payload, before any limit

    def _seconds(self, chunk: bytes) -> float:
        return len(chunk) / self._bytes_per_second

    def feed(self, payload: bytes) -> None:
        """Audio in the call's format, any length (whole samples)."""
        if self.silence is not None and payload:
            self.silence.heard()
        step = self._frame_bytes
        for i in range(0, len(payload), step):
            chunk = payload[i : i + step]
            if not self._backlog:
                now = self._clock()
                duration = self._seconds(chunk)
                if self._limit.delay(now, duration) == 0.0:
                    self._limit.admit(now, duration)
                    self._call.receive_audio(chunk)
                    continue
            if len(self._backlog) >= self._max_backlog:
                self._backlog.popleft()
                self.dropped_frames += 1
                self._call.stats.inbound_dropped += 1
                self._dropped.inc()
            self._backlog.append(chunk)
            self._ready.set()

    async def run(self) -> None:
        """Release the backlog as real time allows. Runs for the life of the call."""
        backlog = self._backlog
        while True:
            await self._ready.wait()
            self._ready.clear()
            while backlog:
                duration = self._seconds(backlog[0])
                wait = self._limit.delay(self._clock(), duration)
                if wait > 0.0:
                    await asyncio.sleep(wait)
                    continue  # the head may have been dropped meanwhile
                chunk = backlog.popleft()
                self._limit.admit(self._clock(), duration)
                self._call.receive_audio(chunk)
