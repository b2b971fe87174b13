"""A local server of the ARI protocol that plays Asterisk's part in ARI-driven calls.

It keeps the state Asterisk keeps for the requests callbridge makes (channels, Stasis membership,
bridges) and answers the way ``res/ari/resource_channels.c`` and ``resource_bridges.c`` do,
including the errors: ``addChannel`` of a channel that has not entered Stasis yet is 422 "Channel
not in Stasis application", an unknown channel 404, a channel outside Stasis 409. ``Channel`` and
``Bridge`` JSON start from the objects of a call recorded from Asterisk 22.10.1
(``tests/fixtures/ari/transcripts/``), so the shapes are Asterisk's own. (The exact event order of
recorded calls is held against the daemon by ``ari_replay.py``.)

It also plays the far end of the media: the caller's audio goes out over the external media
channel and the agent's audio is received, on the transport the daemon asked for:

* ``UnicastRTP``: a UDP socket that is "Asterisk's" RTP port (``UNICASTRTP_LOCAL_PORT``), sending
  paced RTP with optional loss, duplication and reordering, and RFC 4733 digits;
* ``AudioSocket``: the TCP connection chan_audiosocket makes to the daemon (UUID first);
* ``WebSocket`` (chan_websocket, server mode): ``/media/<connection id>`` with subprotocol
  ``media``; sends MEDIA_START, plays queued frames on its own 20 ms clock, answers MARK_MEDIA
  when the audio before the mark has played, drops the queue on FLUSH_MEDIA, and sends
  MEDIA_XOFF / MEDIA_XON when its queue passes ``xoff_frames`` / falls under ``xon_frames``.
  As in chan_websocket, the channel is answered, and enters Stasis, only once the socket is up.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import itertools
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from media.codec import ALAW_8K, SLIN_8K, SLIN_16K, ULAW_8K, AudioFormat
from sip import audiosocket as aso
from sip import chan_websocket as cw
from sip import rtp

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ari"
FRAME_SECONDS = 0.020

FORMATS: dict[str, AudioFormat] = {"ulaw": ULAW_8K, "alaw": ALAW_8K, "slin": SLIN_8K, "slin16": SLIN_16K}


def _transcript(name: str) -> list[dict[str, Any]]:
    path = FIXTURES / "transcripts" / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _templates() -> dict[str, dict[str, Any]]:
    """Channel and Bridge objects exactly as Asterisk 22.10.1 sent them in a recorded call."""
    call = _transcript("rtp_call")
    caller = next(e["event"]["channel"] for e in call if e["kind"] == "event" and e["event"]["type"] == "StasisStart")
    bridge = next(e["response"] for e in call if e["kind"] == "request" and e["path"].startswith("/bridges/")
                  and e["method"] == "POST" and not e["path"].endswith("addChannel"))
    return {"channel": caller, "bridge": bridge}


TEMPLATES = _templates()


class AriHttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    status: int
    at: float


@dataclass
class ReceivedFrame:
    at: float
    payload: bytes


@dataclass
class Channel:
    id: str
    name: str
    kind: str  # caller, rtp, audiosocket, websocket
    state: str = "Ring"
    caller_name: str = ""
    caller_number: str = ""
    context: str = "default"
    exten: str = "s"
    priority: int = 1
    app_data: str = ""
    in_stasis: bool = False
    bridge: str | None = None
    absorb_dtmf: bool = False
    variables: dict[str, str] = field(default_factory=dict)
    channelvars: dict[str, str] = field(default_factory=dict)
    alive: bool = True
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime()))
    media: Any = None  # RtpPeer | AudioSocketPeer | WebSocketPeer
    continued_to: tuple[str, str, int] | None = None
    hangup_cause: int | None = None
    stasis_entered: asyncio.Event = field(default_factory=asyncio.Event)
    gone: asyncio.Event = field(default_factory=asyncio.Event)

    def to_json(self) -> dict[str, Any]:
        body = copy.deepcopy(TEMPLATES["channel"])
        body.update({
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "caller": {"name": self.caller_name, "number": self.caller_number},
            "connected": {"name": "", "number": ""},
            "dialplan": {
                "context": self.context, "exten": self.exten, "priority": self.priority,
                "app_name": "Stasis" if self.in_stasis else "",
                "app_data": self.app_data if self.in_stasis else "",
            },
            "creationtime": self.created,
        })
        if self.kind != "caller":
            body["protocol_id"] = ""
            body["language"] = "en"
        return body


@dataclass
class Bridge:
    id: str
    name: str
    bridge_type: str
    channels: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        body = copy.deepcopy(TEMPLATES["bridge"])
        body.update({"id": self.id, "bridge_type": self.bridge_type, "name": self.name,
                     "channels": list(self.channels)})
        return body


# --------------------------------------------------------------------------------- media peers


class RtpPeer(asyncio.DatagramProtocol):
    """Asterisk's UnicastRTP end: sends the caller's audio, receives the agent's."""

    def __init__(self, fmt_name: str, target: tuple[str, int]) -> None:
        self.format = FORMATS[fmt_name]
        self.payload_type = rtp.payload_type_for_format(fmt_name)
        self.target = target
        self.sender = rtp.RtpSender(self.payload_type, clock_rate_hz=8000)
        self.received: list[ReceivedFrame] = []
        self.packets: list[rtp.RtpPacket] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.closed = asyncio.Event()
        self._dtmf: list[str] = []
        self.presses: list[str] = []  # digits the bridge passed on to this channel
        self.sent = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        packet = rtp.RtpPacket.parse(data)
        self.packets.append(packet)
        self.received.append(ReceivedFrame(time.monotonic(), packet.payload))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed.set()

    def press(self, digit: str) -> None:
        self.presses.append(digit)
        self._dtmf.append(digit)

    def _send(self, datagram: bytes) -> None:
        if self.transport is not None and not self.closed.is_set():
            self.transport.sendto(datagram, self.target)
            self.sent += 1

    async def play(self, samples: np.ndarray, *, drop: set[int] = frozenset(),  # type: ignore[assignment]
                   duplicate: set[int] = frozenset(), swap: set[int] = frozenset(),  # type: ignore[assignment]
                   start: float | None = None) -> None:
        """Send 20 ms packets on a monotonic schedule. Packet ``n`` in ``drop`` is not sent, in
        ``duplicate`` is sent twice, in ``swap`` is sent after packet ``n + 1``."""
        frame = 160
        t0 = time.monotonic() if start is None else start
        held: bytes | None = None
        n = 0
        offset = 0
        while offset + frame <= len(samples) and not self.closed.is_set():
            delay = t0 + n * FRAME_SECONDS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._dtmf:
                datagrams = self._dtmf_packets(self._dtmf.pop(0))
                # The digit's packets replace audio for their duration, as res_rtp_asterisk does.
                for i, datagram in enumerate(datagrams):
                    delay = t0 + (n + i) * FRAME_SECONDS - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    self._send(datagram)
                n += len(datagrams)
                offset += frame * len(datagrams)
                continue
            payload = self.format.encode(samples[offset:offset + frame].astype(np.int16))
            datagram = self.sender.packetize(payload, frame, marker=self.sender.packets_sent == 0)
            if n in drop:
                pass
            elif n in swap:
                held = datagram
            else:
                self._send(datagram)
                if n in duplicate:
                    self._send(datagram)
                if held is not None:
                    self._send(held)
                    held = None
            n += 1
            offset += frame

    def _dtmf_packets(self, digit: str) -> list[bytes]:
        """RFC 4733: one timestamp for the event, growing duration, the end packet three times."""
        ts = self.sender.timestamp
        out = []
        for i in range(1, 5):
            end = i == 4
            event = rtp.TelephoneEvent.for_digit(digit, end=end, duration=160 * i)
            for _ in range(3 if end else 1):
                out.append(rtp.RtpPacket(rtp.PayloadType.TELEPHONE_EVENT, self.sender.sequence_number, ts,
                                         self.sender.ssrc, event.serialize(), marker=i == 1).serialize())
                self.sender.sequence_number = (self.sender.sequence_number + 1) & 0xFFFF
        self.sender.timestamp = (ts + 160 * 4) & 0xFFFFFFFF
        return out


class AudioSocketPeer:
    """chan_audiosocket: connects to the daemon, sends the UUID, then 20 ms slin frames."""

    def __init__(self, fmt_name: str, uuid_text: str) -> None:
        self.format = FORMATS[fmt_name]
        self.uuid = uuid.UUID(uuid_text)
        self.protocol = aso.AudioSocketProtocol(aso.Side.CLIENT)
        self.received: list[ReceivedFrame] = []
        self.closed = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.hangup_received = False

    async def connect(self, host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        self._writer = writer
        self.protocol.send_uuid(self.uuid)
        writer.write(b"".join(self.protocol.data_to_send()))
        await writer.drain()
        self._reader_task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    self.protocol.receive_eof()
                else:
                    self.protocol.receive_data(data)
                for event in self.protocol.events_received():
                    if isinstance(event, aso.Audio):
                        self.received.append(ReceivedFrame(time.monotonic(), event.payload))
                    elif isinstance(event, aso.Hangup):
                        self.hangup_received = True
                if not data or self.protocol.closed:
                    return
        except (ConnectionError, OSError):
            return
        finally:
            self.closed.set()

    def press(self, digit: str) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self.protocol.send_dtmf(digit)
            self._writer.write(b"".join(self.protocol.data_to_send()))

    async def play(self, samples: np.ndarray, start: float | None = None, **_: Any) -> None:
        frame = self.format.samples_for_ms(20)
        kind = aso.audio_kind_for_rate(self.format.rate_hz)
        t0 = time.monotonic() if start is None else start
        for n, offset in enumerate(range(0, len(samples) - frame + 1, frame)):
            if self.closed.is_set() or self._writer is None or self._writer.is_closing():
                return
            delay = t0 + n * FRAME_SECONDS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.protocol.send_audio(samples[offset:offset + frame].astype(np.int16).tobytes(), kind)
            self._writer.write(b"".join(self.protocol.data_to_send()))

    def close(self) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.close()
        self.closed.set()


class WebSocketPeer:
    """chan_websocket in server mode, for one connection id."""

    def __init__(self, server: AriServer, channel: Channel, fmt_name: str, connection_id: str,
                 control_format: cw.ControlFormat) -> None:
        self.server = server
        self.channel = channel
        self.format = FORMATS[fmt_name]
        self.format_name = fmt_name
        self.connection_id = connection_id
        self.control_format = control_format
        self.frame_bytes = self.format.frame_bytes
        self.queue: list[bytes | tuple[str, str]] = []  # frames and ("mark", id) entries
        self.queued_frames = 0
        self.played: list[ReceivedFrame] = []
        self.commands: list[cw.Command] = []
        self.marks_processed: list[str] = []
        self.flushes = 0
        self.xoff_sent = 0
        self.xon_sent = 0
        self.dropped_full = 0
        self.stalled = False  # stop consuming the queue (to build it up)
        self.xoff_frames = cw.QUEUE_XOFF_FRAMES
        self.xon_frames = cw.QUEUE_XON_FRAMES
        self.max_frames = cw.QUEUE_MAX_FRAMES
        self._queue_full = False
        self.max_queued = 0
        self.received_during_xoff = 0  # frames that arrived while XOFF was in force
        self.flush_at: list[float] = []
        self.ws: web.WebSocketResponse | None = None
        self.connected = asyncio.Event()
        self.closed = asyncio.Event()
        self._clock_task: asyncio.Task[None] | None = None

    async def serve(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        start = cw.MediaStart(self.connection_id, self.channel.name, self.channel.id, self.format_name,
                              self.frame_bytes, 20)
        await ws.send_str(cw.media_start_event(start, self.control_format))
        self.connected.set()
        self.server.websocket_connected(self.channel)
        self._clock_task = asyncio.create_task(self._playout_clock())
        try:
            async for message in ws:
                if message.type is WSMsgType.BINARY:
                    self._queue_media(message.data)
                elif message.type is WSMsgType.TEXT:
                    await self._command(message.data)
        finally:
            self._clock_task.cancel()
            self.closed.set()
            self.server.media_closed(self.channel)

    def _queue_media(self, data: bytes) -> None:
        if self._queue_full:
            self.received_during_xoff += len(data) // self.frame_bytes
        if self.queued_frames >= self.max_frames:
            self.dropped_full += 1
            return
        # Outside START_MEDIA_BUFFERING, bytes past the last whole frame are discarded.
        for i in range(0, len(data) - len(data) % self.frame_bytes, self.frame_bytes):
            self.queue.append(data[i:i + self.frame_bytes])
            self.queued_frames += 1
            self.max_queued = max(self.max_queued, self.queued_frames)
            if not self._queue_full and self.queued_frames >= self.xoff_frames:
                self._queue_full = True
                self.xoff_sent += 1
                self._send_soon(cw.simple_event("MEDIA_XOFF", self.channel.id, self.control_format))

    def _send_soon(self, text: str) -> None:
        if self.ws is not None and not self.ws.closed:
            self.server._spawn(self.ws.send_str(text))

    async def _command(self, text: str) -> None:
        command = cw.parse_command(text, self.control_format)
        if isinstance(command, cw.InvalidMessage):
            return
        self.commands.append(command)
        if command.name == "FLUSH_MEDIA":
            self.queue.clear()
            self.queued_frames = 0
            self.flushes += 1
            self.flush_at.append(time.monotonic())
        elif command.name == "MARK_MEDIA":
            self.queue.append(("mark", command.correlation_id or ""))
        elif command.name == "HANGUP":
            await self.server.hangup_channel(self.channel, cause=16)

    async def _playout_clock(self) -> None:
        t0 = time.monotonic()
        n = 0
        while True:
            n += 1
            delay = t0 + n * FRAME_SECONDS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.stalled:
                continue
            if self._queue_full and self.queued_frames < self.xon_frames:
                self._queue_full = False
                self.xon_sent += 1
                await self._send(cw.simple_event("MEDIA_XON", self.channel.id, self.control_format))
            # Control entries ahead of the next frame are handled without using a time slot.
            while self.queue and isinstance(self.queue[0], tuple):
                _, mark = self.queue.pop(0)  # type: ignore[misc]
                self.marks_processed.append(mark)
                await self._send(cw.mark_processed_event(mark, self.channel.id, self.control_format))
            if self.queue:
                frame = self.queue.pop(0)
                assert isinstance(frame, bytes)
                self.queued_frames -= 1
                self.played.append(ReceivedFrame(time.monotonic(), frame))

    async def _send(self, text: str) -> None:
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(ConnectionError):
                await self.ws.send_str(text)

    @property
    def received(self) -> list[ReceivedFrame]:
        return self.played

    def press(self, digit: str) -> None:
        self._send_soon(cw.dtmf_end_event(digit, self.channel.id, self.control_format))

    async def play(self, samples: np.ndarray, start: float | None = None, **_: Any) -> None:
        await self.connected.wait()
        frame = self.format.samples_for_ms(20)
        t0 = time.monotonic() if start is None else start
        for n, offset in enumerate(range(0, len(samples) - frame + 1, frame)):
            if self.closed.is_set() or self.ws is None or self.ws.closed:
                return
            delay = t0 + n * FRAME_SECONDS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            with contextlib.suppress(ConnectionError):
                await self.ws.send_bytes(self.format.encode(samples[offset:offset + frame].astype(np.int16)))

    def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            self.server._spawn(self.ws.close())
        self.closed.set()


# --------------------------------------------------------------------------------- the server


class SimCaller:
    """A caller channel placed into the Stasis application."""

    def __init__(self, server: AriServer, channel: Channel) -> None:
        self.server = server
        self.channel = channel
        self.bridged = asyncio.Event()  # caller and an external media channel share a bridge

    @property
    def media(self) -> Any:
        return self.server.media_of(self.channel)

    async def wait_bridged(self, wait: float = 10.0) -> Any:
        async with asyncio.timeout(wait):
            await self.bridged.wait()
        return self.media

    async def play(self, samples: np.ndarray, **kwargs: Any) -> None:
        media = await self.wait_bridged()
        await media.play(samples, **kwargs)

    async def press(self, digit: str) -> None:
        await self.server.press(self.channel, digit)

    async def hang_up(self) -> None:
        await self.server.hangup_channel(self.channel, cause=16)


class AriServer:
    def __init__(self, *, username: str = "callbridge", password: str = "secret",
                 media_stasis_delay: float = 0.01,
                 control_format: cw.ControlFormat = cw.ControlFormat.PLAIN) -> None:
        self.username = username
        self.password = password
        # Seconds between the externalMedia response and the external channel's StasisStart
        # (negative: the event goes out first, which Asterisk also does at times).
        self.media_stasis_delay = media_stasis_delay
        self.control_format = control_format
        self.channels: dict[str, Channel] = {}
        self.bridges: dict[str, Bridge] = {}
        self.requests: list[Request] = []
        self.events: list[dict[str, Any]] = []
        self.apps: dict[str, list[web.WebSocketResponse]] = {}
        self.app_registered = asyncio.Event()
        self.connections = 0
        self.peers: dict[str, WebSocketPeer] = {}  # by connection id
        self.callers: list[SimCaller] = []
        self.on_request: Any = None  # hook(method, path) -> awaitable, to inject a hangup mid-set-up
        self._ids = itertools.count(17)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.refuse_events = False

    # ----------------------------------------------------------------- lifecycle
    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/ari/events", self._events_ws)
        app.router.add_get("/media/{connection_id}", self._media_ws)
        app.router.add_route("*", "/ari/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", port)
        await self._site.start()
        self.port = self._site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def restart(self, down_seconds: float = 0.3) -> None:
        """Asterisk restarts: every connection drops, the application is gone, state is lost."""
        port = self.port
        for sockets in list(self.apps.values()):
            for ws in list(sockets):
                await ws.close()
        self.apps.clear()
        self.app_registered.clear()
        await self.stop()
        await asyncio.sleep(down_seconds)
        await self.start(port)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for channel in self.channels.values():
            if channel.media is not None:
                channel.media.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----------------------------------------------------------------- events
    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return user == self.username and password == self.password
        return request.query.get("api_key") == f"{self.username}:{self.password}"

    async def _events_ws(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return web.json_response({"message": "Authentication required"}, status=401)
        app = request.query.get("app", "")
        if not app or self.refuse_events:
            return web.json_response({"message": "Invalid application provided in param [app]."}, status=400)
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        self.apps.setdefault(app, []).append(ws)
        self.connections += 1
        self.app_registered.set()
        try:
            async for _ in ws:
                pass
        finally:
            sockets = self.apps.get(app, [])
            if ws in sockets:
                sockets.remove(ws)
            if not sockets:
                self.apps.pop(app, None)
                self.app_registered.clear()
        return ws

    async def emit(self, event_type: str, app: str, **fields: Any) -> None:
        body = {"type": event_type, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000+0000"), **fields,
                "asterisk_id": "02:42:ac:12:00:02", "application": app}
        self.events.append(body)
        for ws in list(self.apps.get(app, [])):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(json.dumps(body))

    # ----------------------------------------------------------------- callers
    async def place_call(self, app: str, dialled: str, caller_number: str = "+5511988887777",
                         args: tuple[str, ...] | None = None, context: str = "from-carrier") -> SimCaller:
        """A PJSIP caller runs ``Stasis(app,args...)``."""
        n = next(self._ids)
        channel = Channel(
            id=f"1763782867.{n}", name=f"PJSIP/carrier-a-{n:08x}", kind="caller", state="Ring",
            caller_name="Maria", caller_number=caller_number, context=context, exten=dialled, priority=3,
        )
        stasis_args = list(args) if args is not None else [dialled]
        channel.app_data = ",".join([app, *stasis_args])
        channel.in_stasis = True
        self.channels[channel.id] = channel
        caller = SimCaller(self, channel)
        self.callers.append(caller)
        await self.emit("StasisStart", app, args=stasis_args, channel=channel.to_json())
        return caller

    def media_of(self, caller: Channel) -> Any:
        if caller.bridge is None:
            return None
        for member in self.bridges[caller.bridge].channels:
            other = self.channels.get(member)
            if other is not None and other.kind != "caller":
                return other.media
        return None

    async def press(self, channel: Channel, digit: str) -> None:
        app = self._app_of(channel)
        await self.emit("ChannelDtmfReceived", app, digit=digit, duration_ms=100, channel=channel.to_json())
        # A mixing bridge passes DTMF on to the other members unless absorbDTMF was asked for.
        if channel.bridge is not None and not channel.absorb_dtmf:
            media = self.media_of(channel)
            if media is not None:
                media.press(digit)

    def _app_of(self, channel: Channel) -> str:
        return channel.app_data.split(",")[0] if channel.app_data else next(iter(self.apps), "callbridge")

    async def hangup_channel(self, channel: Channel, cause: int = 16) -> None:
        if not channel.alive:
            return
        channel.alive = False
        channel.hangup_cause = cause
        app = self._app_of(channel)
        if channel.in_stasis:
            await self.emit("ChannelHangupRequest", app, cause=cause, channel=channel.to_json())
        await self._leave_bridge(channel, app)
        if channel.in_stasis:
            channel.in_stasis = False
            await self.emit("StasisEnd", app, channel=channel.to_json())
        if channel.media is not None:
            channel.media.close()
        await self.emit("ChannelDestroyed", app, cause=cause, cause_txt="Normal Clearing",
                        channel=channel.to_json())
        channel.gone.set()

    async def _leave_bridge(self, channel: Channel, app: str) -> None:
        if channel.bridge is None:
            return
        bridge = self.bridges.get(channel.bridge)
        channel.bridge = None
        if bridge is not None and channel.id in bridge.channels:
            bridge.channels.remove(channel.id)
            await self.emit("ChannelLeftBridge", app, bridge=bridge.to_json(), channel=channel.to_json())

    def websocket_connected(self, channel: Channel) -> None:
        # chan_websocket answers once MEDIA_START is out; the originate then puts it in Stasis.
        self._spawn(self._enter_stasis(channel, 0.0))

    def media_closed(self, channel: Channel) -> None:
        self._spawn(self.hangup_channel(channel, cause=16))

    async def _enter_stasis(self, channel: Channel, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        if not channel.alive:
            return
        channel.state = "Up"
        channel.in_stasis = True
        app = self._app_of(channel)
        args = [channel.app_data.split(",", 1)[1]] if "," in channel.app_data else []
        await self.emit("StasisStart", app, args=args, channel=channel.to_json())
        channel.stasis_entered.set()

    # ----------------------------------------------------------------- REST
    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        query = dict(request.query)
        if request.can_read_body:
            with contextlib.suppress(ValueError):
                body = await request.json()
                if isinstance(body, dict):
                    query.update({k: v for k, v in body.items() if isinstance(v, str)})
        status = 500
        try:
            if not self._authorised(request):
                raise AriHttpError(401, "Authentication required")
            if self.on_request is not None:
                await self.on_request(request.method, path)
            result = await self._handle(request.method, path, query)
            status = 200 if result is not None else 204
            return web.json_response(result) if result is not None else web.Response(status=204)
        except AriHttpError as exc:
            status = exc.status
            return web.json_response({"message": exc.message}, status=exc.status)
        finally:
            self.requests.append(Request(request.method, path, query, status, time.monotonic()))

    def _channel(self, channel_id: str) -> Channel:
        channel = self.channels.get(channel_id)
        if channel is None or not channel.alive:
            raise AriHttpError(404, "Channel not found")
        return channel

    def _control(self, channel_id: str) -> Channel:
        channel = self._channel(channel_id)
        if not channel.in_stasis:
            raise AriHttpError(409, "Channel not in Stasis application")
        return channel

    async def _handle(self, method: str, path: str, q: dict[str, str]) -> Any:
        parts = [p for p in path.split("/") if p]
        if parts == ["channels", "externalMedia"] and method == "POST":
            return await self._external_media(q)
        if parts[:1] == ["channels"] and len(parts) >= 2:
            channel_id = parts[1]
            if len(parts) == 2 and method == "GET":
                return self._channel(channel_id).to_json()
            if len(parts) == 2 and method == "DELETE":
                channel = self._channel(channel_id)
                await self.hangup_channel(channel, cause=16)
                return None
            action = parts[2] if len(parts) > 2 else ""
            if action == "answer" and method == "POST":
                channel = self._control(channel_id)
                if channel.state != "Up":
                    channel.state = "Up"
                    await self.emit("ChannelStateChange", self._app_of(channel), channel=channel.to_json())
                return None
            if action == "continue" and method == "POST":
                channel = self._control(channel_id)
                app = self._app_of(channel)
                await self._leave_bridge(channel, app)
                # No priority: the one after the current (Stasis) line (ast_explicit_goto with -1).
                priority = int(q["priority"]) if "priority" in q else channel.priority + 1
                channel.continued_to = (q.get("context", channel.context), q.get("extension", channel.exten),
                                        priority)
                channel.in_stasis = False
                await self.emit("StasisEnd", app, channel=channel.to_json())
                return None
            if action == "variable" and method == "POST":
                channel = self._channel(channel_id)
                if not q.get("variable"):
                    raise AriHttpError(400, "Variable name is required")
                channel.variables[q["variable"]] = q.get("value", "")
                return None
        if parts[:1] == ["bridges"]:
            if method == "POST" and (len(parts) == 1 or (len(parts) == 2)):
                bridge_id = parts[1] if len(parts) == 2 else q.get("bridgeId") or str(uuid.uuid4())
                if bridge_id in self.bridges:
                    raise AriHttpError(409, "Bridge with id already exists")
                bridge = Bridge(bridge_id, q.get("name", ""), q.get("type", "mixing"))
                self.bridges[bridge_id] = bridge
                return bridge.to_json()
            bridge = self.bridges.get(parts[1]) if len(parts) >= 2 else None
            if bridge is None:
                raise AriHttpError(404, "Bridge not found")
            if len(parts) == 2 and method == "DELETE":
                for member in list(bridge.channels):
                    channel = self.channels.get(member)
                    if channel is not None:
                        await self._leave_bridge(channel, self._app_of(channel))
                del self.bridges[bridge.id]
                await self.emit("BridgeDestroyed", "callbridge", bridge=bridge.to_json())
                return None
            if len(parts) == 3 and parts[2] == "addChannel" and method == "POST":
                return await self._add_channel(bridge, q)
        raise AriHttpError(404, f"Resource not found: {method} {path}")

    async def _add_channel(self, bridge: Bridge, q: dict[str, str]) -> None:
        ids = [c for c in q.get("channel", "").split(",") if c]
        if not ids:
            raise AriHttpError(400, "Missing parameter channel")
        for channel_id in ids:
            channel = self.channels.get(channel_id)
            if channel is None or not channel.alive:
                raise AriHttpError(400, "Channel not found")
            if not channel.in_stasis:
                raise AriHttpError(422, "Channel not in Stasis application")
        for channel_id in ids:
            channel = self.channels[channel_id]
            channel.bridge = bridge.id
            channel.absorb_dtmf = q.get("absorbDTMF") == "true"
            bridge.channels.append(channel_id)
            await self.emit("ChannelEnteredBridge", self._app_of(channel), bridge=bridge.to_json(),
                            channel=channel.to_json())
        # Once a caller and an external media channel share the bridge, audio flows.
        kinds = {self.channels[c].kind for c in bridge.channels}
        if "caller" in kinds and len(kinds) > 1:
            for caller in self.callers:
                if caller.channel.bridge == bridge.id:
                    caller.bridged.set()

    async def _external_media(self, q: dict[str, str]) -> dict[str, Any]:
        # The checks of ast_ari_channels_external_media (resource_channels.c), in its order.
        app = q.get("app", "")
        if not app:
            raise AriHttpError(400, "app cannot be empty")
        encapsulation = q.get("encapsulation") or "rtp"
        transport = q.get("transport") or "udp"
        if transport == "websocket" and encapsulation != "none":
            raise AriHttpError(400, "encapsulation must be 'none' for websocket transport")
        if encapsulation == "rtp" and transport != "udp":
            raise AriHttpError(400, "transport must be 'udp' for rtp encapsulation")
        if encapsulation == "audiosocket" and transport != "tcp":
            raise AriHttpError(400, "transport must be 'tcp' for audiosocket encapsulation")
        connection_type = q.get("connection_type") or "client"
        if connection_type == "server" and transport != "websocket":
            raise AriHttpError(400, "'server' connection_type can only be used with the websocket transport")
        external_host = q.get("external_host", "")
        if not external_host:
            if connection_type == "client":
                raise AriHttpError(400, "external_host is required for all but websocket server connections")
            external_host = "INCOMING"
        host = port = ""
        if transport != "websocket":
            host, _, port = external_host.rpartition(":")
            if not host or not port.isdigit():
                raise AriHttpError(400, "external_host must be <host>:<port> for all transports other than "
                                        "websocket")
            host = host.strip("[]")
        fmt = q.get("format", "")
        if not fmt:
            raise AriHttpError(400, "format cannot be empty")
        if encapsulation == "audiosocket" and not q.get("data"):
            raise AriHttpError(400, "data can not be empty")
        channel_id = q.get("channelId") or f"1763782867.{next(self._ids)}"
        if channel_id in self.channels:
            raise AriHttpError(409, "Channel with given unique ID already exists")
        if fmt not in FORMATS:
            raise AriHttpError(500, "Allocation failed")
        data = q.get("data", "")
        if transport == "udp":
            channel = Channel(id=channel_id, name=f"UnicastRTP/{external_host}-0x7f3b1c00a1b0", kind="rtp",
                              state="Down", app_data=f"{app},{data}" if data else app)
            loop = asyncio.get_running_loop()
            peer = RtpPeer(fmt, (host, int(port)))
            await loop.create_datagram_endpoint(lambda: peer, local_addr=("127.0.0.1", 0))
            channel.media = peer
            channel.channelvars = {"UNICASTRTP_LOCAL_ADDRESS": "127.0.0.1",
                                   "UNICASTRTP_LOCAL_PORT": str(peer.port)}
            delay = self.media_stasis_delay
        elif transport == "tcp":
            channel = Channel(id=channel_id, name=f"AudioSocket/{external_host}-0x7f3b1c00a1c0",
                              kind="audiosocket", state="Down", app_data=f"{app},{data}")
            peer_as = AudioSocketPeer(fmt, data)
            try:
                await peer_as.connect(host, int(port))
            except OSError:
                raise AriHttpError(500, "Allocation failed") from None
            channel.media = peer_as
            channel.channelvars = {"AUDIOSOCKET_UUID": data, "AUDIOSOCKET_SERVICE": external_host}
            delay = self.media_stasis_delay
        else:
            connection_id = str(uuid.uuid4())
            channel = Channel(id=channel_id, name=f"WebSocket/{external_host}/0x7f3b1c00a1d0",
                              kind="websocket", state="Down", app_data=app)
            peer_ws = WebSocketPeer(self, channel, fmt, connection_id, self.control_format)
            self.peers[connection_id] = peer_ws
            channel.media = peer_ws
            channel.channelvars = {"MEDIA_WEBSOCKET_CONNECTION_ID": connection_id,
                                   "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE": str(peer_ws.frame_bytes)}
            delay = None  # enters Stasis when the daemon connects
        self.channels[channel_id] = channel
        body = channel.to_json()
        body["channelvars"] = dict(channel.channelvars)
        if delay is not None:
            if delay < 0:
                await self._enter_stasis(channel, 0.0)
            else:
                self._spawn(self._enter_stasis(channel, delay))
        return body

    async def _media_ws(self, request: web.Request) -> web.StreamResponse:
        peer = self.peers.get(request.match_info["connection_id"])
        if peer is None or not peer.channel.alive:
            return web.Response(status=404, text="WebSocket instance not found")
        if peer.ws is not None:
            return web.Response(status=409, text="Another websocket connection exists for this connection id")
        ws = web.WebSocketResponse(protocols=(cw.SUBPROTOCOL,), heartbeat=None)
        await ws.prepare(request)
        await peer.serve(ws)
        return ws

    # ----------------------------------------------------------------- assertions
    def request_lines(self) -> list[str]:
        """``METHOD path -> status`` of every request, generated ids replaced by their roles."""
        lines = []
        for r in self.requests:
            segments = []
            for segment in r.path.split("/"):
                channel = self.channels.get(segment)
                if channel is not None:
                    segment = "{caller}" if channel.kind == "caller" else "{media}"
                elif "-bridge-" in segment or segment in self.bridges:
                    segment = "{bridge}"
                elif "-media-" in segment:
                    segment = "{media}"
                segments.append(segment)
            lines.append(f"{r.method} {'/'.join(segments)} -> {r.status}")
        return lines
