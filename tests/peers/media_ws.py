"""The far ends of WebSocket media streams: a plain /ws/audio client, Twilio, FreeSWITCH.

Each peer is a real ``websockets`` client. It records every message with its monotonic arrival
time, sends caller audio on a deadline schedule (one frame per frame period, never faster), and
the peers that queue agent audio and play it on their own clock (Twilio, the jambonz fork of
mod_audio_fork) are modelled by :class:`RemotePlayer`: a frame is played ``delay`` seconds after
it arrives, or right after the frame before it; marks are echoed once the audio before them has
played; a clear (``clear`` / ``killAudio``) drops what is queued and echoes the pending marks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame
from websockets.streams import StreamReader

from sip import freeswitch as fs
from sip import twilio as tw

FRAME_SECONDS = 0.020


def read_frame(data: bytes, *, mask: bool) -> Frame:
    """Exactly one whole frame, read with the ``websockets`` library's own parser: ``mask`` as a
    server reads a client's frames, unmasked as a client reads a server's."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=mask)
    try:
        next(parser)
    except StopIteration as done:
        assert reader.at_eof(), "bytes left over after the frame"
        return done.value
    raise AssertionError("incomplete frame")


@dataclass
class Received:
    at: float
    data: str | bytes

    @property
    def is_text(self) -> bool:
        return isinstance(self.data, str)


@dataclass
class Played:
    start: float
    end: float
    payload: bytes


@dataclass
class RemotePlayer:
    """A far end that plays queued audio at real time after a fixed playout delay."""

    delay: float
    frame_seconds: float = FRAME_SECONDS
    echo: Callable[[str, bool], None] | None = None  # (mark name, cleared)
    played: list[Played] = field(default_factory=list)
    clears: list[float] = field(default_factory=list)
    _queue: list[tuple[float, float, bytes | None, str | None]] = field(default_factory=list)
    _last_end: float = 0.0
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def audio(self, payload: bytes, now: float) -> None:
        start = max(now + self.delay, self._last_end)
        end = start + self.frame_seconds
        self._last_end = end
        self._queue.append((start, end, payload, None))
        self._wake.set()

    def mark(self, name: str, now: float) -> None:
        at = max(now, self._last_end)
        self._queue.append((at, at, None, name))
        self._wake.set()

    def clear(self, now: float) -> None:
        self.clears.append(now)
        kept = []
        for start, _end, payload, name in self._queue:
            if payload is not None and start < now:
                # Being played right now: the part before the clear was heard.
                self.played.append(Played(start, now, payload))
            elif name is not None and self.echo is not None:
                self.echo(name, True)
        self._queue = kept
        self._last_end = now
        self._wake.set()

    def heard_seconds(self, until: float = float("inf")) -> float:
        return sum(max(0.0, min(p.end, until) - p.start) for p in self.played)

    async def run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            start, end, payload, name = self._queue[0]
            due = end if payload is not None else start
            now = time.monotonic()
            if now < due:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), due - now)
                continue
            self._queue.pop(0)
            if payload is not None:
                self.played.append(Played(start, end, payload))
            elif self.echo is not None and name is not None:
                self.echo(name, False)


class WsPeer:
    """A WebSocket client that records what it receives and sends on a deadline schedule."""

    def __init__(self) -> None:
        self.ws: ClientConnection | None = None
        self.received: list[Received] = []
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason: str = ""
        self._tasks: list[asyncio.Task[None]] = []

    async def connect(self, url: str, subprotocols: Iterable[str] | None = None, **options: Any) -> None:
        """``options`` go to ``websockets.connect``: ``additional_headers``, ``origin``, and
        ``local_addr`` (the source address, passed on to the socket)."""
        self.ws = await websockets.connect(
            url, subprotocols=list(subprotocols) if subprotocols else None,  # type: ignore[misc]
            compression=None, max_size=None, ping_interval=None, **options,
        )
        self._tasks.append(asyncio.create_task(self._receive()))

    async def _receive(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                now = time.monotonic()
                self.received.append(Received(now, message))
                self.on_message(message, now)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason or ""
            self.closed.set()

    def on_message(self, message: str | bytes, now: float) -> None:
        return None

    async def send(self, message: str | bytes) -> None:
        assert self.ws is not None
        with contextlib.suppress(websockets.ConnectionClosed):
            await self.ws.send(message)

    async def send_paced(
        self, messages: Iterable[str | bytes], period: float, start: float | None = None
    ) -> None:
        """One message per ``period`` against ``start + n * period``; stops if the socket closes."""
        t0 = time.monotonic() if start is None else start
        for n, message in enumerate(messages):
            delay = t0 + n * period - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.closed.is_set():
                return
            await self.send(message)

    async def close_code_within(self, seconds: float = 10.0) -> int | None:
        """The close code, once the daemon has closed the socket (TimeoutError otherwise)."""
        await asyncio.wait_for(self.closed.wait(), seconds)
        return self.close_code

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def frames(payload: bytes, frame_bytes: int) -> list[bytes]:
    return [payload[i : i + frame_bytes] for i in range(0, len(payload), frame_bytes)]


class TwilioPeer(WsPeer):
    """Plays Twilio's side of a bidirectional Media Stream."""

    def __init__(self, playout_delay: float = 0.2) -> None:
        super().__init__()
        self.carrier = tw.TwilioCarrier("MZ" + "0" * 32, "CA" + "1" * 32, "AC" + "2" * 32)
        self.player = RemotePlayer(playout_delay, echo=self._echo)
        self.media: list[tuple[float, bytes]] = []
        self.marks: list[tuple[float, str]] = []
        self.echoed: list[tuple[str, bool]] = []
        self.clear_at: list[float] = []
        self.app_events: list[tw.AppEvent] = []

    async def start(self, url: str, params: dict[str, str], **options: Any) -> None:
        await self.connect(url, **options)
        self._tasks.append(asyncio.create_task(self.player.run()))
        await self.send(self.carrier.connected())
        await self.send(self.carrier.start(params))

    def _echo(self, name: str, cleared: bool) -> None:
        self.echoed.append((name, cleared))
        if self.ws is not None and not self.closed.is_set():
            self._tasks.append(asyncio.create_task(self.send(self.carrier.mark(name))))

    def on_message(self, message: str | bytes, now: float) -> None:
        event = tw.parse_app_message(message)
        self.app_events.append(event)
        if isinstance(event, tw.AppMedia):
            self.media.append((now, event.payload))
            self.player.audio(event.payload, now)
        elif isinstance(event, tw.AppMark):
            self.marks.append((now, event.name))
            self.player.mark(event.name, now)
        elif isinstance(event, tw.Clear):
            self.clear_at.append(now)
            self.player.clear(now)

    async def play_ulaw(self, ulaw: bytes, start: float | None = None) -> None:
        await self.send_paced((self.carrier.media(f) for f in frames(ulaw, 160)), FRAME_SECONDS, start)

    async def stop(self) -> None:
        await self.send(self.carrier.stop())


class FreeSwitchPeer(WsPeer):
    """Plays FreeSWITCH's side: mod_audio_fork (BINARY down, killAudio, marks) or mod_audio_stream."""

    def __init__(self, playout_delay: float = 0.15) -> None:
        super().__init__()
        self.player = RemotePlayer(playout_delay, echo=self._echo)
        self.audio: list[tuple[float, bytes]] = []
        self.commands: list[tuple[float, fs.Command]] = []
        self.kills: list[float] = []

    async def start(self, url: str, metadata: dict[str, object] | None, subprotocol: str | None) -> None:
        await self.connect(url, [subprotocol] if subprotocol else None)
        self._tasks.append(asyncio.create_task(self.player.run()))
        if metadata is not None:
            await self.send(fs.metadata_message(metadata))

    def _echo(self, name: str, cleared: bool) -> None:
        if self.ws is not None and not self.closed.is_set():
            self._tasks.append(asyncio.create_task(self.send(fs.mark_echo_message(name, cleared=cleared))))

    def on_message(self, message: str | bytes, now: float) -> None:
        if isinstance(message, bytes):
            self.audio.append((now, message))
            self.player.audio(message, now)
            return
        command = fs.parse_command(message)
        self.commands.append((now, command))
        if isinstance(command, fs.StreamAudio):
            self.audio.append((now, command.audio))
            self.player.audio(command.audio, now)
        elif isinstance(command, fs.KillAudio):
            self.kills.append(now)
            self.player.clear(now)
        elif isinstance(command, fs.MarkCommand):
            self.player.mark(command.name, now)

    async def play_l16(self, pcm: bytes, rate_hz: int, start: float | None = None) -> None:
        await self.send_paced(frames(pcm, rate_hz // 50 * 2), FRAME_SECONDS, start)


def rms(payload: bytes, ulaw: bool = False) -> float:
    if ulaw:
        from media.g711 import ulaw_decode

        samples = ulaw_decode(payload).astype(np.float64)
    else:
        samples = np.frombuffer(payload, dtype=np.int16).astype(np.float64)
    return float(np.sqrt(np.mean(samples**2))) if len(samples) else 0.0


def decode_json(message: str) -> dict[str, object]:
    return json.loads(message)  # type: ignore[no-any-return]
