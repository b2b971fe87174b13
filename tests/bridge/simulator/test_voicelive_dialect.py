"""The simulator's Voice Live endpoint, driven by Microsoft's SDK (azure-ai-voicelive): the
service's path, query and header, its session and event shapes (each received event parsed by
the SDK's own typed models), voice validation and what it refuses. Also voice validation on the
OpenAI dialect, through the openai SDK."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from azure.ai.voicelive import models as vlm
from azure.ai.voicelive.aio import VoiceLiveConnection, connect
from azure.core.credentials import AzureKeyCredential
from openai import AsyncOpenAI

from bridge.simulator import GREETINGS, SimulatorServer

pytestmark = pytest.mark.timeout(60)

KEY = "vl-key"


@pytest.fixture
async def simulator() -> AsyncIterator[SimulatorServer]:
    async with SimulatorServer(api_key=KEY, pace=8.0) as sim:
        yield sim


def _connect(sim: SimulatorServer, **kwargs: Any) -> Any:
    return connect(endpoint=sim.http_url, credential=AzureKeyCredential(KEY), model="gpt-realtime",
                   api_version="2025-10-01", **kwargs)


async def _until(conn: VoiceLiveConnection, *types: str) -> list[vlm.ServerEvent]:
    seen = []
    async with asyncio.timeout(20):
        while True:
            event = await conn.recv()
            seen.append(event)
            if event.type in types:
                return seen


VOICE_LIVE_SESSION = {
    "modalities": ["text", "audio"],
    "instructions": "Fale português.",
    "voice": {"type": "azure-standard", "name": "pt-BR-FranciscaNeural", "rate": "1.1", "temperature": 0.7},
    "input_audio_format": "pcm16",
    "output_audio_format": "pcm16",
    "input_audio_sampling_rate": 24000,
    "turn_detection": {"type": "azure_semantic_vad", "threshold": 0.4, "silence_duration_ms": 450,
                       "remove_filler_words": True, "interrupt_response": False,
                       "end_of_utterance_detection": {"model": "semantic_detection_v1", "threshold_level": "low"}},
    "input_audio_noise_reduction": {"type": "azure_deep_noise_suppression"},
    "input_audio_echo_cancellation": {"type": "server_echo_cancellation"},
    "input_audio_transcription": {"model": "azure-speech", "language": "pt-BR"},
    "temperature": 0.7,
    "max_response_output_tokens": 800,
}


async def test_a_response_in_the_services_event_shapes(simulator: SimulatorServer) -> None:
    async with _connect(simulator) as conn:
        created = await conn.recv()
        assert isinstance(created, vlm.ServerEventSessionCreated)
        assert created.session.voice is not None and created.session.input_audio_format == "pcm16"
        await conn.session.update(session=VOICE_LIVE_SESSION)
        updated = (await _until(conn, "session.updated", "error"))[-1]
        assert isinstance(updated, vlm.ServerEventSessionUpdated), updated
        session = updated.as_dict()["session"]
        for key, value in VOICE_LIVE_SESSION.items():
            if key == "turn_detection":
                value = {**value, "create_response": True}  # the service fills in its defaults
            assert session[key] == value, key
        await conn.response.create()
        events = await _until(conn, "response.done")
    types = [e.type for e in events]
    # Voice Live's beta-era names, each parsed by the SDK into its own typed model.
    assert "response.audio.delta" in types and "response.audio_transcript.done" in types
    assert "conversation.item.created" in types and "response.output_audio.delta" not in types
    for event in events:
        if event.type in ("response.audio.delta", "response.audio.done", "response.audio_transcript.delta",
                          "response.audio_transcript.done", "response.created", "response.done",
                          "conversation.item.created", "response.output_item.added"):
            assert type(event) is not vlm.ServerEvent, event.type
    # The SDK decodes the base64 itself.
    audio = b"".join(e.delta for e in events if isinstance(e, vlm.ServerEventResponseAudioDelta))
    assert len(audio) > 24000 * 2 * 3  # the greeting, seconds of 24 kHz PCM16
    done = next(e for e in events if isinstance(e, vlm.ServerEventResponseAudioTranscriptDone))
    assert done.transcript == GREETINGS["pt"].transcript  # the session speaks pt-BR
    record = simulator.sessions[-1]
    assert record.service_config["turn_detection"]["type"] == "azure_semantic_vad"


@pytest.mark.parametrize(("patch", "param"), [
    ({"voice": {"type": "azure-standard", "name": "Francisca"}}, "session.voice.name"),
    ({"voice": "pt-BR-FranciscaNeural"}, "session.voice"),  # Azure voices come as objects
    ({"voice": {"type": "openai", "name": "francisca"}}, "session.voice.name"),
    ({"voice": {"type": "azure-custom", "name": "MyVoice"}}, "session.voice.endpoint_id"),
    ({"turn_detection": {"type": "semantic_vad"}}, "session.turn_detection.type"),
    ({"turn_detection": {"type": "server_vad", "idle_timeout_ms": 6000}}, "session.turn_detection.idle_timeout_ms"),
    ({"input_audio_noise_reduction": {"type": "deep"}}, "session.input_audio_noise_reduction.type"),
    ({"input_audio_echo_cancellation": {"type": "client"}}, "session.input_audio_echo_cancellation.type"),
    ({"input_audio_transcription": {"model": "gpt-4o-mini-transcribe-x"}}, "session.input_audio_transcription.model"),
    # The OpenAI GA shape is not Voice Live's.
    ({"type": "realtime"}, "session.type"),
    ({"audio": {"output": {"voice": "marin"}}}, "session.audio"),
])
async def test_what_session_update_refuses(simulator: SimulatorServer, patch, param) -> None:
    async with _connect(simulator) as conn:
        await conn.recv()
        await conn.send({"type": "session.update", "event_id": "evt_cfg", "session": patch})
        error = (await _until(conn, "session.updated", "error"))[-1]
    assert isinstance(error, vlm.ServerEventError), error
    assert error.error.param == param and error.error.event_id == "evt_cfg"
    assert simulator.sessions[-1].service_config["voice"] == {"type": "openai", "name": "alloy"}  # unchanged


@pytest.mark.parametrize(("query", "status", "code"), [
    ({"model": "gpt-realtime"}, 400, "MissingApiVersion"),
    ({"api-version": "2024-01-01", "model": "gpt-realtime"}, 400, "UnsupportedApiVersion"),
    ({"api-version": "2025-10-01"}, 400, "MissingModel"),
])
async def test_handshakes_the_service_refuses(simulator: SimulatorServer, query, status, code) -> None:
    async with aiohttp.ClientSession() as http, \
            http.get(f"{simulator.http_url}/voice-live/realtime", params=query,
                     headers={"api-key": KEY}) as response:
        body = await response.json()
    assert response.status == status and body["error"]["code"] == code


async def test_no_credential_is_refused_before_the_upgrade(simulator: SimulatorServer) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(f"{simulator.http_url}/voice-live/realtime?api-version=2025-10-01&model=m")
    assert info.value.status == 401


async def test_openai_dialect_refuses_an_unknown_voice(simulator: SimulatorServer) -> None:
    client = AsyncOpenAI(api_key=KEY, websocket_base_url=simulator.url)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={"type": "realtime", "audio": {"output": {"voice": "pt-BR-FranciscaNeural"}}})
        await conn.session.update(session={"type": "realtime", "audio": {"output": {"voice": "cedar"}}})
        kinds = []
        async with asyncio.timeout(10):
            async for event in conn:
                kinds.append(event.type)
                if event.type == "error":
                    assert event.error.param == "session.audio.output.voice"
                if event.type == "session.updated":
                    assert event.session.audio.output.voice == "cedar"
                    break
    await client.close()
    assert kinds == ["session.created", "error", "session.updated"]
