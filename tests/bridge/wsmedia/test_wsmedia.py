"""The WebSocket media parts on their own: the caller intake's real-time limit, and a leg's
playback marks and goodbye over a real loopback WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import ClientSession, WSMsgType, web
from websockets.frames import OP_TEXT

from bridge.core.call import Call, CallInfo, Outcome
from bridge.core.intake import INTAKE_BACKLOG_SECONDS, INTAKE_LEAD_SECONDS, CallerIntake
from bridge.core.realtime import ModelEndpoint
from bridge.ops.metrics import Metrics
from bridge.settings import ModelProvider
from bridge.wsmedia import twilio as twilio_stream
from bridge.wsmedia.leg import MARK_EVERY_FRAMES, close_code_for, new_socket
from bridge.wsmedia.twilio import TwilioLeg
from media.codec import SLIN_24K, ULAW_8K
from sip import twilio as tw
from tenants.config import TenantConfig
from tests.peers.media_ws import TwilioPeer, read_frame
from tests.servers import serve_app

TENANT = TenantConfig(tenant_id="t1", slug="test", noise_suppression="off")
ENDPOINT = ModelEndpoint(ModelProvider.SIMULATOR, "gpt-realtime", "x", websocket_base_url="ws://127.0.0.1:9/v1")


class ManualClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class PcmLeg:
    """A caller leg that is never sent anything: the intake only feeds the call."""

    transport = "ws_audio"
    audio_format = SLIN_24K
    keepalive = False

    async def send_audio(self, payload: bytes) -> None: ...

    async def clear_playback(self) -> None: ...

    async def hangup(self) -> None: ...

    async def transfer(self, target: object) -> bool:
        return False


def _intake(clock: ManualClock) -> tuple[CallerIntake, Call, Metrics]:
    metrics = Metrics()
    call = Call(CallInfo("ws_audio", TENANT, "+5511999990001"), PcmLeg(), ENDPOINT, metrics, clock=clock)
    return CallerIntake(call, metrics, clock), call, metrics


async def test_intake_passes_a_real_time_client_at_once():
    clock = ManualClock()
    intake, call, _ = _intake(clock)
    for _ in range(500):  # 20 s of 40 ms frames, each arriving when complete
        clock.now += 0.040
        intake.feed(bytes(1920))
    assert call.stats.frames_in == 1000  # cut into 20 ms frames, none held back
    assert intake.dropped_frames == 0


async def test_intake_bounds_a_client_faster_than_real_time():
    clock = ManualClock()
    intake, call, metrics = _intake(clock)
    intake.feed(bytes(1920) * 1500)  # 60 s of audio at one instant
    lead_frames = round(INTAKE_LEAD_SECONDS / 0.020)
    backlog_frames = round(INTAKE_BACKLOG_SECONDS / 0.020)
    assert call.stats.frames_in == lead_frames
    assert intake.dropped_frames == 3000 - lead_frames - backlog_frames
    dropped = metrics.registry.get_sample_value(
        "callbridge_frames_dropped_total", {"direction": "inbound", "reason": "faster_than_real_time"})
    assert dropped == intake.dropped_frames


async def test_intake_releases_the_backlog_at_real_time():
    intake, call = _intake_real_clock()
    runner = asyncio.create_task(intake.run())
    try:
        started = time.monotonic()
        intake.feed(bytes(960) * 50)  # 1 s of audio at once
        lead_frames = round(INTAKE_LEAD_SECONDS / 0.020)
        assert call.stats.frames_in == lead_frames
        async with asyncio.timeout(2.0):
            while call.stats.frames_in < 50:
                await asyncio.sleep(0.01)
        elapsed = time.monotonic() - started
        # The rest came out as real time allowed: 1 s of audio, minus the lead, after the start.
        assert 1.0 - INTAKE_LEAD_SECONDS - 0.03 <= elapsed <= 1.0 - INTAKE_LEAD_SECONDS + 0.15, elapsed
    finally:
        runner.cancel()


def _intake_real_clock() -> tuple[CallerIntake, Call]:
    metrics = Metrics()
    call = Call(CallInfo("ws_audio", TENANT, "+5511999990001"), PcmLeg(), ENDPOINT, metrics)
    return CallerIntake(call, metrics, time.monotonic), call


def test_close_codes_for_outcomes():
    assert close_code_for(Outcome.AGENT_HANGUP) == 1000
    assert close_code_for(Outcome.SHUTDOWN) == 1001
    assert close_code_for(Outcome.PROTOCOL_ERROR) == 1008
    assert close_code_for(Outcome.MODEL_ERROR) == 1011
    assert close_code_for(None) == 1000


@contextlib.asynccontextmanager
async def _serve(route: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    """An aiohttp server on loopback whose one route is ``/ws/twilio``; yields its URL."""
    app = web.Application()
    app.router.add_get("/ws/twilio", route)
    async with serve_app(app) as port:
        yield f"ws://127.0.0.1:{port}/ws/twilio"


@pytest.fixture
async def twilio_leg_server():
    """An aiohttp server whose one route drives a TwilioLeg the way a call's pacer would."""
    results: dict[str, object] = {}
    done = asyncio.Event()

    async def route(request: web.Request) -> web.StreamResponse:
        ws = new_socket()
        await ws.prepare(request)
        info = CallInfo("twilio", TENANT, "+5511999990001")
        leg = TwilioLeg(ws, request, ULAW_8K, info, Metrics(), time.monotonic, "MZ" + "0" * 32)

        async def read() -> None:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    event = tw.parse_message(msg.data)
                    if isinstance(event, tw.Mark):
                        leg.mark_echoed(event.name)

        reader = asyncio.create_task(read())
        t0 = time.monotonic()
        for n in range(50):  # one second of agent audio, paced
            await asyncio.sleep(max(0.0, t0 + n * 0.020 - time.monotonic()))
            await leg.send_audio(bytes([0x00]) * 160)
        await leg.end_of_segment()
        results["unplayed_ms"] = leg.unplayed_ms()
        info.outcome = Outcome.AGENT_HANGUP
        await leg.hangup()
        results["closed_at"] = time.monotonic()
        reader.cancel()
        done.set()
        return ws

    async with _serve(route) as url:
        yield url, results, done


async def test_leg_marks_playback_and_lets_the_goodbye_play_out(twilio_leg_server):
    url, results, done = twilio_leg_server
    peer = TwilioPeer(playout_delay=0.3)
    await peer.connect(url)
    peer._tasks.append(asyncio.create_task(peer.player.run()))
    try:
        await asyncio.wait_for(done.wait(), 10)
        assert await peer.close_code_within(5) == 1000
        # A mark every MARK_EVERY_FRAMES frames, and one at the end of the stretch of audio.
        assert len(peer.marks) == 50 // MARK_EVERY_FRAMES
        # At the end of sending, "Twilio" still held its 300 ms playout delay and the last frame.
        assert 280 <= results["unplayed_ms"] <= 360, results["unplayed_ms"]
        # The socket closed only once the whole second had been played to the caller.
        assert peer.player.heard_seconds() == pytest.approx(1.0)
        last_played = max(p.end for p in peer.player.played)
        assert results["closed_at"] >= last_played - 0.005
    finally:
        await peer.close()


try:
    from media import _native as native
except ImportError:  # installed without a C compiler: the fallbacks are what runs
    native = None
needs_native = pytest.mark.skipif(native is None, reason="media._native is not built")


@pytest.mark.parametrize("audio_bytes", [0, 1, 2, 3, 10, 160, 161, 48_000, 60_000])
@needs_native
def test_text_frame_reads_back_as_the_twilio_media_message(audio_bytes: int) -> None:
    # Sizes cover the three length encodings (7-bit, 16-bit, 64-bit) and base64's padding cases.
    audio = os.urandom(audio_bytes)
    sid = "MZ" + "ab" * 16
    head, tail = tw.media_message_parts(sid)
    frame = read_frame(native.text_frame(head, audio, tail), mask=False)
    assert frame.opcode == OP_TEXT and frame.fin
    assert frame.data.decode("ascii") == tw.media_message(sid, audio)
    event = tw.parse_message(frame.data)
    assert isinstance(event, tw.Media) and event.payload == audio and event.stream_sid == sid


@needs_native
def test_text_frame_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ASCII"):
        native.text_frame(b"\xc3\xa9", b"", b"")
    with pytest.raises(TypeError):
        native.text_frame(b"", b"", "text")
    with pytest.raises(TypeError):
        native.text_frame(b"", b"")


@pytest.mark.parametrize("framed_here", [True, False])
async def test_twilio_leg_sends_the_same_messages_either_way(framed_here, monkeypatch):
    # Agent audio framed in one compiled call and written to the transport, or handed to aiohttp's
    # send_str (no compiled module): the peer reads the same messages, in order.
    if not framed_here:
        monkeypatch.setattr(twilio_stream, "TEXT_FRAME", None)
    sid = "MZ" + "0" * 32
    frames = [os.urandom(160) for _ in range(30)]
    sent: list[bool] = []

    async def route(request: web.Request) -> web.StreamResponse:
        ws = new_socket()
        await ws.prepare(request)
        leg = TwilioLeg(ws, request, ULAW_8K, CallInfo("twilio", TENANT, "+5511999990001"), Metrics(),
                        time.monotonic, sid)
        for frame in frames:
            await leg.send_audio(frame)
        sent.append(leg.playback.pending_marks > 0)
        await ws.close()
        # Once closing has begun nothing more is written, on either path.
        await leg.send_audio(frames[0])
        return ws

    got: list[str] = []
    async with _serve(route) as url, ClientSession() as session, session.ws_connect(url) as ws:
        async for msg in ws:
            assert msg.type is WSMsgType.TEXT
            got.append(msg.data)
    events = [tw.parse_message(m) for m in got]
    media = [m for m, e in zip(got, events, strict=True) if isinstance(e, tw.Media)]
    marks = [(m, e) for m, e in zip(got, events, strict=True) if isinstance(e, tw.Mark)]
    assert media == [tw.media_message(sid, f) for f in frames]
    # The bookkeeping after each frame ran too: a mark right behind every MARK_EVERY_FRAMES-th
    # frame, each the message mark_message would send.
    kinds = ["mark" if isinstance(e, tw.Mark) else "media" for e in events]
    every = ["media"] * MARK_EVERY_FRAMES + ["mark"]
    assert kinds == every * (len(frames) // MARK_EVERY_FRAMES) and sent == [True]
    assert all(m == tw.mark_message(sid, e.name) for m, e in marks)
    assert len({e.name for _, e in marks}) == len(marks)
