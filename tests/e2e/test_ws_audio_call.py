"""Whole calls over /ws/audio/{sip_number}: a real websockets client talking at real-time pace to
callbridge, bridged to the built-in realtime simulator through the real openai SDK."""

from __future__ import annotations

import asyncio
import base64
import re
import time

import aiohttp
import numpy as np
import pytest

from bridge.simulator import greeting_samples
from media import g711
from media.resample import StreamResampler
from tests.conftest import REPO_ROOT, load_wav, loopback_settings
from tests.peers.media_ws import WsPeer, frames
from tests.servers import start_daemon, stop_daemon, until

pytestmark = pytest.mark.realtime

DEMO_NUMBER = "+5511999990001"


def _settings(tmp_path, **extra):
    # WebSocket media only: the AudioSocket and FastAGI listeners stay off.
    return loopback_settings(tmp_path, audiosocket={"enabled": False}, agi={"enabled": False}, **extra)


async def _start(tmp_path, **extra):
    app, stop, task = await start_daemon(_settings(tmp_path, **extra))
    return app, stop, task


def _url(app, number=DEMO_NUMBER, query=""):
    return f"ws://127.0.0.1:{app.http.port}/ws/audio/{number}{query}"


def _sample(app, name, labels):
    return app.metrics.registry.get_sample_value(name, labels) or 0.0


def _speech_24k(fixtures_dir, seconds):
    samples, rate = load_wav(fixtures_dir / "speech" / "real_cmu_16k.wav")
    assert rate == 16000
    return StreamResampler(16000, 24000).process(samples[: int(16000 * seconds)])


def _pcm(samples):
    return np.asarray(samples, dtype=np.int16).tobytes()


def _decoded(received):
    return [base64.b64decode(r.data) if r.is_text else r.data for r in received]


# ----------------------------------------------------------------------------- README client


def _readme_client() -> str:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- ws-audio-client -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md has no ws-audio-client code block"
    return match.group(1)


async def test_readme_client_runs_verbatim(tmp_path):
    app, stop, task = await _start(tmp_path)
    try:
        code = _readme_client()
        assert code.count("ws://localhost:8000") == 1
        code = code.replace("ws://localhost:8000", f"ws://127.0.0.1:{app.http.port}")
        namespace: dict[str, object] = {"__name__": "readme_client"}
        # The example calls asyncio.run itself, so it gets a thread with its own event loop.
        await asyncio.to_thread(exec, compile(code, "README.md", "exec"), namespace)
        audio = np.frombuffer(namespace["agent_audio"], dtype=np.int16)
        # Three seconds of talking: the Portuguese greeting (5.3 s) was playing for most of them, as 24 kHz
        # PCM16, sample for sample.
        assert 2.0 < len(audio) / 24000 < 3.2, len(audio) / 24000
        greeting = greeting_samples("pt")[: len(audio)]  # the example tenants speak Portuguese
        assert np.corrcoef(audio.astype(np.float64), greeting.astype(np.float64))[0, 1] > 0.99
        await until(lambda: app.switchboard.active_calls == 0)
        outcome = {"transport": "ws_audio", "outcome": "caller_hangup"}
        assert _sample(app, "callbridge_calls_total", outcome) == 1
    finally:
        await stop_daemon(stop, task)


# ----------------------------------------------------------------------------- a whole call


@pytest.mark.both_dialects
async def test_text_call_pace_barge_in_and_truncate(tmp_path, fixtures_dir, host_stalls):
    app, stop, task = await _start(tmp_path)
    client = WsPeer()
    try:
        await client.connect(_url(app))
        silence = np.zeros(24000 * 4, dtype=np.int16)
        audio = np.concatenate([silence[: int(24000 * 1.2)], _speech_24k(fixtures_dir, 3.0), silence])
        pcm = _pcm(audio)
        # 40 ms TEXT frames of base64 PCM16 24 kHz, as the clients in the field send them.
        messages = [base64.b64encode(f).decode() for f in frames(pcm, 1920)]
        await client.send_paced(messages, 0.040)
        await client.close()
        await until(lambda: app.switchboard.active_calls == 0)

        session = app.simulator.sessions[-1]
        assert session.session_config["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert session.speech_started_at, "the simulator never heard the caller"
        barge_at = session.speech_started_at[0]

        received = client.received
        assert received and all(r.is_text for r in received), "replies must be TEXT like the client's frames"
        payloads = _decoded(received)
        assert {len(p) for p in payloads} == {960}, "agent audio goes out as 20 ms frames of 24 kHz PCM16"
        # Greeting: 50 frames/s with no gap until the caller barges in.
        greeting = [r.at for r in received if r.at < barge_at]
        assert len(greeting) > 40
        host_stalls.assert_no_gap(greeting)
        rate = (len(greeting) - 1) / (greeting[-1] - greeting[0])
        assert 47 <= rate <= 53, rate
        # Barge-in: agent audio stops within 60 ms of speech_started.
        still = [r.at for r in received if barge_at <= r.at < barge_at + 0.5]
        assert not still or still[-1] - barge_at <= 0.060, still[-1] - barge_at
        # The truncation reports what the client received of the greeting (one frame of slack).
        assert session.truncates, "no conversation.item.truncate was sent"
        heard_ms = 20 * len(greeting) + 20 * len(still)
        assert abs(session.truncates[0]["audio_end_ms"] - heard_ms) <= 40, (session.truncates[0], heard_ms)
        # After the caller's turn the simulator echoes it: the agent talks again.
        answer = [r for r in received if r.at > barge_at + 0.5]
        assert len(answer) > 50, "no answer after the caller's turn"
        latency = app.metrics.registry.get_sample_value(
            "callbridge_response_latency_seconds_count", {"transport": "ws_audio"})
        assert latency and latency >= 1
    finally:
        await stop_daemon(stop, task)


@pytest.mark.both_dialects
@pytest.mark.parametrize(
    ("query", "kind", "frame_bytes"),
    [
        ("?format=ulaw_8k", "binary", 160),
        ("?format=pcm16_8k", "text", 320),
        ("?frames=binary", "binary", 960),
    ],
)
async def test_formats_and_frame_kinds(tmp_path, query, kind, frame_bytes):
    app, stop, task = await _start(tmp_path)
    client = WsPeer()
    try:
        await client.connect(_url(app, query=query))
        if "ulaw" in query:
            chunk = bytes([g711.MULAW_SILENCE]) * 320  # 40 ms
        elif "8k" in query:
            chunk = bytes(640)
        else:
            chunk = bytes(1920)
        message = chunk if kind == "binary" else base64.b64encode(chunk).decode()
        await client.send_paced([message] * 30, 0.040)
        await client.close()
        got = client.received
        assert len(got) > 30
        assert all((not r.is_text) == (kind == "binary") for r in got)
        payloads = _decoded(got)
        assert {len(p) for p in payloads} == {frame_bytes}
        # The greeting is in there, in the requested format.
        if "ulaw" in query:
            samples = g711.ulaw_decode(b"".join(payloads))
            rate = 8000
        else:
            samples = np.frombuffer(b"".join(payloads), dtype=np.int16)
            rate = 8000 if "8k" in query else 24000
        reference = greeting_samples("pt")  # the example tenants speak Portuguese
        if rate != 24000:
            reference = StreamResampler(24000, rate).process(reference)
        n = min(len(samples), len(reference))
        assert np.corrcoef(samples[:n].astype(np.float64), reference[:n].astype(np.float64))[0, 1] > 0.9
    finally:
        await stop_daemon(stop, task)


# ----------------------------------------------------------------------------- refusals and failures


async def test_unknown_and_inactive_numbers_get_4004(tmp_path):
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(
        "version: 1\n"
        "tenants:\n"
        "  - {slug: live, name: Live, numbers: ['+5511999990001'], instructions: hi}\n"
        "  - {slug: gone, name: Gone, active: false, numbers: ['+5511999990009'], instructions: hi}\n",
        encoding="utf-8",
    )
    app, stop, task = await _start(tmp_path, tenants={"file": str(tenants)})
    try:
        for number in ("+15550000000", "+5511999990009"):
            client = WsPeer()
            await client.connect(_url(app, number))
            assert await client.close_code_within(5) == 4004
            assert client.close_reason == "unknown number"
        assert app.simulator.sessions == [], "an unknown number reached the model"
        assert _sample(app, "callbridge_calls_refused_total",
                       {"transport": "ws_audio", "reason": "unknown_number"}) == 2
    finally:
        await stop_daemon(stop, task)


async def test_unreachable_model_gets_1011(tmp_path):
    model = {"provider": "openai", "api_key": "sk-test", "websocket_base_url": "ws://127.0.0.1:9/v1",
             "connect_timeout": 3}
    app, stop, task = await _start(tmp_path, model=model)
    try:
        client = WsPeer()
        await client.connect(_url(app))
        sending = asyncio.create_task(client.send_paced([base64.b64encode(bytes(1920)).decode()] * 50, 0.04))
        assert await client.close_code_within(8) == 1011
        await sending
        await until(lambda: _sample(app, "callbridge_calls_total",
                                     {"transport": "ws_audio", "outcome": "model_error"}) == 1)
    finally:
        await stop_daemon(stop, task)


async def test_model_failure_mid_call_gets_1011(tmp_path):
    app, stop, task = await _start(tmp_path)
    try:
        client = WsPeer()
        await client.connect(_url(app))
        sending = asyncio.create_task(client.send_paced([base64.b64encode(bytes(1920)).decode()] * 100, 0.04))
        await until(lambda: len(client.received) > 10)
        await app.simulator.drop_all(1011)
        assert await client.close_code_within(5) == 1011
        await sending
    finally:
        await stop_daemon(stop, task)


async def test_normal_end_gets_1000(tmp_path):
    app, stop, task = await _start(tmp_path)
    try:
        client = WsPeer()
        await client.connect(_url(app))
        sending = asyncio.create_task(client.send_paced([base64.b64encode(bytes(1920)).decode()] * 100, 0.04))
        await until(lambda: len(client.received) > 10)
        # The model ends its session normally: nothing more can be said, the call ends normally.
        await app.simulator.drop_all(1000)
        assert await client.close_code_within(5) == 1000
        await sending
        await until(lambda: _sample(app, "callbridge_calls_total",
                                     {"transport": "ws_audio", "outcome": "normal"}) == 1)
    finally:
        await stop_daemon(stop, task)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("this is not base64!", 1008),
        (base64.b64encode(bytes(961)).decode(), 1008),  # half a PCM16 sample
        (bytes(961), 1008),
        (bytes(300 * 1024), 1009),
    ],
    ids=["bad-base64", "odd-text", "odd-binary", "oversize"],
)
async def test_malformed_frame_closes_only_that_socket(tmp_path, message, code):
    app, stop, task = await _start(tmp_path)
    try:
        good, bad = WsPeer(), WsPeer()
        await good.connect(_url(app))
        await bad.connect(_url(app))
        frame = base64.b64encode(bytes(1920)).decode()
        talking = asyncio.create_task(good.send_paced([frame] * 60, 0.04))
        await bad.send_paced([frame] * 5, 0.04)
        await bad.send(message)
        assert await bad.close_code_within(5) == code
        await talking
        assert not good.closed.is_set(), "a bad frame on one socket closed another"
        assert len(good.received) > 50
        await good.close()
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{app.http.port}/health") as r:
            assert (await r.json())["status"] == "ok"
        await until(lambda: app.switchboard.active_calls == 0)
        outcome = {"transport": "ws_audio", "outcome": "protocol_error"}
        assert _sample(app, "callbridge_calls_total", outcome) == 1
    finally:
        await stop_daemon(stop, task)


async def test_unsupported_format_query_is_refused(tmp_path):
    app, stop, task = await _start(tmp_path)
    try:
        client = WsPeer()
        await client.connect(_url(app, query="?format=opus_48k"))
        assert await client.close_code_within(5) == 1008
        assert "unsupported format" in client.close_reason
        assert app.simulator.sessions == []
    finally:
        await stop_daemon(stop, task)


async def test_fast_sender_is_bounded_not_cut_off(tmp_path):
    app, stop, task = await _start(tmp_path)
    try:
        client = WsPeer()
        await client.connect(_url(app))
        await until(lambda: app.switchboard.active_calls == 1)
        # 60 s of audio (1500 frames of 40 ms) in about one second.
        frame = base64.b64encode(bytes(1920)).decode()
        started = time.monotonic()
        await client.send_paced([frame] * 1500, 1.0 / 1500)
        blast = time.monotonic() - started
        assert blast < 3.0
        # Then real time again for two seconds: the call is alive and the agent still speaks.
        before = len(client.received)
        await client.send_paced([frame] * 50, 0.04)
        assert not client.closed.is_set()
        assert len(client.received) - before > 50
        dropped = _sample(app, "callbridge_frames_dropped_total",
                          {"direction": "inbound", "reason": "faster_than_real_time"})
        # 60 s sent in `blast` seconds: all but about blast + 0.5 s lead + 1 s backlog is dropped.
        expected = (60.0 - blast - 1.5) / 0.020
        assert dropped > expected - 100, (dropped, expected)
        # The model never got more than real time allows.
        session = app.simulator.sessions[-1]
        await client.close()
        await until(lambda: app.switchboard.active_calls == 0)
        elapsed = time.monotonic() - started
        assert session.input_audio_ms / 1000 < elapsed + 2.5, (session.input_audio_ms, elapsed)
    finally:
        await stop_daemon(stop, task)


async def test_shutdown_refuses_new_calls_and_ends_active_ones_with_1001(tmp_path):
    app, stop, task = await _start(tmp_path, limits={"drain_timeout": 1.0})
    active = WsPeer()
    await active.connect(_url(app))
    frame = base64.b64encode(bytes(1920)).decode()
    talking = asyncio.create_task(active.send_paced([frame] * 150, 0.04))
    await until(lambda: app.switchboard.active_calls == 1)
    stop.set()
    await until(lambda: app.switchboard.draining)
    # While draining, the endpoint is up but takes no new call.
    late = WsPeer()
    await late.connect(_url(app))
    assert await late.close_code_within(5) == 1013
    # The active call runs on until the drain timeout, then is ended with "going away".
    assert await active.close_code_within(5) == 1001
    await asyncio.wait_for(task, 15)
    await talking
    await active.close()
    await late.close()
    refused = {"transport": "ws_audio", "reason": "draining"}
    assert _sample(app, "callbridge_calls_refused_total", refused) == 1
    assert _sample(app, "callbridge_calls_total", {"transport": "ws_audio", "outcome": "shutdown"}) == 1


async def test_passthrough_tenant_needs_a_mu_law_stream(tmp_path):
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(
        "version: 1\n"
        "tenants:\n"
        "  - {slug: g711, name: G711, numbers: ['+5511999990001'], instructions: hi,\n"
        "     audio_mode: passthrough, greeting: Hello}\n",
        encoding="utf-8",
    )
    app, stop, task = await _start(tmp_path, tenants={"file": str(tenants)})
    try:
        # mu-law 8 kHz goes to the model untouched.
        ulaw = WsPeer()
        await ulaw.connect(_url(app, query="?format=ulaw_8k"))
        await ulaw.send_paced([bytes([g711.MULAW_SILENCE]) * 320] * 25, 0.04)
        await ulaw.close()
        assert app.simulator.sessions[-1].session_config["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert ulaw.received and {len(r.data) for r in ulaw.received} == {160}
        # A 24 kHz PCM stream cannot be passed through: refused before any model connection.
        sessions = len(app.simulator.sessions)
        pcm = WsPeer()
        await pcm.connect(_url(app))
        assert await pcm.close_code_within(5) == 1011
        assert len(app.simulator.sessions) == sessions
    finally:
        await stop_daemon(stop, task)
