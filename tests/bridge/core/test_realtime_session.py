"""The model leg reaches any server of the Realtime protocol the way an operator configures it:
OpenAI's base URL (as the SDK honours OPENAI_BASE_URL), a WebSocket base URL, or Azure's v1
surface with an api-key header. The server is the project's own simulator."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys

import pytest
from websockets.frames import OP_TEXT

from bridge.core.realtime import ModelError, RealtimeSession, endpoint_from_settings
from bridge.settings import ModelProvider, load_settings
from bridge.simulator import SimulatorServer
from media._native import masked_text_frame
from sip import realtime as rt
from tenants.config import TenantConfig
from tests.conftest import REPO_ROOT
from tests.peers.media_ws import read_frame


@pytest.fixture
async def simulator():
    server = SimulatorServer(pace=20.0)
    await server.start()
    yield server
    await server.close()


async def _round_trip(session: RealtimeSession) -> dict:
    tenant = TenantConfig(tenant_id="t", slug="t", voice="cedar", instructions="hi")
    await session.send(rt.session_update(tenant, model="gpt-realtime"))
    async with asyncio.timeout(5):
        async for event in session.events():
            if event["type"] == "session.updated":
                return event
    raise AssertionError("no session.updated")


async def test_openai_base_url_like_openai_base_url_env(simulator) -> None:
    settings = load_settings(env_file=None, environ={
        "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"http://127.0.0.1:{simulator.port}/v1"})
    endpoint = endpoint_from_settings(settings)
    assert endpoint.provider is ModelProvider.OPENAI
    session = await RealtimeSession.connect(endpoint)
    try:
        updated = await _round_trip(session)
        assert updated["session"]["audio"]["output"]["voice"] == "cedar"
    finally:
        await session.close()
    assert simulator.sessions[-1].path.endswith("/v1/realtime")


async def test_azure_openai_v1_surface(simulator) -> None:
    settings = load_settings(env_file=None, environ={}, model={
        "azure_endpoint": f"http://127.0.0.1:{simulator.port}", "azure_api_key": "az-key",
        "azure_deployment": "my-realtime"})
    endpoint = endpoint_from_settings(settings)
    assert endpoint.provider is ModelProvider.AZURE_OPENAI
    assert endpoint.websocket_base_url == f"ws://127.0.0.1:{simulator.port}/openai/v1"
    assert endpoint.headers == {"api-key": "az-key"}
    session = await RealtimeSession.connect(endpoint)
    try:
        await _round_trip(session)
    finally:
        await session.close()
    record = simulator.sessions[-1]
    assert record.path == "/openai/v1/realtime" and record.model == "my-realtime"


async def test_unreachable_model_is_a_model_error() -> None:
    settings = load_settings(env_file=None, environ={}, model={
        "provider": "openai", "api_key": "k", "websocket_base_url": "ws://127.0.0.1:9/v1",
        "connect_timeout": 2})
    with pytest.raises(ModelError) as info:
        await RealtimeSession.connect(endpoint_from_settings(settings))
    assert info.value.kind == "connect"
    assert "k" not in str(info.value).split()  # the key is never in the message


@pytest.mark.parametrize("framed_here", [True, False])
async def test_audio_appended_at_once_arrives_whole_and_in_order_with_queued_sends(simulator, framed_here) -> None:
    settings = load_settings(env_file=None, environ={
        "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"http://127.0.0.1:{simulator.port}/v1"})
    session = await RealtimeSession.connect(endpoint_from_settings(settings))
    try:
        # This install frames immediate appends itself (the compiled builder is there); without
        # it, the library frames them.
        assert session._keys is not None
        if not framed_here:
            session._keys = None
        await _round_trip(session)
        # 20 ms frames of PCM16 at 24 kHz, each different, sizes around base64's padding cases.
        frames = [os.urandom(960 + i % 3 * 2) for i in range(60)]
        immediate = 0
        for i, frame in enumerate(frames):
            if i % 10 == 9:
                await session.send_audio(frame)  # the waiting path, between immediate ones
            else:
                immediate += session.send_audio_now(frame)
        assert immediate == 54  # an idle, open connection takes every frame at once
        record = simulator.sessions[-1]
        sent = b"".join(frames)
        async with asyncio.timeout(5):
            while record.input_audio_ms < len(sent) / 48:
                await asyncio.sleep(0.01)
        assert record.input_audio_ms == pytest.approx(len(sent) / 48)
        assert record.events_in.count("input_audio_buffer.append") == 60
        assert record.input_sha256.digest() == hashlib.sha256(sent).digest()  # every byte, in order
        assert not record.errors_sent
    finally:
        await session.close()
    assert session.send_audio_now(bytes(960)) is False  # closed: the caller queues, and learns


@pytest.mark.parametrize("audio_bytes", [0, 1, 2, 3, 60, 61, 90, 960, 48_000, 60_000])
def test_masked_append_frame_reads_back_as_the_append_event(audio_bytes: int) -> None:
    # Sizes cover the three length encodings (7-bit, 16-bit, 64-bit) and base64's padding cases.
    audio = os.urandom(audio_bytes)
    key = os.urandom(4)
    frame = read_frame(masked_text_frame(rt.APPEND_HEAD, audio, rt.APPEND_TAIL, key), mask=True)
    assert frame.opcode == OP_TEXT and frame.fin
    assert frame.data == rt.append_audio_message(audio)


def test_masked_append_frame_uses_the_given_key() -> None:
    data = masked_text_frame(b"", b"", b"abcd", b"\x01\x02\x03\x04")
    assert data == b"\x81\x84\x01\x02\x03\x04" + bytes(c ^ k for c, k in zip(b"abcd", b"\x01\x02\x03\x04", strict=True))


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((b"", b"", b"", b"abc"), ValueError),
        ((b"\xc3\xa9", b"", b"", b"abcd"), ValueError),
        ((b"", b"", "text", b"abcd"), TypeError),
    ],
)
def test_masked_append_frame_refuses_bad_arguments(args: tuple, error: type[Exception]) -> None:
    with pytest.raises(error):
        masked_text_frame(*args)


_FIRST_SESSION_SCRIPT = """
import asyncio, json, sys
from bridge.core.realtime import RealtimeSession, endpoint_from_settings
from bridge.settings import load_settings
from bridge.simulator import SimulatorServer
from sip import realtime as rt
from tenants.config import TenantConfig

async def main():
    server = SimulatorServer(pace=20.0)
    await server.start()
    settings = load_settings(env_file=None, environ={
        "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"http://127.0.0.1:{server.port}/v1"})
    endpoint = endpoint_from_settings(settings)
    await endpoint.warm_up()
    before = set(sys.modules)
    session = await RealtimeSession.connect(endpoint)
    tenant = TenantConfig(tenant_id="t", slug="t", voice="cedar", instructions="hi")
    await session.send(rt.session_update(tenant, model="gpt-realtime"))
    async for event in session.events():
        if event["type"] == "session.updated":
            break
    session.send_audio_now(bytes(960))
    await session.send_audio(bytes(960))
    await session.close()
    await server.close()
    print(json.dumps(sorted(set(sys.modules) - before)))

asyncio.run(main())
"""


def test_first_session_after_warm_up_imports_nothing() -> None:
    # Modules imported after start-up are not in the frozen heap: every full collection walks
    # them, and the first call pays for the import itself. A fresh interpreter, as in the daemon.
    done = subprocess.run([sys.executable, "-c", _FIRST_SESSION_SCRIPT], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert imported == []
