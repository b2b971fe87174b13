"""Asterisk's WebSocket media channel (chan_websocket) as the caller leg of a call.

ARI ``externalMedia`` with ``transport=websocket, encapsulation=none, connection_type=server``
creates a ``WebSocket/INCOMING`` channel and a connection id; the daemon connects to
``ws://<asterisk>:8088/media/<connection id>`` with subprotocol ``media`` (PROTOCOLS.md section 3).
Asterisk answers with ``MEDIA_START`` and only then answers the channel, which is when it enters
Stasis and may be bridged.

Theory of operation (``channels/chan_websocket.c``)
---------------------------------------------------
* Toward the caller, BINARY messages are cut into ``optimal_frame_size`` frames and queued;
  Asterisk plays one frame per ``ptime`` on its own timer, so it owns the pacing and the jitter
  between the two hosts. Outside ``START_MEDIA_BUFFERING`` a message's bytes past the last whole
  frame are dropped, so this leg only ever sends whole frames and keeps any remainder for the
  next send.
* Barge-in: ``FLUSH_MEDIA`` empties that queue, marks included (``handle_command``).
* Played position: ahead of each send the leg queues ``MARK_MEDIA <n>``, ``n`` being the number
  of the first frame that follows. A mark is an entry in the same queue and Asterisk handles the
  marks at the head of its queue and then dequeues one frame in the same 20 ms tick
  (``dequeue_frame``), so ``MEDIA_MARK_PROCESSED <n>`` comes back as frame ``n`` starts playing.
  ``unplayed_ms()`` is therefore exact to the frame, and the call subtracts it from what it handed
  over when it truncates the model's item.
  Asterisk before 20.18 / 22.8 ignores ``MARK_MEDIA``; when no mark has come back within
  ``MARK_PROBE_SECONDS`` of the first one, the leg stops sending them and reports nothing unplayed.
* Flow control: ``MEDIA_XOFF`` at 900 queued frames, ``MEDIA_XON`` below 800; frames sent past
  1000 are discarded by Asterisk. While XOFF the leg holds up to ``XOFF_BACKLOG_FRAMES`` frames
  itself (the oldest are dropped and counted) and sends them on XON.
* Control messages are plain text unless Asterisk speaks JSON (``f(json)`` or
  ``control_message_format = json``): the leg answers in the form ``MEDIA_START`` came in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from bridge.ops.metrics import Metrics
from media.codec import ALAW_8K, SLIN_8K, SLIN_16K, SLIN_24K, ULAW_8K, AudioFormat
from sip import chan_websocket as cw
from tenants.config import TransferTarget

log = logging.getLogger(__name__)

TRANSPORT = "chan_websocket"
MEDIA_START_TIMEOUT = 5.0
MARK_PROBE_SECONDS = 2.0
XOFF_BACKLOG_FRAMES = 250  # 5 s of 20 ms frames
# Asterisk holds the media socket's first message until it has answered; a few seconds is plenty.
OPEN_TIMEOUT = 5.0

Clock = Callable[[], float]

FORMATS: dict[str, AudioFormat] = {
    "ulaw": ULAW_8K,
    "alaw": ALAW_8K,
    "slin": SLIN_8K,
    "slin16": SLIN_16K,
    "slin24": SLIN_24K,
}


class MediaWebSocketError(Exception):
    """The media WebSocket could not be opened or did not start."""


class LegControl(Protocol):
    """The signalling side of the call (the Stasis application) that owns hangup and transfer."""

    async def hang_up(self) -> None: ...

    async def transfer(self, target: TransferTarget) -> bool: ...


class MediaSink(Protocol):
    def receive_audio(self, payload: bytes) -> None: ...

    def receive_dtmf(self, digit: str) -> None: ...

    def caller_hung_up(self) -> None: ...

    def protocol_error(self, reason: str) -> None: ...


class MediaWebSocketConnection:
    """One chan_websocket media connection; the ``CallerLeg`` of its call."""

    transport = TRANSPORT
    keepalive = False  # Asterisk fills gaps itself; silence would only lengthen its queue

    def __init__(self, ws: ClientConnection, start: cw.MediaStart, fmt: cw.ControlFormat, *,
                 control: LegControl | None = None, metrics: Metrics | None = None,
                 clock: Clock) -> None:
        self._ws = ws
        self.start = start
        self.control_format = fmt
        self.control = control
        self.metrics = metrics
        self.clock = clock
        audio_format = FORMATS.get(start.format)
        if audio_format is None:
            raise MediaWebSocketError(f"unsupported chan_websocket format {start.format!r}")
        self.audio_format = audio_format
        self.frame_bytes = start.optimal_frame_size or audio_format.frame_bytes
        self.ptime_ms = start.ptime_ms or 20
        self._remainder = b""
        self._backlog: deque[bytes] = deque()
        self._xoff = False
        self.frames_sent = 0
        self.frames_played = 0  # per the last MEDIA_MARK_PROCESSED
        self.backlog_dropped = 0
        self.flushes = 0
        self.xoff_count = 0
        self._marks = True
        self._first_mark_at: float | None = None
        self._marks_seen = 0
        self._closed = False

    # ----------------------------------------------------------------- opening
    @classmethod
    async def open(cls, url: str, *, control: LegControl | None = None, metrics: Metrics | None = None,
                   clock: Clock) -> MediaWebSocketConnection:
        """Connect to ``<media base>/media/<connection id>`` and wait for ``MEDIA_START``."""
        try:
            ws = await connect(url, subprotocols=[cw.SUBPROTOCOL], compression=None, proxy=None,  # type: ignore[list-item]
                               open_timeout=OPEN_TIMEOUT, max_size=2**20, ping_interval=None)
        except InvalidStatus as exc:
            # 404: the connection id is unknown (the channel is gone); 409: already connected.
            raise MediaWebSocketError(f"media WebSocket refused: HTTP {exc.response.status_code}") from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise MediaWebSocketError(f"media WebSocket unreachable: {type(exc).__name__}: {exc}") from None
        try:
            start, fmt = await cls._wait_media_start(ws)
            return cls(ws, start, fmt, control=control, metrics=metrics, clock=clock)
        except BaseException:
            await ws.close()
            raise

    @staticmethod
    async def _wait_media_start(ws: ClientConnection) -> tuple[cw.MediaStart, cw.ControlFormat]:
        early = 0
        try:
            async with asyncio.timeout(MEDIA_START_TIMEOUT):
                while True:
                    message = await ws.recv()
                    if isinstance(message, bytes):
                        early += 1  # audio before MEDIA_START (asterisk#1712): nothing to bridge yet
                        continue
                    event = cw.parse_event(message)
                    if isinstance(event, cw.MediaStart):
                        if early:
                            log.debug("%d media frames arrived before MEDIA_START", early)
                        json_mode = message.lstrip().startswith("{")
                        return event, cw.ControlFormat.JSON if json_mode else cw.ControlFormat.PLAIN
                    log.debug("ignoring %s before MEDIA_START", type(event).__name__)
        except TimeoutError:
            raise MediaWebSocketError(f"no MEDIA_START within {MEDIA_START_TIMEOUT:.0f} s") from None
        except ConnectionClosed:
            raise MediaWebSocketError("media WebSocket closed before MEDIA_START") from None

    # ----------------------------------------------------------------- CallerLeg
    async def send_audio(self, payload: bytes) -> None:
        if self._closed:
            return
        data = self._remainder + payload if self._remainder else payload
        whole = len(data) - len(data) % self.frame_bytes
        self._remainder = data[whole:]
        if not whole:
            return
        frames = [data[i:i + self.frame_bytes] for i in range(0, whole, self.frame_bytes)]
        if self._xoff:
            for frame in frames:
                if len(self._backlog) >= XOFF_BACKLOG_FRAMES:
                    self._backlog.popleft()
                    self.backlog_dropped += 1
                    if self.metrics is not None:
                        self.metrics.frames_dropped.labels("outbound", "remote_xoff").inc()
                self._backlog.append(frame)
            return
        await self._send_frames(frames)

    async def _send_frames(self, frames: list[bytes]) -> None:
        try:
            if self._marks:
                self._check_marks()
            if self._marks:
                if self._first_mark_at is None:
                    self._first_mark_at = self.clock()
                # The mark goes ahead of the frame: chan_websocket handles queued marks and then
                # dequeues the next frame in the same timer tick, so MEDIA_MARK_PROCESSED <n>
                # arrives as frame n starts playing.
                await self._ws.send(cw.mark_media(str(self.frames_sent + 1), self.control_format))
            await self._ws.send(b"".join(frames))
            self.frames_sent += len(frames)
        except ConnectionClosed:
            self._closed = True

    def _check_marks(self) -> None:
        if (self._marks_seen == 0 and self._first_mark_at is not None
                and self.clock() - self._first_mark_at > MARK_PROBE_SECONDS):
            log.info("Asterisk does not answer MARK_MEDIA (before 20.18/22.8?): played position "
                     "is taken from what was sent")
            self._marks = False

    async def clear_playback(self) -> None:
        """Barge-in: Asterisk drops every frame (and mark) still queued."""
        self._remainder = b""
        self._backlog.clear()
        if self._closed:
            return
        self.flushes += 1
        try:
            await self._ws.send(cw.flush_media(self.control_format))
        except ConnectionClosed:
            self._closed = True
        # Whatever was queued is gone: nothing sent so far will still be played.
        self.frames_played = self.frames_sent

    def unplayed_ms(self) -> int:
        """Agent audio handed to Asterisk and not yet played to the caller (exact to one frame)."""
        if not self._marks or self._marks_seen == 0:
            return 0
        pending = self.frames_sent - self.frames_played + len(self._backlog)
        return max(0, pending) * self.ptime_ms

    async def hangup(self) -> None:
        if self.control is not None:
            await self.control.hang_up()
        else:
            with contextlib.suppress(ConnectionClosed):
                await self._ws.send(cw.hangup(self.control_format))
        await self.close()

    async def transfer(self, target: TransferTarget) -> bool:
        if self.control is None:
            return False
        return await self.control.transfer(target)

    # ----------------------------------------------------------------- receiving
    async def run(self, sink: MediaSink) -> None:
        """Read media and events until the socket closes; then the caller leg is gone."""
        try:
            async for message in self._ws:
                if isinstance(message, bytes):
                    sink.receive_audio(message)
                else:
                    await self._on_event(cw.parse_event(message), sink)
        except ConnectionClosed:
            pass
        finally:
            self._closed = True
        sink.caller_hung_up()

    async def _on_event(self, event: Any, sink: MediaSink) -> None:
        if isinstance(event, cw.MediaMarkProcessed):
            if event.correlation_id.isdigit():
                self._marks_seen += 1
                self.frames_played = max(self.frames_played, int(event.correlation_id))
        elif isinstance(event, cw.MediaXoff):
            self._xoff = True
            self.xoff_count += 1
            log.info("Asterisk's media queue is full (MEDIA_XOFF): holding agent audio")
        elif isinstance(event, cw.MediaXon):
            self._xoff = False
            backlog, self._backlog = list(self._backlog), deque()
            if backlog:
                await self._send_frames(backlog)
        elif isinstance(event, cw.DtmfEnd):
            sink.receive_dtmf(event.digit)
        elif isinstance(event, cw.Error):
            log.warning("chan_websocket error: %s", event.text[:200])
        elif isinstance(event, cw.InvalidMessage):
            log.warning("ignoring malformed chan_websocket message: %s", event.reason)
        else:
            log.debug("chan_websocket event %s", type(event).__name__)

    async def close(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await self._ws.close()
