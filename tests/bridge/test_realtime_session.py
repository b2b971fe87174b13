"""The model leg reaches any server of the Realtime protocol the way an operator configures it:
OpenAI's base URL (as the SDK honours OPENAI_BASE_URL), a WebSocket base URL, or Azure's v1
surface with an api-key header. The server is the project's own simulator."""

from __future__ import annotations

import asyncio

import pytest

from bridge.realtime import ModelError, RealtimeSession, endpoint_from_settings
from bridge.settings import ModelProvider, load_settings
from bridge.simulator import SimulatorServer
from sip import realtime as rt
from tenants.config import TenantConfig


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


def test_voice_live_endpoint_shape() -> None:
    settings = load_settings(env_file=None, environ={
        "AZURE_VOICELIVE_ENDPOINT": "https://res.services.ai.azure.com",
        "AZURE_VOICELIVE_API_KEY": "vl-key", "AZURE_VOICELIVE_MODEL": "gpt-realtime"})
    endpoint = endpoint_from_settings(settings)
    assert endpoint.provider is ModelProvider.AZURE_VOICELIVE
    assert endpoint.websocket_base_url == "wss://res.services.ai.azure.com/voice-live"
    assert endpoint.query == {"api-version": "2025-10-01"}
    assert endpoint.dialect is rt.Dialect.BETA


async def test_audio_appended_at_once_arrives_whole_and_in_order_with_queued_sends(simulator) -> None:
    settings = load_settings(env_file=None, environ={
        "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"http://127.0.0.1:{simulator.port}/v1"})
    session = await RealtimeSession.connect(endpoint_from_settings(settings))
    try:
        await _round_trip(session)
        frame = bytes(960)  # 20 ms of PCM16 at 24 kHz
        immediate = 0
        for i in range(60):
            if i % 10 == 9:
                await session.send_audio(frame)  # the waiting path, between immediate ones
            else:
                immediate += session.send_audio_now(frame)
        assert immediate == 54  # an idle, open connection takes every frame at once
        record = simulator.sessions[-1]
        async with asyncio.timeout(5):
            while record.input_audio_ms < 60 * 20:
                await asyncio.sleep(0.01)
        assert record.input_audio_ms == pytest.approx(1200)
        assert record.events_in.count("input_audio_buffer.append") == 60
        assert not record.errors_sent
    finally:
        await session.close()
    assert session.send_audio_now(bytes(960)) is False  # closed: the caller queues, and learns
