"""Who may place a call, over real loopback sockets: the source allow-list of every listener (a
second loopback address, 127.0.0.2, plays the outside network), per-tenant media tokens, Twilio
request signatures computed by Twilio's own library, browser Origins, silent legs ended and their
capacity freed, and the per-source set-up rate holding a flood while a paced call keeps its
cadence."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import websockets
from twilio.request_validator import RequestValidator

from bridge.app import Application
from tests.conftest import loopback_settings
from tests.peers.media_ws import TwilioPeer, WsPeer

pytestmark = pytest.mark.realtime

INSIDE = "127.0.0.1"
OUTSIDE = "127.0.0.2"  # a loopback address the tests configure as outside the allow-list

ACME = "+5511988880001"  # has a media token
BETA = "+5511988880002"  # has another
OPEN = "+5511988880003"  # has none
ACME_TOKEN = "acme-media-token-0123456789abcdef"
BETA_TOKEN = "beta-media-token-0123456789abcdef"
TWILIO_AUTH_TOKEN = "twilio-auth-token-for-tests-0001"

TENANTS = f"""
version: 1
tenants:
  - slug: acme
    numbers: ["{ACME}"]
    greeting: Olá
    media_token: {ACME_TOKEN}
    max_concurrent_calls: 5
  - slug: beta
    numbers: ["{BETA}"]
    greeting: Olá
    media_token: {BETA_TOKEN}
  - slug: open
    numbers: ["{OPEN}"]
    greeting: Olá
    max_concurrent_calls: 5
"""


def _settings(tmp_path: Path, **sections: Any) -> Any:
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(TENANTS, encoding="utf-8")
    sections.setdefault("tenants", {"file": str(tenants)})
    sections.setdefault("audiosocket", {"enabled": False})
    sections.setdefault("agi", {"enabled": False})
    return loopback_settings(tmp_path, **sections)


async def _start(settings: Any) -> tuple[Application, asyncio.Event, asyncio.Task[None]]:
    app = Application(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop.wait()))
    await asyncio.wait_for(app.wait_started(), 20)
    return app, stop, task


async def _stop(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await asyncio.wait_for(task, 30)


def _refused(app: Application, listener: str, reason: str) -> float:
    labels = {"listener": listener, "reason": reason}
    return app.metrics.registry.get_sample_value("callbridge_connections_refused_total", labels) or 0.0


def _calls(app: Application, transport: str, outcome: str) -> float:
    labels = {"transport": transport, "outcome": outcome}
    return app.metrics.registry.get_sample_value("callbridge_calls_total", labels) or 0.0


async def _until(predicate: Any, within: float = 5.0) -> None:
    # Daemon state (metrics, call registry) has no event to wait on: poll it.
    async with asyncio.timeout(within):
        while not predicate():
            await asyncio.sleep(0.02)


async def _upgrade_status(url: str, **options: Any) -> int:
    """The HTTP status a WebSocket upgrade is refused with (101 when it is accepted)."""
    try:
        ws = await websockets.connect(url, open_timeout=5, **options)
    except websockets.InvalidStatus as exc:
        return exc.response.status_code
    await ws.close()
    return 101


async def _answered(peer: WsPeer, within: float = 10.0) -> bool:
    """The call was bridged: agent audio (the greeting) arrives."""
    try:
        await _until(lambda: bool(peer.received) or peer.closed.is_set(), within)
    except TimeoutError:
        return False
    return bool(peer.received)


# ----------------------------------------------------------------------------- source networks


async def test_a_source_outside_the_allow_list_is_refused_on_every_listener(tmp_path, caplog):
    only_inside = [f"{INSIDE}/32"]
    settings = _settings(
        tmp_path,
        http={"host": "127.0.0.1", "port": 0, "allow_from": only_inside},
        audiosocket={"host": "127.0.0.1", "port": 0, "allow_from": only_inside},
        agi={"host": "127.0.0.1", "port": 0, "allow_from": only_inside},
        security={"refusal_log_interval": 60},
    )
    app, stop, task = await _start(settings)
    assert app.http is not None and app.audiosocket is not None and app.agi is not None
    try:
        base = f"http://127.0.0.1:{app.http.port}"
        outside = aiohttp.TCPConnector(local_addr=(OUTSIDE, 0))
        async with aiohttp.ClientSession(connector=outside) as session:
            for path in ("/health", "/metrics", "/api/calls"):
                async with session.get(base + path) as response:
                    assert response.status == 403, path
        async with aiohttp.ClientSession() as session, session.get(base + "/health") as response:
            assert response.status == 200
        url = f"ws://127.0.0.1:{app.http.port}/ws/audio/{OPEN}"
        assert await _upgrade_status(url, local_addr=(OUTSIDE, 0)) == 403
        assert _refused(app, "http", "network") == 4

        # AudioSocket and FastAGI carry no credentials: the connection is dropped at once,
        # before anything is read (the UUID and AGI environment sent here are never answered).
        for listener, port, hello in (
            ("audiosocket", app.audiosocket.port, b"\x01\x00\x10" + bytes(16)),
            ("agi", app.agi.port, b"agi_network: yes\nagi_request: agi://x/+5511988880003\n\n"),
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(OUTSIDE, 0))
            writer.write(hello)
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                async with asyncio.timeout(2):
                    await reader.readexactly(1)
            writer.close()
            assert _refused(app, listener, "network") == 1, listener
        # A peer inside the list still gets an answer from FastAGI.
        reader, writer = await asyncio.open_connection("127.0.0.1", app.agi.port, local_addr=(INSIDE, 0))
        writer.write(b"agi_network: yes\nagi_request: agi://x/+5511999999999\nagi_dnid: +5511999999999\n\n")
        async with asyncio.timeout(5):
            assert (await reader.readline()).startswith(b"SET VARIABLE")
        writer.close()
        assert _refused(app, "agi", "network") == 1
    finally:
        await _stop(stop, task)
    # Refusals are logged, but not one line each: one per listener and reason per interval.
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.security.sources"]
    assert sum("http: refused a connection" in line for line in lines) == 1
    assert any(OUTSIDE in line for line in lines)


async def test_production_refuses_to_start_open_to_the_world_without_authentication(tmp_path):
    from bridge.settings import ConfigError, load_settings

    world = {"host": "0.0.0.0", "port": 0, "allow_from": "0.0.0.0/0, ::/0"}
    with pytest.raises(ConfigError, match=r"audiosocket\.allow_from: in production .*allow_public=true"):
        load_settings(env_file=None, environ={"APP_ENV": "production"}, audiosocket=world)
    # Said explicitly, it starts; so does HTTP open to the world, whose media endpoints then
    # require every tenant's token.
    settings = load_settings(env_file=None, environ={"APP_ENV": "production"},
                             audiosocket={**world, "allow_public": True}, http=world)
    from bridge.security.exposure import listeners, media_tokens_required

    assert media_tokens_required(settings)
    described = {e.name: e.line() for e in listeners(settings)}
    assert "any address (open to the world)" in described["audiosocket"]
    assert "carries no credentials" in described["agi"]
    # With media tokens optional, HTTP open to the world is unauthenticated: refused.
    with pytest.raises(ConfigError, match=r"http\.allow_from"):
        load_settings(env_file=None, environ={"APP_ENV": "production"}, http=world,
                      security={"media_tokens": "optional"})
    # The defaults (private ranges) start in production.
    load_settings(env_file=None, environ={"APP_ENV": "production"})


# ----------------------------------------------------------------------------- media tokens


async def test_ws_audio_media_tokens(tmp_path):
    app, stop, task = await _start(_settings(tmp_path))
    assert app.http is not None
    url = f"ws://127.0.0.1:{app.http.port}/ws/audio/{ACME}"
    try:
        # Missing, wrong, and another tenant's token: refused before the upgrade, no call opened.
        assert await _upgrade_status(url) == 401
        assert await _upgrade_status(url, additional_headers={"Authorization": "Bearer nope"}) == 403
        assert await _upgrade_status(url, additional_headers={"Authorization": f"Bearer {BETA_TOKEN}"}) == 403
        assert await _upgrade_status(url + f"?token={BETA_TOKEN}") == 403
        assert await _upgrade_status(url, subprotocols=["callbridge", f"callbridge.bearer.{BETA_TOKEN}"]) == 403
        assert _refused(app, "http", "auth") == 5
        assert _calls(app, "ws_audio", "normal") == 0 and app.switchboard is not None
        assert app.switchboard.active_calls == 0

        # The right token, each way a client can present it, gets the call answered.
        for options, query in (
            ({"additional_headers": {"Authorization": f"Bearer {ACME_TOKEN}"}}, ""),
            ({"subprotocols": ["callbridge", f"callbridge.bearer.{ACME_TOKEN}"]}, ""),
            ({}, f"?token={ACME_TOKEN}"),
        ):
            peer = WsPeer()
            await peer.connect(url + query, **options)
            try:
                assert await _answered(peer), (options, query)
                if "subprotocols" in options:
                    assert peer.ws is not None and peer.ws.subprotocol == "callbridge"
            finally:
                await peer.close()
        # A tenant without a token takes calls without one (development, policy auto).
        peer = WsPeer()
        await peer.connect(f"ws://127.0.0.1:{app.http.port}/ws/audio/{OPEN}")
        try:
            assert await _answered(peer)
        finally:
            await peer.close()
    finally:
        await _stop(stop, task)


async def test_required_media_tokens_refuse_a_tenant_without_one(tmp_path):
    app, stop, task = await _start(_settings(tmp_path, security={"media_tokens": "required"}))
    assert app.http is not None
    try:
        assert await _upgrade_status(f"ws://127.0.0.1:{app.http.port}/ws/audio/{OPEN}") == 401
        assert await _upgrade_status(f"ws://127.0.0.1:{app.http.port}/ws/audio/{OPEN}?token={ACME_TOKEN}") == 403
    finally:
        await _stop(stop, task)


async def test_freeswitch_token_in_url_or_metadata(tmp_path):
    app, stop, task = await _start(_settings(tmp_path))
    assert app.http is not None
    base = f"ws://127.0.0.1:{app.http.port}/ws/freeswitch"
    try:
        cases = [
            ("", {"to": ACME}, 4401),
            ("", {"to": ACME, "token": BETA_TOKEN}, 4401),
            (f"?token={ACME_TOKEN}", {"to": ACME}, None),
            ("", {"to": ACME, "token": ACME_TOKEN}, None),
        ]
        for query, metadata, refused_with in cases:
            peer = WsPeer()
            await peer.connect(base + query)
            await peer.send(json.dumps(metadata))
            try:
                if refused_with is None:
                    assert await _answered(peer), (query, metadata)
                else:
                    assert await peer.close_code_within(5) == refused_with, (query, metadata)
            finally:
                await peer.close()
    finally:
        await _stop(stop, task)


# ----------------------------------------------------------------------------- Twilio signatures


async def test_twilio_signature_on_the_upgrade_request(tmp_path):
    settings = _settings(tmp_path, security={"twilio_auth_tokens": [TWILIO_AUTH_TOKEN]})
    app, stop, task = await _start(settings)
    assert app.http is not None
    url = f"ws://127.0.0.1:{app.http.port}/ws/twilio?tenant=acme"
    # What Twilio signs: the stream URL as given in the TwiML (wss://, host, path, query).
    signed_url = f"wss://127.0.0.1:{app.http.port}/ws/twilio?tenant=acme"
    good = RequestValidator(TWILIO_AUTH_TOKEN).compute_signature(signed_url, {})
    other_account = RequestValidator("another-accounts-auth-token").compute_signature(signed_url, {})
    other_url = RequestValidator(TWILIO_AUTH_TOKEN).compute_signature(signed_url + "&x=1", {})
    try:
        for bad in (other_account, other_url, ("B" if good[0] == "A" else "A") + good[1:]):
            headers = {"X-Twilio-Signature": bad}
            assert await _upgrade_status(url, additional_headers=headers) == 403
        assert _refused(app, "http", "auth") == 3

        # A valid signature authenticates the stream for any tenant (the tenant sets no token).
        peer = TwilioPeer()
        await peer.start(url, {"to": OPEN}, additional_headers={"X-Twilio-Signature": good})
        try:
            assert await _answered(peer)
        finally:
            await peer.close()
        # Without a signature a stream needs the tenant's token (auth tokens are configured).
        for params, accepted in (({"to": OPEN}, False), ({"to": ACME}, False),
                                 ({"to": ACME, "token": BETA_TOKEN}, False),
                                 ({"to": ACME, "token": ACME_TOKEN}, True)):
            peer = TwilioPeer()
            await peer.start(url, params)
            try:
                if accepted:
                    assert await _answered(peer), params
                else:
                    assert await peer.close_code_within(5) == 4401, params
            finally:
                await peer.close()
    finally:
        await _stop(stop, task)


async def test_twilio_signature_behind_a_proxy_uses_the_public_url(tmp_path):
    public = "wss://bridge.example.com"
    settings = _settings(tmp_path, security={"twilio_auth_tokens": ["old-token-being-rotated", TWILIO_AUTH_TOKEN],
                                             "twilio_public_url": public})
    app, stop, task = await _start(settings)
    assert app.http is not None
    try:
        signature = RequestValidator(TWILIO_AUTH_TOKEN).compute_signature(f"{public}/ws/twilio", {})
        peer = TwilioPeer()
        await peer.start(f"ws://127.0.0.1:{app.http.port}/ws/twilio", {"to": OPEN},
                         additional_headers={"X-Twilio-Signature": signature})
        try:
            assert await _answered(peer)
        finally:
            await peer.close()
    finally:
        await _stop(stop, task)


# ----------------------------------------------------------------------------- Origin


async def test_browser_origin_must_be_listed(tmp_path):
    settings = _settings(tmp_path, security={"allowed_origins": ["https://app.example.com"]})
    app, stop, task = await _start(settings)
    assert app.http is not None
    url = f"ws://127.0.0.1:{app.http.port}/ws/audio/{OPEN}"
    try:
        assert await _upgrade_status(url, origin="https://evil.example") == 403
        assert await _upgrade_status(f"ws://127.0.0.1:{app.http.port}/ws/twilio",
                                     origin="https://evil.example") == 403
        assert _refused(app, "http", "origin") == 2
        assert await _upgrade_status(url, origin="https://app.example.com") == 101
        assert await _upgrade_status(url) == 101  # no Origin: not a browser
    finally:
        await _stop(stop, task)


# ----------------------------------------------------------------------------- silent sockets


@pytest.mark.parametrize("first_audio_timeout", [0.0, 1.0], ids=["no-time-limit", "time-limit"])
async def test_silent_sockets_cannot_hold_a_tenant_at_capacity(tmp_path, first_audio_timeout):
    """Five sockets that open a call on a five-call tenant and never send audio. Without a time
    limit they keep every slot (and a model session each) and the real caller gets BUSY (1013);
    with one, they are closed with 4408 (outcome idle), their slots freed, the caller answered."""
    settings = _settings(tmp_path, limits={"first_audio_timeout": first_audio_timeout,
                                           "audio_idle_timeout": 5.0})
    app, stop, task = await _start(settings)
    assert app.http is not None and app.switchboard is not None
    url = f"ws://127.0.0.1:{app.http.port}/ws/audio/{OPEN}"
    silent = [WsPeer() for _ in range(5)]
    caller = WsPeer()
    try:
        for peer in silent:
            await peer.connect(url)
        await _until(lambda: app.switchboard is not None and app.switchboard.active_calls == 5)
        if first_audio_timeout == 0.0:
            await asyncio.sleep(1.5)
            await caller.connect(url)
            assert await caller.close_code_within(5) == 1013
            assert app.switchboard.active_calls == 5
            assert not any(peer.closed.is_set() for peer in silent)
            return
        codes = [await peer.close_code_within(5) for peer in silent]
        assert codes == [4408] * 5
        assert all(peer.close_reason == "idle" for peer in silent)
        assert _calls(app, "ws_audio", "idle") == 5
        await _until(lambda: app.switchboard is not None and app.switchboard.active_calls == 0)
        await caller.connect(url)
        assert await _answered(caller)
        assert app.switchboard.active_calls == 1
    finally:
        for peer in [*silent, caller]:
            await peer.close()
        await _stop(stop, task)


async def test_a_leg_that_stops_sending_is_ended_after_the_idle_limit(tmp_path):
    settings = _settings(tmp_path, limits={"first_audio_timeout": 5.0, "audio_idle_timeout": 0.6})
    app, stop, task = await _start(settings)
    assert app.http is not None
    peer = WsPeer()
    try:
        await peer.connect(f"ws://127.0.0.1:{app.http.port}/ws/audio/{OPEN}")
        silence = bytes(320)  # 20 ms of 8 kHz PCM16
        started = time.monotonic()
        await peer.send_paced([silence] * 25, 0.020)  # half a second of audio, then nothing
        assert await peer.close_code_within(5) == 4408
        assert time.monotonic() - started >= 0.5 + 0.6 - 0.05
        assert _calls(app, "ws_audio", "idle") == 1
    finally:
        await peer.close()
        await _stop(stop, task)


# ----------------------------------------------------------------------------- set-up rate

_FLOOD = r"""
import asyncio, json, os, socket, sys, time
os.nice(10)  # the attacker's CPU is not the daemon's: another process, at lower priority
port, seconds, source = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
counts = {}
async def one():
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(b"GET /ws/audio/%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                 % sys.argv[4].encode())
    status = (await reader.readline()).split()[1].decode()
    counts[status] = counts.get(status, 0) + 1
    writer.close()
async def worker(end):
    while time.monotonic() < end:
        try:
            await one()
        except OSError:
            counts["error"] = counts.get("error", 0) + 1
        await asyncio.sleep(0.02)  # four workers: up to 200 set-ups a second
async def main():
    print("started", flush=True)
    end = time.monotonic() + seconds
    await asyncio.gather(*(worker(end) for _ in range(4)))
    print(json.dumps(counts), flush=True)
asyncio.run(main())
"""


async def test_set_up_rate_holds_a_flood_while_a_paced_call_keeps_its_cadence(tmp_path, host_stalls):
    settings = _settings(tmp_path, limits={"setup_rate": 5.0, "setup_burst": 10})
    app, stop, task = await _start(settings)
    assert app.http is not None
    flood = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _FLOOD, str(app.http.port), "4", OUTSIDE, OPEN,
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": ""},
    )
    assert flood.stdout is not None
    peer = WsPeer()
    try:
        assert (await asyncio.wait_for(flood.stdout.readline(), 20)).strip() == b"started"
        flood_started = time.monotonic()
        await asyncio.sleep(0.5)
        await peer.connect(f"ws://127.0.0.1:{app.http.port}/ws/audio/{OPEN}")
        silence = bytes(320)
        sender = asyncio.create_task(peer.send_paced([silence] * 150, 0.020))  # 3 s of caller audio
        await sender
        out, _ = await asyncio.wait_for(flood.communicate(), 20)
        counts = json.loads(out.decode().strip().splitlines()[-1])
        elapsed = time.monotonic() - flood_started
    finally:
        await peer.close()
        if flood.returncode is None:
            flood.kill()
            await flood.wait()
        await _stop(stop, task)
    # The flood: far more attempts than the bucket lets through (the burst, then 5 a second),
    # the rest refused with 429 before the upgrade. What passes becomes a call (the tenant's five
    # slots, then 1013) that the flood hangs up at once.
    passed = counts.get("101", 0)
    assert counts.get("429", 0) > 3 * passed, counts
    assert 10 <= passed <= 10 + 5.0 * elapsed + 1, counts
    assert _refused(app, "http", "rate") == counts["429"]
    # The paced call from another source: agent audio 50 frames a second, never starved (a flood
    # that gets its set-ups through costs other calls gaps of hundreds of milliseconds). The bound
    # is wider than the 45 ms of the cadence tests (tests/e2e/test_ws_audio_call.py): the flood
    # process shares this host's CPU with the daemon, which a real attacker's does not.
    greeting = [r.at for r in peer.received]
    assert len(greeting) > 40
    host_stalls.assert_no_gap(greeting, limit=0.1)
    rate = (len(greeting) - 1) / (greeting[-1] - greeting[0])
    assert 47 <= rate <= 53, rate



async def test_a_silent_audiosocket_leg_is_ended_and_its_slot_freed(tmp_path):
    """Asterisk sends a frame every 20 ms while the channel is up: an AudioSocket peer that
    stops is stalled or not Asterisk. It gets a HANGUP and its call ends with outcome idle."""
    from tests.peers.asterisk import AsteriskCaller

    settings = _settings(tmp_path, audiosocket={"host": "127.0.0.1", "port": 0},
                         agi={"host": "127.0.0.1", "port": 0},
                         limits={"first_audio_timeout": 0.5, "audio_idle_timeout": 0.5})
    app, stop, task = await _start(settings)
    assert app.agi is not None and app.switchboard is not None
    try:
        quiet = AsteriskCaller(app.agi.port, OPEN)
        await quiet.dial()
        await quiet.connect_media()
        await asyncio.wait_for(quiet.media_closed.wait(), 5)
        stopped = AsteriskCaller(app.agi.port, OPEN)
        await stopped.dial()
        await stopped.connect_media()
        started = time.monotonic()
        await stopped.play(np.zeros(8000, dtype=np.int16))  # one second of audio, then nothing
        await asyncio.wait_for(stopped.media_closed.wait(), 5)
        assert time.monotonic() - started >= 1.0
        await _until(lambda: _calls(app, "audiosocket_fastagi", "idle") == 2)
        assert app.switchboard.active_calls == 0
        await quiet.close()
        await stopped.close()
    finally:
        await _stop(stop, task)
