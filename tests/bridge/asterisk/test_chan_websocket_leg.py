"""The chan_websocket leg against a minimal media endpoint: whole frames only, marks ahead of
frames, flush, XOFF/XON with a bounded backlog, and Asterisk versions without MARK_MEDIA."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import WSMsgType, web

from bridge.asterisk.chan_websocket import XOFF_BACKLOG_FRAMES, MediaWebSocketConnection, MediaWebSocketError
from sip import chan_websocket as cw


class Endpoint:
    """``/media/<id>``: MEDIA_START, then records what the leg sends; the test sends events."""

    def __init__(self, fmt: cw.ControlFormat = cw.ControlFormat.PLAIN, media_format: str = "ulaw") -> None:
        self.fmt = fmt
        self.media_format = media_format
        self.binary: list[bytes] = []
        self.text: list[str] = []
        self.ws: web.WebSocketResponse | None = None
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/media/{cid}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["cid"] != "c1":
            return web.Response(status=404)
        ws = web.WebSocketResponse(protocols=("media",))
        await ws.prepare(request)
        assert ws.ws_protocol == "media"
        self.ws = ws
        await ws.send_bytes(b"\xff" * 160)  # audio before MEDIA_START (asterisk#1712)
        frame = 640 if self.media_format == "slin16" else 160
        await ws.send_str(cw.media_start_event(
            cw.MediaStart("c1", "WebSocket/INCOMING/0x1", "ch1", self.media_format, frame, 20), self.fmt))
        async for m in ws:
            if m.type is WSMsgType.BINARY:
                self.binary.append(m.data)
            elif m.type is WSMsgType.TEXT:
                self.text.append(m.data)
        return ws

    async def send(self, text: str) -> None:
        assert self.ws is not None
        await self.ws.send_str(text)

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0.005)


class Sink:
    def __init__(self) -> None:
        self.audio: list[bytes] = []
        self.digits: list[str] = []
        self.hung_up = asyncio.Event()

    def receive_audio(self, payload: bytes) -> None:
        self.audio.append(payload)

    def receive_dtmf(self, digit: str) -> None:
        self.digits.append(digit)

    def caller_hung_up(self) -> None:
        self.hung_up.set()

    def protocol_error(self, reason: str) -> None:
        raise AssertionError(reason)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def endpoint():
    e = Endpoint()
    await e.start()
    yield e
    assert e.runner is not None
    await e.runner.cleanup()


async def _open(endpoint: Endpoint, clock: Clock | None = None) -> tuple[MediaWebSocketConnection, Sink, asyncio.Task]:
    conn = await MediaWebSocketConnection.open(f"ws://127.0.0.1:{endpoint.port}/media/c1", clock=clock or Clock())
    sink = Sink()
    reader = asyncio.create_task(conn.run(sink))
    return conn, sink, reader


async def test_framing_marks_and_flush(endpoint):
    conn, sink, reader = await _open(endpoint)
    try:
        assert conn.start.format == "ulaw" and conn.frame_bytes == 160
        await conn.send_audio(b"\x01" * 100)  # less than a frame: kept
        await conn.send_audio(b"\x02" * 300)  # 400 bytes: two frames go, 80 kept
        await endpoint.settle()
        assert [len(b) for b in endpoint.binary] == [320]
        assert endpoint.text == ["MARK_MEDIA 1"]  # the mark precedes the frames it names
        assert conn.frames_sent == 2
        # Asterisk reports frame 1 playing; one frame still queued.
        await endpoint.send(cw.mark_processed_event("1", "ch1", cw.ControlFormat.PLAIN))
        await endpoint.settle()
        assert conn.unplayed_ms() == 20
        await conn.clear_playback()
        await endpoint.settle()
        assert endpoint.text[-1] == "FLUSH_MEDIA"
        assert conn.unplayed_ms() == 0  # what was queued is gone, not waiting
        # The remainder was dropped with the flush: the next frame starts clean.
        await conn.send_audio(b"\x03" * 160)
        await endpoint.settle()
        assert endpoint.binary[-1] == b"\x03" * 160 and endpoint.text[-1] == "MARK_MEDIA 3"
        # DTMF_END and the early audio frame reached the call; closing ends the leg.
        await endpoint.send(cw.dtmf_end_event("5", "ch1", cw.ControlFormat.PLAIN))
        await endpoint.settle()
        assert sink.digits == ["5"]
        await endpoint.ws.close()
        await asyncio.wait_for(sink.hung_up.wait(), 2)
    finally:
        reader.cancel()
        await conn.close()


async def test_xoff_holds_a_bounded_backlog_and_xon_sends_it(endpoint):
    conn, _, reader = await _open(endpoint)
    try:
        await conn.send_audio(b"\x01" * 160)
        await endpoint.send(cw.simple_event("MEDIA_XOFF", "ch1", cw.ControlFormat.PLAIN))
        await endpoint.settle()
        sent_before = len(endpoint.binary)
        for i in range(XOFF_BACKLOG_FRAMES + 5):
            await conn.send_audio(bytes([i % 250 + 2]) * 160)
        await endpoint.settle()
        assert len(endpoint.binary) == sent_before, "frames went out during XOFF"
        assert conn.backlog_dropped == 5
        await endpoint.send(cw.simple_event("MEDIA_XON", "ch1", cw.ControlFormat.PLAIN))
        await endpoint.settle()
        released = b"".join(endpoint.binary[sent_before:])
        assert len(released) == XOFF_BACKLOG_FRAMES * 160
        assert released[:160] == bytes([5 % 250 + 2]) * 160  # the oldest five were dropped
    finally:
        reader.cancel()
        await conn.close()


async def test_without_mark_media_the_leg_stops_asking(endpoint):
    clock = Clock()
    conn, _, reader = await _open(endpoint, clock)
    try:
        for _ in range(3):
            await conn.send_audio(b"\x01" * 160)
        clock.now += 3.0  # no MEDIA_MARK_PROCESSED for longer than the probe
        await conn.send_audio(b"\x01" * 160)
        await conn.send_audio(b"\x01" * 160)
        await endpoint.settle()
        marks = [t for t in endpoint.text if t.startswith("MARK_MEDIA")]
        assert len(marks) == 3
        assert conn.unplayed_ms() == 0
    finally:
        reader.cancel()
        await conn.close()


async def test_json_control_messages_are_answered_in_json():
    endpoint = Endpoint(cw.ControlFormat.JSON, "slin16")
    await endpoint.start()
    conn, _, reader = await _open(endpoint)
    try:
        assert conn.control_format is cw.ControlFormat.JSON and conn.frame_bytes == 640
        assert conn.audio_format.rate_hz == 16000
        await conn.send_audio(b"\x00" * 640)
        await conn.clear_playback()
        await endpoint.settle()
        assert endpoint.text == ['{"command":"MARK_MEDIA","correlation_id":"1"}', '{"command":"FLUSH_MEDIA"}']
    finally:
        reader.cancel()
        await conn.close()
        assert endpoint.runner is not None
        await endpoint.runner.cleanup()


async def test_unknown_connection_id_is_a_clear_error(endpoint):
    with pytest.raises(MediaWebSocketError, match="HTTP 404"):
        await MediaWebSocketConnection.open(f"ws://127.0.0.1:{endpoint.port}/media/nope", clock=Clock())
