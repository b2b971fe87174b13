"""Peers that misbehave on purpose, against the whole daemon over loopback sockets: every one is
cut off, limited or refused with a log line and a count, and never costs memory without bound."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import time
import uuid

import numpy as np
import pytest

from bridge.core.switchboard import Refusal, RefusedCall
from sip import audiosocket as aso
from tests.conftest import loopback_settings
from tests.peers.asterisk import AsteriskCaller
from tests.servers import running_daemon, until

pytestmark = pytest.mark.realtime

DEMO_NUMBER = "+5511999990001"
ENV = (
    "agi_network: yes\nagi_request: agi://127.0.0.1\nagi_channel: PJSIP/trunk-00000001\n"
    "agi_callerid: 5511988887777\nagi_arg_1: {number}\n\n"
)


def running(tmp_path, **sections):
    return running_daemon(loopback_settings(tmp_path, **sections))


def sample(app, name: str, **labels: str) -> float:
    value = app.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def closed_by_peer(reader: asyncio.StreamReader, within: float) -> bool:
    """True when the other side closes (EOF or reset) within ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def test_fastagi_usage_flood_is_cut_off(tmp_path, caplog):
    async with running(tmp_path) as app:
        assert app.agi is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", app.agi.port)
        writer.write(ENV.format(number=DEMO_NUMBER).encode())
        assert (await reader.readline()).startswith(b"ANSWER")
        line = b"520-" + b"u" * 1000 + b"\n"
        with caplog.at_level(logging.WARNING, logger="bridge.asterisk.agi"):
            try:
                for _ in range(500):  # up to 8 MB; the usage bound stops it after 32 kB
                    writer.write(line * 16)
                    await writer.drain()
            except ConnectionError:
                pass
            assert await closed_by_peer(reader, 5)
        assert sample(app, "callbridge_peers_closed_total", listener="agi", reason="protocol_error") == 1
        assert "usage block too long" in caplog.text
        writer.close()
        # Its place was given back: nothing is pending or active.
        await asyncio.sleep(0.1)
        assert app.switchboard is not None and app.switchboard.pending_calls == 0


async def test_unclaimed_call_expires_without_any_media_connection(tmp_path):
    async with running(tmp_path, agi={"host": "127.0.0.1", "port": 0, "claim_timeout": 0.3},
                       limits={"max_calls": 1}) as app:
        switchboard = app.switchboard
        assert app.agi is not None and switchboard is not None
        caller = AsteriskCaller(app.agi.port, DEMO_NUMBER)
        await caller.dial()
        await asyncio.wait_for(caller.audiosocket_requested.wait(), 5)
        assert switchboard.admit() is Refusal.CAPACITY  # the announced call holds the only place
        # No AudioSocket connection ever comes (the PBX failed to open it).
        await asyncio.sleep(0.8)
        assert switchboard.pending_calls == 0
        assert switchboard.admit() is None
        await caller.close()


async def test_capacity_refusals_logged_rate_limited_and_numbers_cut(tmp_path, caplog):
    async with running(tmp_path) as app:
        switchboard = app.switchboard
        assert switchboard is not None
        tenant = (await switchboard.route(DEMO_NUMBER)).tenant
        kept: list[RefusedCall] = []
        switchboard.refusal_listener = kept.append
        with caplog.at_level(logging.INFO, logger="bridge.core.switchboard"):
            for _ in range(200):
                switchboard.refused("audiosocket", Refusal.TENANT_CAPACITY, dialled="9" * 5000,
                                    caller_id="8" * 5000, tenant=tenant)
            switchboard.refused("twilio", Refusal.CAPACITY, dialled="1")
        lines = [r for r in caplog.records if r.name == "bridge.core.switchboard"]
        assert len(lines) == 2
        assert "reason=tenant_capacity" in lines[0].message and f"tenant={tenant.slug}" in lines[0].message
        assert lines[0].levelno == logging.WARNING
        assert "reason=capacity" in lines[1].message
        assert all(len(r.dialled) <= 32 and len(r.caller_id) <= 32 for r in kept)
        assert sample(app, "callbridge_calls_refused_total", transport="audiosocket",
                      reason="tenant_capacity") == 200


async def test_http_connection_limit_and_idle_timeout(tmp_path, caplog):
    async with running(tmp_path, http={"host": "127.0.0.1", "port": 0, "max_connections": 3,
                                       "idle_timeout": 0.5}) as app:
        assert app.http is not None
        port = app.http.port
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        with caplog.at_level(logging.WARNING, logger="bridge.ops.http"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 503")
        assert sample(app, "callbridge_connections_refused_total", listener="http", reason="limit") == 1
        assert "http.max_connections" in caplog.text
        writer.close()
        # The held connections send a request head a byte at a time, slower than the timeout allows.
        started = time.monotonic()
        head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 100
        slow_reader, slow_writer = held[0]

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in head:
                    slow_writer.write(bytes([byte]))
                    await asyncio.sleep(0.05)

        trickler = asyncio.create_task(trickle())
        assert await closed_by_peer(slow_reader, 5)
        assert time.monotonic() - started < 2.0
        trickler.cancel()
        # Idle ones are closed too, and the places come back.
        for r, _w in held[1:]:
            assert await closed_by_peer(r, 5)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(r.read(), 5)).startswith(b"HTTP/1.1 200")
        w.close()
        for _r, w2 in held:
            w2.close()


async def test_http_slow_body_is_timed_out(tmp_path):
    async with running(tmp_path, http={"host": "127.0.0.1", "port": 0, "body_timeout": 0.3}) as app:
        assert app.http is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", app.http.port)
        writer.write(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        answer = await asyncio.wait_for(reader.read(), 5)  # and then closed
        assert answer.startswith(b"HTTP/1.1 408"), answer
        writer.close()


async def test_accept_failures_are_logged_and_counted(tmp_path, caplog):
    async with running(tmp_path) as app:
        assert app.agi is not None
        port = app.agi.port
        clients = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(4)]
        for c in clients:
            c.setblocking(False)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        try:
            with caplog.at_level(logging.ERROR, logger="bridge.ops.accept"):
                # No descriptor left for accept(): connect() needs none (the sockets exist).
                import os

                resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")), hard))
                for c in clients:
                    with contextlib.suppress(BlockingIOError):
                        c.connect(("127.0.0.1", port))
                with contextlib.suppress(TimeoutError):
                    await until(lambda: sample(app, "callbridge_connections_refused_total",
                                               listener="agi", reason="descriptors") > 0)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            for c in clients:
                c.close()
        assert sample(app, "callbridge_connections_refused_total", listener="agi", reason="descriptors") >= 1
        assert "agi listener cannot accept connections" in caplog.text


async def test_dtmf_flood_is_rate_limited(tmp_path):
    async with running(tmp_path) as app:
        assert app.agi is not None and app.simulator is not None and app.switchboard is not None
        caller = AsteriskCaller(app.agi.port, DEMO_NUMBER, caller_id="5" * 5000)
        await caller.dial()
        await caller.connect_media()
        await until(lambda: bool(app.switchboard.calls()))
        assert len(app.switchboard.calls()[0].info.caller_id) == 64  # what the call keeps of it
        await asyncio.sleep(0.3)
        for _ in range(500):
            await caller.send_dtmf("5")
        await asyncio.sleep(0.5)
        session = app.simulator.sessions[-1]
        asked = len(session.response_requests)
        await caller.close()
        assert asked <= 30, asked
        assert sample(app, "callbridge_control_events_dropped_total", transport="audiosocket_fastagi") >= 470
        assert 1 <= sample(app, "callbridge_dtmf_digits_total", transport="audiosocket_fastagi") <= 30


async def test_audiosocket_flood_is_held_to_real_time(tmp_path):
    async with running(tmp_path) as app:
        assert app.agi is not None and app.simulator is not None
        caller = AsteriskCaller(app.agi.port, DEMO_NUMBER)
        await caller.dial()
        await asyncio.wait_for(caller.audiosocket_requested.wait(), 5)
        assert caller.audiosocket_target is not None
        uid, addr = caller.audiosocket_target
        host, _, port = addr.rpartition(":")
        _reader, writer = await asyncio.open_connection(host, int(port))
        media = aso.AudioSocketProtocol(aso.Side.CLIENT)
        media.send_uuid(uuid.UUID(uid))
        frame = (np.sin(np.arange(160) * 0.3) * 3000).astype("<i2").tobytes()
        started = time.monotonic()
        for _ in range(50):  # 10 s of audio in 50 writes, as fast as the socket takes it
            for _ in range(25):
                media.send_audio(frame)
            writer.write(b"".join(media.data_to_send()))
            await writer.drain()
        await asyncio.sleep(0.3)
        elapsed = time.monotonic() - started
        session = app.simulator.sessions[-1]
        heard_ms = session.input_audio_ms
        writer.close()
        await caller.close()
        # What reached the model is what real time allows (plus the intake's lead), not 10 s.
        assert heard_ms <= (elapsed + 0.5 + 0.1) * 1000, (heard_ms, elapsed)
        assert sample(app, "callbridge_frames_dropped_total", direction="inbound",
                      reason="faster_than_real_time") > 300


@pytest.mark.parametrize("digits", [21, 40_000])
async def test_overlong_dialled_numbers_are_unknown_on_every_entry(tmp_path, digits):
    """A Twilio ``to``, a ``/ws/audio`` path and a FastAGI argument of any length: the unknown-number
    outcome, at once, with the event loop never held up."""
    from tests.peers.media_ws import TwilioPeer, WsPeer

    number = "9" * digits
    async with running(tmp_path) as app:
        assert app.http is not None and app.agi is not None and app.switchboard is not None
        lags: list[float] = []
        loop = asyncio.get_running_loop()

        async def probe() -> None:
            while True:
                due = loop.time() + 0.005
                await asyncio.sleep(0.005)
                lags.append(loop.time() - due)

        prober = asyncio.create_task(probe())
        await asyncio.sleep(0.05)
        try:
            twilio = TwilioPeer()
            await twilio.start(f"ws://127.0.0.1:{app.http.port}/ws/twilio", {"to": number})
            assert await twilio.close_code_within(5) == 4004
            await twilio.close()
            if digits < 4000:  # longer paths are refused by the HTTP parser itself
                ws = WsPeer()
                await ws.connect(f"ws://127.0.0.1:{app.http.port}/ws/audio/{number}")
                assert await ws.close_code_within(5) == 4004
                await ws.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", app.agi.port)
            writer.write(ENV.format(number=number[:8000]).encode())
            commands = []
            while not commands or not commands[-1].startswith(b"HANGUP"):
                line = await asyncio.wait_for(reader.readline(), 5)
                assert line
                commands.append(line)
                writer.write(b"200 result=1\n")
            assert b'"CALLBRIDGE_STATUS" "UNKNOWN_NUMBER"' in b"".join(commands)
            writer.close()
            await asyncio.sleep(0.05)
        finally:
            prober.cancel()
        assert lags and max(lags) < 0.25, lags
        assert sample(app, "callbridge_calls_refused_total", transport="twilio", reason="unknown_number") == 1
