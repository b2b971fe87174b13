"""Simulated callers over the WebSocket media transports: Twilio Media Streams (``/ws/twilio``),
FreeSWITCH mod_audio_fork (``/ws/freeswitch``) and the plain ``/ws/audio/{number}`` stream.

Each connection is the ``websockets`` sans-I/O client protocol under an ``asyncio.Protocol``, so a
frame goes out synchronously from the caller's frame timer and a received message is timestamped
in ``data_received``, without a task per message on the load generator's side. Once the handshake
is over, the steady traffic (whole, unfragmented text and binary frames) is framed and read here:
``websockets`` does it in pure Python with a ``getrandom`` call per masking key, which made the
Twilio load generator cost as much CPU per call as the daemon it measures. The first frame of any
other kind (close, ping, a fragment, an extension bit) and everything after it go back to the
library, so the closing handshake and anything unusual are still the library's.

The far end plays what it receives as it arrives: a frame's arrival is when the caller hears it,
and playback marks are echoed at once (Twilio and the jambonz fork echo a mark once the audio
before it has played).
"""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.parse
from typing import Any, cast

import numpy as np
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode, apply_mask
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from bench.load.callers import ScriptedCaller
from bridge.core.realtime import MaskingKeys
from media import g711
from sip import freeswitch as fs
from sip import twilio as tw

CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0
# mu-law silence: +0 and -0.
_ULAW_SILENCE = frozenset((0xFF, 0x7F))
_FIN_TEXT, _FIN_BINARY = 0x81, 0x82


_MASK_KEYS = MaskingKeys()  # the model leg's key pool: four bytes at a time from bulk os.urandom


def client_frame(first_byte: int, payload: bytes, key: bytes) -> bytes:
    """One masked client frame: FIN + opcode in ``first_byte``, the payload masked with ``key``."""
    n = len(payload)
    if n < 126:
        header = bytes((first_byte, 0x80 | n))
    elif n < 1 << 16:
        header = bytes((first_byte, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((first_byte, 0x80 | 127)) + n.to_bytes(8, "big")
    return header + key + apply_mask(payload, key)


def split_server_frames(buf: bytearray) -> tuple[list[tuple[int, bytes]], int, bool]:
    """The whole unmasked, unfragmented text and binary frames at the start of ``buf``: their
    (opcode, payload), how many bytes they took, and whether a frame of another kind stopped the
    split there (the caller hands the rest to the library)."""
    frames: list[tuple[int, bytes]] = []
    pos, n = 0, len(buf)
    while n - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        if b0 not in (_FIN_TEXT, _FIN_BINARY) or b1 & 0x80:
            return frames, pos, True
        length, head = b1, 2
        if length == 126:
            if n - pos < 4:
                break
            length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
        elif length == 127:
            if n - pos < 10:
                break
            length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
        end = pos + head + length
        if end > n:
            break
        frames.append((b0 & 0x0F, bytes(buf[pos + head : end])))
        pos = end
    return frames, pos, False


class _WsMedia(asyncio.Protocol):
    def __init__(self, caller: WsCaller, uri: str, subprotocols: list[str] | None) -> None:
        self.caller = caller
        self.ws = ClientProtocol(parse_uri(uri), subprotocols=subprotocols)  # type: ignore[arg-type]
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._direct = False  # steady frames framed and read here (see the module docstring)
        self._may_go_direct = True
        self._inbox = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ws.send_request(self.ws.connect())
        self.flush()

    def flush(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for chunk in self.ws.data_to_send():
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                transport.write_eof()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self._direct:
            inbox = self._inbox
            inbox += data
            frames, used, stopped = split_server_frames(inbox)
            del inbox[:used]
            caller = self.caller
            for opcode, payload in frames:
                if opcode == 1:
                    caller.on_text(payload, now)
                else:
                    caller.on_binary(payload, now)
            if not stopped:
                return
            self._direct = self._may_go_direct = False  # the library reads from this frame on
            data = bytes(inbox)
            inbox.clear()
        ws = self.ws
        ws.receive_data(data)
        self._events(now)
        if self._may_go_direct and ws.state is State.OPEN and self.opened.done() and not ws.reader.buffer:
            self._direct = True

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._events(time.monotonic())
        return None

    def _events(self, now: float) -> None:
        ws = self.ws
        caller = self.caller
        for event in ws.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    caller.on_text(bytes(event.data), now)
                elif event.opcode is Opcode.BINARY:
                    caller.on_binary(bytes(event.data), now)
                elif event.opcode is Opcode.CLOSE:
                    caller.close_code = ws.close_rcvd.code if ws.close_rcvd is not None else None
                    caller.media_closed()
            elif isinstance(event, Response) and not self.opened.done():
                if ws.handshake_exc is not None:
                    self.opened.set_exception(ws.handshake_exc)
                else:
                    self.opened.set_result(None)
        self.flush()
        if ws.close_expected() and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("connection lost during the handshake"))
        self.caller.media_closed()
        if not self.closed.done():
            self.closed.set_result(None)

    def send_text(self, text: str) -> None:
        if self.ws.state is State.OPEN:
            if self._direct:
                self._write(client_frame(_FIN_TEXT, text.encode(), _MASK_KEYS.take()))
                return
            self.ws.send_text(text.encode())
            self.flush()

    def send_binary(self, data: bytes) -> None:
        if self.ws.state is State.OPEN:
            if self._direct:
                self._write(client_frame(_FIN_BINARY, data, _MASK_KEYS.take()))
                return
            self.ws.send_binary(data)
            self.flush()

    def _write(self, frame: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(frame)

    async def close(self) -> None:
        if self.ws.state is State.OPEN:
            self.ws.send_close(1000)
            self.flush()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), CLOSE_TIMEOUT)
        except TimeoutError:
            if self.transport is not None:
                self.transport.abort()


class WsCaller(ScriptedCaller):
    """A caller whose far end speaks one of the WebSocket media flavours."""

    path = ""
    subprotocols: list[str] | None = None

    def __init__(self, http_port: int, dialled: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.http_port = http_port
        self.dialled = dialled
        self.caller_id = f"55119{self.index:08d}"
        self.close_code: int | None = None
        self._media: _WsMedia | None = None

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}{self.path}"

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        _, media = await loop.create_connection(
            lambda: _WsMedia(self, self.url(), self.subprotocols), "127.0.0.1", self.http_port
        )
        self._media = media
        await asyncio.wait_for(asyncio.shield(media.opened), CONNECT_TIMEOUT)
        self.started()

    def started(self) -> None:
        """Send what the far end sends before its audio."""

    async def close(self) -> None:
        if self._media is not None:
            self.before_close()
            await self._media.close()
        code = self.close_code
        self.result.status = "normal" if code in (None, 1000, 1005) else f"close code {code}"

    def before_close(self) -> None:
        """Send what the far end sends when its caller hangs up."""

    def on_text(self, data: bytes, now: float) -> None:
        return None

    def on_binary(self, data: bytes, now: float) -> None:
        # L16 agent audio; the daemon sends no keep-alive silence on WebSocket legs.
        self.frame_received(now, data.count(0) != len(data))


class TwilioCaller(WsCaller):
    """Twilio's side of a bidirectional Media Stream: mu-law 8 kHz in base64 JSON."""

    transport = "twilio"
    path = "/ws/twilio"

    def __init__(self, http_port: int, dialled: str, **kwargs: Any) -> None:
        super().__init__(http_port, dialled, **kwargs)
        n = self.index
        self.carrier = tw.TwilioCarrier(f"MZ{n:032x}", f"CA{n:032x}", "AC" + "0" * 32)
        self.clears: list[float] = []

    def started(self) -> None:
        assert self._media is not None
        self._media.send_text(self.carrier.connected())
        self._media.send_text(self.carrier.start({"to": self.dialled, "from": self.caller_id}))

    def send_frame(self, payload: bytes) -> None:
        if self._media is not None:
            ulaw = g711.ulaw_encode(np.frombuffer(payload, dtype=np.int16))
            self._media.send_text(self.carrier.media(ulaw))

    def before_close(self) -> None:
        assert self._media is not None
        self._media.send_text(self.carrier.stop())

    def on_text(self, data: bytes, now: float) -> None:
        event = tw.parse_app_message(data)
        if isinstance(event, tw.AppMedia):
            payload = event.payload
            self.frame_received(now, any(b not in _ULAW_SILENCE for b in payload))
        elif isinstance(event, tw.AppMark) and self._media is not None:
            self._media.send_text(self.carrier.mark(event.name))
        elif isinstance(event, tw.Clear):
            self.clears.append(now)


class FreeSwitchCaller(WsCaller):
    """FreeSWITCH mod_audio_fork (drachtio): metadata first, then L16 8 kHz both ways."""

    transport = "freeswitch"
    path = "/ws/freeswitch"
    subprotocols = [fs.AUDIO_FORK_SUBPROTOCOL]

    def started(self) -> None:
        assert self._media is not None
        self._media.send_text(fs.metadata_message(
            {"to": self.dialled, "from": self.caller_id, "sampleRate": 8000, "mixType": "mono"}))

    def send_frame(self, payload: bytes) -> None:
        if self._media is not None:
            self._media.send_binary(payload)

    def on_text(self, data: bytes, now: float) -> None:
        command = fs.parse_command(data)
        if isinstance(command, fs.MarkCommand) and self._media is not None:
            self._media.send_text(fs.mark_echo_message(command.name))


class WsAudioCaller(WsCaller):
    """A client of the plain ``/ws/audio/{number}`` stream: L16 8 kHz in BINARY frames."""

    transport = "ws_audio"

    def url(self) -> str:
        number = urllib.parse.quote(self.dialled, safe="")
        return f"ws://127.0.0.1:{self.http_port}/ws/audio/{number}?format=pcm16_8k&frames=binary"

    def send_frame(self, payload: bytes) -> None:
        if self._media is not None:
            self._media.send_binary(payload)


CALLERS: dict[str, type[WsCaller]] = {
    "twilio": TwilioCaller,
    "freeswitch": FreeSwitchCaller,
    "ws_audio": WsAudioCaller,
}


def make_ws_caller(transport: str, http_port: int, dialled: str, **kwargs: Any) -> WsCaller:
    return CALLERS[transport](http_port, dialled, **kwargs)
