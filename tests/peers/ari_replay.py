"""Replays an ARI exchange recorded from a real Asterisk, holding the daemon to it.

A transcript (``tests/fixtures/ari/transcripts/*.jsonl``) is the exchange callbridge had with
Asterisk 22.10.1 for one call: every event as Asterisk sent it and every request callbridge made,
with its answer, in the order the requests were sent. The replay server plays Asterisk's part:

* events go out in the recorded order; events recorded within ``BURST_SECONDS`` of each other go
  out back to back (as Asterisk wrote them), longer pauses are kept up to ``MAX_GAP_SECONDS`` but
  end early when the daemon does something (a request, closing the media socket), since what
  follows is usually Asterisk's reaction to it;
* when the transcript reaches a request, the server waits for the daemon's next request and checks
  it against the recording: method, path and the parameters that matter; a mismatch is recorded
  and answered 500. Matching requests get the recorded answer.

Identifiers the daemon chooses itself (the bridge and external channel ids, the AudioSocket UUID)
differ from the recording; they are learnt from the daemon's requests and substituted in what is
replayed. For the media, the server does what Asterisk did: it connects to the daemon's
AudioSocket listener with the daemon's UUID, serves ``/media/<connection id>`` with MEDIA_START,
and points ``UNICASTRTP_LOCAL_PORT`` at a UDP socket of its own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from sip import audiosocket as aso
from sip import chan_websocket as cw

TRANSCRIPTS = Path(__file__).resolve().parents[1] / "fixtures" / "ari" / "transcripts"
BURST_SECONDS = 0.005
MAX_GAP_SECONDS = 0.5
REQUEST_TIMEOUT = 15.0
_TOKEN = re.compile(r"-(?:bridge|media)-([0-9a-f]{12})")
# Parameters compared between the recorded and the daemon's request.
_CHECKED = ("app", "encapsulation", "transport", "connection_type", "format", "type", "variable", "value",
            "context", "extension", "priority", "absorbDTMF")


def load(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (TRANSCRIPTS / f"{name}.jsonl").read_text().splitlines() if line]


@dataclass
class Exchange:
    method: str
    path: str
    query: dict[str, str]
    answer: asyncio.Future[tuple[int, Any]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class TranscriptReplay:
    def __init__(self, entries: list[dict[str, Any]], *, username: str = "callbridge",
                 password: str = "secret") -> None:
        self.entries = entries
        self.username = username
        self.password = password
        self.app = next(e["event"]["application"] for e in entries if e["kind"] == "event")
        self.mismatches: list[str] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.finished = asyncio.Event()
        self._substitutions: dict[str, str] = {}
        self._incoming: asyncio.Queue[Exchange] = asyncio.Queue()
        self._activity = asyncio.Event()
        self._events_ws: web.WebSocketResponse | None = None
        self._connected = asyncio.Event()
        self._media_ws_open = asyncio.Event()
        self._media_ws_closed = asyncio.Event()
        self._media_id: str | None = None
        self._audiosocket: asyncio.StreamWriter | None = None
        self._audiosocket_frames: asyncio.Task[None] | None = None
        self._rtp_sink: asyncio.DatagramTransport | None = None
        self._runner: web.AppRunner | None = None
        self._driver: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/ari/events", self._events)
        app.router.add_get("/media/{connection_id}", self._media)
        app.router.add_route("*", "/ari/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        self._rtp_sink, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                                local_addr=("127.0.0.1", 0))
        self._driver = asyncio.create_task(self._drive())

    async def stop(self) -> None:
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver
        if self._audiosocket_frames is not None:
            self._audiosocket_frames.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._audiosocket_frames
        if self._audiosocket is not None:
            self._audiosocket.close()
        if self._rtp_sink is not None:
            self._rtp_sink.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ----------------------------------------------------------------- the script
    def _substitute(self, value: Any) -> Any:
        text = json.dumps(value)
        for recorded, live in self._substitutions.items():
            text = text.replace(recorded, live)
        return json.loads(text)

    async def _pause(self, gap: float) -> None:
        if gap <= BURST_SECONDS:
            return
        self._activity.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(gap, MAX_GAP_SECONDS)):
                await self._activity.wait()

    async def _drive(self) -> None:
        await self._connected.wait()
        previous = 0.0
        for entry in self.entries:
            if entry["kind"] == "event":
                await self._pause(entry["t"] - previous)
                previous = entry["t"]
                assert self._events_ws is not None
                await self._events_ws.send_str(json.dumps(self._substitute(entry["event"])))
                continue
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    exchange = await self._incoming.get()
            except TimeoutError:
                self.mismatches.append(f"no request; expected {entry['method']} {entry['path']}")
                return
            previous = entry["t"] + entry.get("elapsed", 0.0)
            problem = self._learn_and_compare(entry, exchange)
            if problem:
                self.mismatches.append(problem)
                exchange.answer.set_result((500, {"message": problem}))
                return
            await self._act(entry, exchange)
            body = self._substitute(entry["response"]) if entry["response"] is not None else None
            if isinstance(body, dict) and "UNICASTRTP_LOCAL_PORT" in body.get("channelvars", {}):
                assert self._rtp_sink is not None
                body["channelvars"]["UNICASTRTP_LOCAL_PORT"] = str(self._rtp_sink.get_extra_info("sockname")[1])
            exchange.answer.set_result((entry["status"], body))
            if self._media_id is not None and entry["path"] == "/channels/externalMedia":
                # chan_websocket answers (and enters Stasis) once the media socket is up.
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    await self._media_ws_open.wait()
        self.finished.set()

    def _learn_and_compare(self, entry: dict[str, Any], exchange: Exchange) -> str | None:
        recorded_path = entry["path"]
        live_path = exchange.path
        for recorded, live in zip(_TOKEN.findall(recorded_path), _TOKEN.findall(live_path), strict=False):
            self._substitutions.setdefault(recorded, live)
        for key in ("channelId", "data"):
            if key in entry["query"] and key in exchange.query:
                for recorded, live in zip(_TOKEN.findall(entry["query"][key]), _TOKEN.findall(exchange.query[key]),
                                          strict=False):
                    self._substitutions.setdefault(recorded, live)
        if entry["query"].get("encapsulation") == "audiosocket":
            self._substitutions.setdefault(entry["query"]["data"], exchange.query.get("data", ""))
        expected = self._substitute(recorded_path)
        if exchange.method != entry["method"] or exchange.path != expected:
            return f"expected {entry['method']} {expected}, got {exchange.method} {exchange.path}"
        for key in _CHECKED:
            if entry["query"].get(key) != exchange.query.get(key):
                return (f"{exchange.method} {exchange.path}: {key}={exchange.query.get(key)!r}, "
                        f"recorded {entry['query'].get(key)!r}")
        return None

    async def _act(self, entry: dict[str, Any], exchange: Exchange) -> None:
        """Asterisk's side effects of a request: the external media connection."""
        if entry["path"] != "/channels/externalMedia" or entry["status"] >= 300:
            return
        variables = (entry["response"] or {}).get("channelvars", {})
        if exchange.query.get("encapsulation") == "audiosocket":
            host, _, port = exchange.query["external_host"].rpartition(":")
            _, writer = await asyncio.open_connection(host, int(port))
            proto = aso.AudioSocketProtocol(aso.Side.CLIENT)
            proto.send_uuid(uuid.UUID(exchange.query["data"]))
            writer.write(b"".join(proto.data_to_send()))
            self._audiosocket = writer
            # Asterisk sends the channel's audio, a frame every 20 ms, for as long as it is up.
            self._audiosocket_frames = asyncio.create_task(
                _send_silence(writer, proto, exchange.query.get("format", "slin")))
        elif "MEDIA_WEBSOCKET_CONNECTION_ID" in variables:
            self._media_id = variables["MEDIA_WEBSOCKET_CONNECTION_ID"]

    # ----------------------------------------------------------------- HTTP side
    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        return base64.b64decode(header[6:]).decode() == f"{self.username}:{self.password}"

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return web.json_response({"message": "Authentication required"}, status=401)
        if request.query.get("app") != self.app:
            return web.json_response({"message": "wrong application"}, status=400)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._events_ws = ws
        self._connected.set()
        async for _ in ws:
            pass
        return ws

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return web.json_response({"message": "Authentication required"}, status=401)
        exchange = Exchange(request.method, "/" + request.match_info["tail"], dict(request.query))
        self.requests.append((exchange.method, exchange.path, exchange.query))
        self._activity.set()
        await self._incoming.put(exchange)
        status, body = await exchange.answer
        return web.json_response(body, status=status) if body is not None else web.Response(status=status)

    async def _media(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["connection_id"] != self._media_id:
            return web.Response(status=404, text="WebSocket instance not found")
        ws = web.WebSocketResponse(protocols=(cw.SUBPROTOCOL,))
        await ws.prepare(request)
        start = cw.MediaStart(self._media_id, "WebSocket/INCOMING/0x7fdfe80088d0", "replayed", "slin16", 640, 20)
        await ws.send_str(cw.media_start_event(start, cw.ControlFormat.PLAIN))
        self._media_ws_open.set()
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                self._activity.set()
        self._media_ws_closed.set()
        self._activity.set()
        return ws


_SLIN_RATES_HZ = {"slin": 8000, "slin12": 12000, "slin16": 16000, "slin24": 24000, "slin32": 32000,
                  "slin44": 44100, "slin48": 48000, "slin96": 96000, "slin192": 192000}


async def _send_silence(writer: asyncio.StreamWriter, proto: aso.AudioSocketProtocol, fmt: str) -> None:
    """Silent 20 ms frames on the AudioSocket connection, paced on the monotonic clock, until it
    closes (kind and size as Asterisk sends them for the external media format)."""
    rate = _SLIN_RATES_HZ.get(fmt)
    if rate is not None:
        kind, frame = aso.audio_kind_for_rate(rate), bytes(rate // 50 * 2)
    else:  # ulaw / alaw: one byte per sample at 8 kHz, kind 0x10
        kind, frame = aso.Kind.AUDIO, (b"\xff" if fmt == "ulaw" else b"\xd5") * 160
    loop = asyncio.get_running_loop()
    start = loop.time()
    n = 0
    while not writer.is_closing():
        proto.send_audio(frame, kind)
        with contextlib.suppress(ConnectionError):
            writer.write(b"".join(proto.data_to_send()))
        n += 1
        await asyncio.sleep(max(0.0, start + n * 0.020 - loop.time()))
