"""The realtime simulator, driven by the real ``openai`` SDK over loopback WebSockets.

Every server event received is validated against the SDK's own pydantic model for its type, so the
simulator cannot drift from the GA shapes the bridge is written against.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
import time
import typing
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr
import websockets
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

from bridge import simulator
from bridge.cli import simulator as simulator_command
from bridge.simulator import GREETING_TRANSCRIPT, SimulatorServer
from media import g711
from tests.conftest import load_wav

REPO_ROOT = Path(__file__).resolve().parents[3]


def _event_models() -> dict[str, TypeAdapter[Any]]:
    union = typing.get_args(RealtimeServerEvent)[0]
    models: dict[str, TypeAdapter[Any]] = {}
    for model in typing.get_args(union):
        literal = model.model_fields["type"].annotation
        models[typing.get_args(literal)[0]] = TypeAdapter(model)
    return models


EVENT_MODELS = _event_models()


class Peer:
    """One SDK connection plus the events it has received (each checked against the SDK model)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.events: list[dict[str, Any]] = []

    async def next(self, within: float = 10.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.recv_bytes(), within)
        event = json.loads(raw)
        assert event["type"] in EVENT_MODELS, f"not a GA server event type: {event['type']}"
        EVENT_MODELS[event["type"]].validate_python(event)
        assert event["event_id"].startswith("event_")
        self.events.append(event)
        return event

    async def until(self, event_type: str, within: float = 15.0) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        async with asyncio.timeout(within):
            while True:
                event = await self.next(within)
                got.append(event)
                if event["type"] == event_type:
                    return got

    async def send(self, event: dict[str, Any]) -> None:
        await self.conn.send(event)

    async def append(self, pcm: bytes, chunk_bytes: int = 9600, *, compact: bool = False) -> None:
        for i in range(0, len(pcm), chunk_bytes):
            b64 = base64.b64encode(pcm[i:i + chunk_bytes]).decode()
            if compact:
                # The byte-exact form a bridge serialises by hand for its 50-per-second audio events.
                await self.conn.send_raw('{"type":"input_audio_buffer.append","audio":"' + b64 + '"}')
            else:
                await self.conn.input_audio_buffer.append(audio=b64)


@contextlib.asynccontextmanager
async def connect(server: SimulatorServer, *, model: str = "gpt-realtime", base_url: str | None = None,
                  api_key: str = "test", headers: dict[str, str] | None = None) -> AsyncIterator[Peer]:
    client = AsyncOpenAI(api_key=api_key, websocket_base_url=base_url or server.url, max_retries=0)
    try:
        async with client.realtime.connect(model=model, extra_headers=headers or {}) as conn:
            peer = Peer(conn)
            created = await peer.next()
            assert created["type"] == "session.created"
            yield peer
    finally:
        await client.close()


@pytest.fixture
async def server() -> AsyncIterator[SimulatorServer]:
    async with SimulatorServer(pace=20.0) as srv:
        yield srv


def _types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def _is_subsequence(expected: list[str], types: list[str]) -> bool:
    remaining = iter(types)
    return all(t in remaining for t in expected)


def _audio_of(events: list[dict[str, Any]], response_id: str | None = None) -> bytes:
    return b"".join(base64.b64decode(e["delta"]) for e in events
                    if e["type"] == "response.output_audio.delta"
                    and (response_id is None or e["response_id"] == response_id))


def _speech_8k(fixtures_dir: Path) -> np.ndarray:
    """The first sentence of the recorded CMU clip (phone band, 8 kHz) and one second of silence."""
    samples, rate = load_wav(fixtures_dir / "speech" / "real_cmu_8k.wav")
    assert rate == 8000
    return np.concatenate([samples[: int(3.6 * rate)], np.zeros(rate, dtype=np.int16)])


def _speech_24k(fixtures_dir: Path) -> np.ndarray:
    return np.asarray(soxr.resample(_speech_8k(fixtures_dir), 8000, 24000), dtype=np.int16)


NO_TURN_DETECTION = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
SESSION_PCM = {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}},
                                             "output": {"format": {"type": "audio/pcm", "rate": 24000}}}}


# --------------------------------------------------------------------------- session


async def test_session_created_and_update_round_trip(server: SimulatorServer) -> None:
    async with connect(server, model="gpt-realtime-mini") as peer:
        created = peer.events[0]["session"]
        assert created["type"] == "realtime" and created["model"] == "gpt-realtime-mini"
        assert created["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert created["audio"]["input"]["turn_detection"]["type"] == "server_vad"

        update = {
            "type": "realtime",
            "instructions": "Be brief.",
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "noise_reduction": {"type": "near_field"},
                    "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
                    "turn_detection": {"type": "server_vad", "threshold": 0.6, "silence_duration_ms": 400},
                },
                "output": {"format": {"type": "audio/pcmu"}, "voice": "cedar", "speed": 1.1},
            },
            "tools": [{"type": "function", "name": "lookup", "description": "d",
                       "parameters": {"type": "object", "properties": {}}}],
            "tool_choice": "auto",
        }
        await peer.conn.session.update(session=update)
        updated = (await peer.until("session.updated"))[-1]["session"]
        assert updated["instructions"] == "Be brief."
        assert updated["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert updated["audio"]["output"]["voice"] == "cedar"
        td = updated["audio"]["input"]["turn_detection"]
        # Fields left out take the documented defaults.
        assert td == {"type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 300,
                      "silence_duration_ms": 400, "idle_timeout_ms": None, "create_response": True,
                      "interrupt_response": True}
        assert updated["tools"][0]["name"] == "lookup"

        # A partial update keeps everything else.
        await peer.conn.session.update(session=NO_TURN_DETECTION)
        again = (await peer.until("session.updated"))[-1]["session"]
        assert again["audio"]["input"]["turn_detection"] is None
        assert again["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert again["instructions"] == "Be brief."

    record = server.sessions[-1]
    assert record.model == "gpt-realtime-mini"
    assert record.session_updates[0]["instructions"] == "Be brief."
    assert record.session_config["audio"]["input"]["turn_detection"] is None
    assert record.events_in == ["session.update", "session.update"]


@pytest.mark.parametrize(
    ("session", "code", "param"),
    [
        ({"instructions": "no type"}, "missing_required_parameter", "session.type"),
        ({"type": "realtime", "input_audio_format": "pcm16"},
         "unknown_parameter", "session.input_audio_format"),
        ({"type": "realtime", "modalities": ["audio", "text"]}, "unknown_parameter", "session.modalities"),
        ({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
         "invalid_value", "session.audio.input.format.rate"),
        ({"type": "realtime", "audio": {"output": {"format": {"type": "g711_ulaw"}}}},
         "invalid_value", "session.audio.output.format.type"),
        ({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 2}}}},
         "invalid_value", "session.audio.input.turn_detection.threshold"),
        ({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "semantic_vad",
                                                                      "silence_duration_ms": 300}}}},
         "unknown_parameter", "session.audio.input.turn_detection.silence_duration_ms"),
        ({"type": "transcription"}, "invalid_value", "session.type"),
        ({"type": "realtime", "output_modalities": ["audio", "text"]},
         "invalid_value", "session.output_modalities"),
    ],
)
async def test_invalid_session_update_is_refused_whole(server: SimulatorServer, session: dict[str, Any],
                                                       code: str, param: str) -> None:
    async with connect(server) as peer:
        before = server.sessions[-1].session_config
        await peer.send({"type": "session.update", "event_id": "evt_client_1", "session": session})
        error = (await peer.until("error"))[-1]["error"]
        assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
        assert error["event_id"] == "evt_client_1"
        assert error["message"]
        assert server.sessions[-1].session_config == before
        # The connection stays usable.
        await peer.conn.session.update(session={"type": "realtime", "instructions": "ok"})
        assert (await peer.until("session.updated"))[-1]["session"]["instructions"] == "ok"


async def test_bad_client_events_get_errors_and_the_session_survives(server: SimulatorServer) -> None:
    async with connect(server) as peer:
        await peer.conn.send_raw('{"type": "response.dance", "event_id": "evt_7"}')
        error = (await peer.until("error"))[-1]["error"]
        assert error["code"] == "invalid_value" and error["param"] == "type" and error["event_id"] == "evt_7"
        assert "'response.dance'" in error["message"]

        await peer.conn.send_raw("this is not json")
        assert (await peer.until("error"))[-1]["error"]["code"] == "invalid_json"

        await peer.send({"type": "input_audio_buffer.append", "audio": "***not base64***"})
        assert (await peer.until("error"))[-1]["error"]["param"] == "audio"

        await peer.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user"}})
        assert (await peer.until("error"))[-1]["error"]["param"] == "item.content"

        await peer.send({"type": "conversation.item.truncate", "item_id": "item_nope", "content_index": 0,
                         "audio_end_ms": 10})
        assert (await peer.until("error"))[-1]["error"]["code"] == "item_not_found"

        await peer.send({"type": "input_audio_buffer.commit"})
        error = (await peer.until("error"))[-1]["error"]
        assert error["code"] == "input_audio_buffer_commit_empty"
        assert "Expected at least 100ms of audio, but buffer only has 0.00ms" in error["message"]

        await peer.conn.session.update(session={"type": "realtime"})
        await peer.until("session.updated")
    assert server.sessions[-1].events_in[:2] == ["response.dance", "<invalid json>"]
    assert len(server.sessions[-1].errors_sent) == 6


# --------------------------------------------------------------------------- responses


GREETING_ORDER = [
    "response.created",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
    "response.output_audio.delta",
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
]


def _collapsed(events: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for t in _types(events):
        if t in ("rate_limits.updated", "response.output_audio_transcript.delta"):
            continue
        if not out or out[-1] != t:
            out.append(t)
    return out


async def test_greeting_response_events_and_audio(server: SimulatorServer) -> None:
    greeting = simulator.greeting_samples()
    async with connect(server) as peer:
        await peer.send({"type": "response.create",
                         "response": {"instructions": "Greet the caller with: Welcome to Acme."}})
        events = await peer.until("response.done")
    assert _collapsed(events) == GREETING_ORDER
    done = events[-1]["response"]
    assert done["status"] == "completed"
    item = done["output"][0]
    assert item["type"] == "message" and item["role"] == "assistant" and item["status"] == "completed"
    assert item["content"][0] == {"type": "output_audio", "transcript": GREETING_TRANSCRIPT}
    assert done["usage"]["output_token_details"]["audio_tokens"] > 0
    transcript = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
    assert transcript == GREETING_TRANSCRIPT
    deltas = [e for e in events if e["type"] == "response.output_audio.delta"]
    assert {e["item_id"] for e in deltas} == {item["id"]}
    assert all(len(base64.b64decode(e["delta"])) <= 2400 for e in deltas)  # 50 ms of 24 kHz PCM16
    audio = np.frombuffer(_audio_of(events), dtype="<i2")
    np.testing.assert_array_equal(audio, greeting)
    assert server.sessions[-1].response_requests == [
        {"instructions": "Greet the caller with: Welcome to Acme."}]
    assert server.sessions[-1].responses[0]["kind"] == "greeting"


@pytest.mark.parametrize(("session", "response", "language"), [
    ({"audio": {"input": {"transcription": {"model": "whisper-1", "language": "pt"}}}}, {}, "pt"),
    ({"audio": {"input": {"transcription": {"model": "whisper-1", "language": "pt-BR"}}}}, {}, "pt"),
    ({"instructions": "Você é a assistente da pizzaria. Fale com calma e não invente preços."}, {}, "pt"),
    ({"instructions": "Answer in Brazilian Portuguese."}, {}, "pt"),
    ({}, {"instructions": "Say exactly these words to the caller, then stop: Olá! Você ligou para uma "
                          "pizzaria."}, "pt"),
    # No recording in Spanish: English, whatever the instructions say.
    ({"audio": {"input": {"transcription": {"model": "whisper-1", "language": "es"}}},
      "instructions": "Eres la asistente."}, {}, "en"),
    ({"instructions": "You are a helpful phone assistant."}, {}, "en"),
])
async def test_greeting_follows_the_session_language(server: SimulatorServer, session: dict[str, Any],
                                                     response: dict[str, Any], language: str) -> None:
    async with connect(server) as peer:
        if session:
            await peer.conn.session.update(session={"type": "realtime", **session})
            await peer.until("session.updated")
        await peer.send({"type": "response.create", **({"response": response} if response else {})})
        events = await peer.until("response.done")
    audio = np.frombuffer(_audio_of(events), dtype="<i2")
    np.testing.assert_array_equal(audio, simulator.greeting_samples(language))
    transcript = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
    assert transcript == simulator.GREETINGS[language].transcript
    assert transcript.startswith("Olá" if language == "pt" else "Hello")


def test_the_greeting_recordings() -> None:
    # Both recordings are 24 kHz speech of a few seconds, with a pause where the short clip ends.
    for greeting in simulator.GREETINGS.values():
        samples = simulator.greeting_samples(greeting.language).astype(np.float64)
        assert 3.0 < len(samples) / 24000 < 6.0
        cut = greeting.short_clip_ms * 24
        assert np.sqrt(np.mean(samples[cut - 1200:cut + 1200] ** 2)) < 100  # quiet around the cut
        assert np.sqrt(np.mean(samples[:cut] ** 2)) > 1000  # speech before it


async def test_audio_is_paced_close_to_the_configured_speed() -> None:
    duration = len(simulator.greeting_samples()) / 24000
    pace = 4.0
    async with SimulatorServer(pace=pace) as srv, connect(srv) as peer:
        await peer.send({"type": "response.create"})
        created = await peer.next()
        t0 = time.monotonic()
        arrivals: list[float] = []
        while True:
            event = await peer.next()
            if event["type"] == "response.output_audio.delta":
                arrivals.append(time.monotonic() - t0)
            if event["type"] == "response.done":
                break
    assert created["type"] == "response.created"
    assert arrivals[0] < 0.5, "the first audio must come quickly"
    # The first 200 ms go out at once; the rest follow one delta per 50 ms / pace, never faster.
    lead = simulator.LEAD_MS // 50
    assert arrivals[lead - 1] < 0.5
    expected = (len(arrivals) - lead) * 0.050 / pace
    assert arrivals[-1] >= expected * 0.95
    assert arrivals[-1] <= duration / pace + 3.0


async def test_g711_output_format(server: SimulatorServer) -> None:
    async with connect(server) as peer:
        await peer.conn.session.update(session={"type": "realtime", "audio": {
            "input": {"format": {"type": "audio/pcma"}}, "output": {"format": {"type": "audio/pcmu"}}}})
        await peer.until("session.updated")
        await peer.send({"type": "response.create"})
        events = await peer.until("response.done")
    ulaw = _audio_of(events)
    assert events[0]["response"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    seconds = len(ulaw) / 8000
    assert abs(seconds - len(simulator.greeting_samples()) / 24000) < 0.01
    decoded = g711.ulaw_decode(ulaw).astype(np.float64)
    assert np.sqrt(np.mean(decoded**2)) > 1000, "the greeting must be audible after G.711 encoding"
    assert all(len(base64.b64decode(e["delta"])) <= 400 for e in events
               if e["type"] == "response.output_audio.delta")  # 50 ms at 8 kHz


async def test_text_only_response(server: SimulatorServer) -> None:
    async with connect(server) as peer:
        await peer.conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        await peer.until("session.updated")
        await peer.send({"type": "response.create"})
        events = await peer.until("response.done")
    assert "response.output_audio.delta" not in _types(events)
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == GREETING_TRANSCRIPT
    assert events[-1]["response"]["output"][0]["content"][0] == {"type": "output_text", "text": text}


async def test_second_response_while_one_is_active_is_refused() -> None:
    async with SimulatorServer(pace=1.0) as srv, connect(srv) as peer:
        await peer.send({"type": "response.create"})
        created = (await peer.until("response.created"))[-1]["response"]
        await peer.send({"type": "response.create", "event_id": "evt_2"})
        error = (await peer.until("error"))[-1]["error"]
        assert error["code"] == "conversation_already_has_active_response"
        assert created["id"] in error["message"] and error["event_id"] == "evt_2"
        await peer.conn.response.cancel()
        await peer.until("response.done")


# --------------------------------------------------------------------------- caller audio


async def test_caller_speech_is_detected_committed_and_echoed(server: SimulatorServer,
                                                              fixtures_dir: Path) -> None:
    speech = _speech_24k(fixtures_dir)
    async with connect(server) as peer:
        session = dict(SESSION_PCM)
        session["audio"] = {**SESSION_PCM["audio"],
                            "input": {**SESSION_PCM["audio"]["input"],
                                      "transcription": {"model": "gpt-4o-mini-transcribe"}}}
        await peer.conn.session.update(session=session)
        await peer.until("session.updated")
        # Six times faster than real time: detection runs on audio time, not arrival time.
        await peer.append(speech.tobytes())
        events = await peer.until("response.done")

    types = _types(events)
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
             "input_audio_buffer.committed", "conversation.item.added", "conversation.item.done",
             "conversation.item.input_audio_transcription.completed", "response.created", "response.done"]
    assert _is_subsequence(order, types), types
    started = next(e for e in events if e["type"] == "input_audio_buffer.speech_started")
    stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
    committed = next(e for e in events if e["type"] == "input_audio_buffer.committed")
    assert started["item_id"] == stopped["item_id"] == committed["item_id"]
    # The clip's first word starts about 1.1 s in; the start includes 300 ms of prefix padding.
    assert 500 <= started["audio_start_ms"] <= 1100
    assert 2800 <= stopped["audio_end_ms"] <= 3600  # the sentence ends before 3.1 s; +500 ms silence
    transcript = next(e for e in events
                      if e["type"] == "conversation.item.input_audio_transcription.completed")["transcript"]
    span_ms = stopped["audio_end_ms"] - started["audio_start_ms"] - 500
    assert transcript == f"[caller speech {span_ms / 1000:.1f} s]"

    echo = np.frombuffer(_audio_of(events), dtype="<i2")
    assert abs(len(echo) / 24 - span_ms) <= 20
    start = started["audio_start_ms"] * 24
    # Same format in and out: the echo is the caller's audio, sample for sample.
    np.testing.assert_array_equal(echo, speech[start:start + len(echo)])
    done = events[-1]["response"]
    echoed = f"[echo of caller speech {len(echo) / 24000:.1f} s]"
    assert done["output"][0]["content"][0]["transcript"] == echoed

    record = server.sessions[-1]
    assert len(record.speech_started_at) == 1 and len(record.speech_stopped_at) == 1
    assert record.speech_started_at[0] <= record.speech_stopped_at[0]
    assert abs(record.input_audio_ms - len(speech) / 24) < 1
    assert record.responses[-1]["kind"] == "echo"


@pytest.mark.parametrize(
    ("fmt", "encode", "decode", "turn_detection", "silence_ms"),
    [
        ("audio/pcmu", g711.ulaw_encode, g711.ulaw_decode, {"type": "server_vad"}, 500),
        ("audio/pcma", g711.alaw_encode, g711.alaw_decode, {"type": "server_vad", "silence_duration_ms": 300,
                                                            "prefix_padding_ms": 100}, 300),
        ("audio/pcmu", g711.ulaw_encode, g711.ulaw_decode,
         {"type": "semantic_vad", "eagerness": "high"}, 400),
    ],
)
async def test_g711_input_and_output(server: SimulatorServer, fixtures_dir: Path, fmt: str,
                                     encode: Any, decode: Any, turn_detection: dict[str, Any],
                                     silence_ms: int) -> None:
    coded = encode(_speech_8k(fixtures_dir))
    async with connect(server) as peer:
        await peer.conn.session.update(session={"type": "realtime", "audio": {
            "input": {"format": {"type": fmt}, "turn_detection": turn_detection},
            "output": {"format": {"type": fmt}}}})
        await peer.until("session.updated")
        await peer.append(coded, chunk_bytes=160, compact=True)
        events = await peer.until("response.done")
    started = next(e for e in events if e["type"] == "input_audio_buffer.speech_started")
    stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
    assert 500 <= started["audio_start_ms"] <= 1100
    assert 2700 <= stopped["audio_end_ms"] <= 3600
    echo = _audio_of(events)
    start = started["audio_start_ms"] * 8
    np.testing.assert_array_equal(decode(echo), decode(coded[start:start + len(echo)]))
    assert abs(len(echo) / 8 - (stopped["audio_end_ms"] - started["audio_start_ms"] - silence_ms)) <= 20


async def test_bridge_session_updates_are_accepted(server: SimulatorServer) -> None:
    """What callbridge's own event builders send is valid GA input."""
    from sip import realtime as rt
    from tenants.config import AudioMode, NoiseSuppression, SemanticVad, ServerVad, TenantConfig

    tenants = [
        TenantConfig(tenant_id="1", slug="pcm"),
        TenantConfig(tenant_id="2", slug="passthrough", audio_mode=AudioMode.PASSTHROUGH,
                     turn_detection=SemanticVad(eagerness="low"), noise_suppression=NoiseSuppression.MODEL,
                     transcription=False, max_output_tokens=800, language="pt"),
        TenantConfig(tenant_id="3", slug="idle",
                     turn_detection=ServerVad(idle_timeout_ms=8000, threshold=0.7),
                     model_noise_reduction="far_field", noise_suppression=NoiseSuppression.MODEL),
    ]
    tools = (rt.ToolSpec("transfer_call", "Transfer the caller"),)
    async with connect(server) as peer:
        for tenant in tenants:
            await peer.send(rt.session_update(tenant, model="gpt-realtime", tools=tools))
            event = (await peer.until("session.updated"))[-1]
            assert event["session"]["audio"]["output"]["voice"] == tenant.voice
        await peer.send(rt.greeting_response("Welcome to Acme."))
        events = await peer.until("response.done")
        assert events[-1]["response"]["status"] == "completed"
    assert not server.sessions[-1].errors_sent


async def test_pcmu_input_echoed_as_24k_pcm(server: SimulatorServer, fixtures_dir: Path) -> None:
    ulaw = g711.ulaw_encode(_speech_8k(fixtures_dir))
    async with connect(server) as peer:
        await peer.conn.session.update(session={"type": "realtime", "audio": {
            "input": {"format": {"type": "audio/pcmu"}}}})
        await peer.until("session.updated")
        await peer.append(ulaw, chunk_bytes=800)
        events = await peer.until("response.done")
    started = next(e for e in events if e["type"] == "input_audio_buffer.speech_started")
    stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
    echo = np.frombuffer(_audio_of(events), dtype="<i2")
    span_ms = stopped["audio_end_ms"] - started["audio_start_ms"] - 500
    assert abs(len(echo) / 24 - span_ms) <= 20
    # Resampled, not garbled: the echo's level follows the caller's.
    source = g711.ulaw_decode(ulaw[started["audio_start_ms"] * 8:][: span_ms * 8]).astype(np.float64)
    ratio = np.sqrt(np.mean(echo.astype(np.float64) ** 2)) / np.sqrt(np.mean(source**2))
    assert 0.8 < ratio < 1.2


async def test_manual_commit_without_turn_detection(server: SimulatorServer, fixtures_dir: Path) -> None:
    speech = _speech_24k(fixtures_dir)[24000:48000]  # one second of speech
    async with connect(server) as peer:
        await peer.conn.session.update(session=NO_TURN_DETECTION)
        await peer.until("session.updated")
        await peer.append(speech.tobytes())
        await peer.conn.input_audio_buffer.clear()
        assert (await peer.until("input_audio_buffer.cleared"))[-1]["type"] == "input_audio_buffer.cleared"
        await peer.append(speech.tobytes())
        await peer.conn.input_audio_buffer.commit()
        events = await peer.until("conversation.item.done")
        assert _types(events) == ["input_audio_buffer.committed", "conversation.item.added",
                                  "conversation.item.done"]
        item = events[-1]["item"]
        assert item["role"] == "user" and item["content"][0]["type"] == "input_audio"
        # No turn detection: nothing happens until the client asks for a response.
        with pytest.raises(TimeoutError):
            await peer.next(within=0.3)
        await peer.conn.response.create()
        events = await peer.until("response.done")
    echo = np.frombuffer(_audio_of(events), dtype="<i2")
    np.testing.assert_array_equal(echo, speech)


async def test_idle_timeout_prompts_the_caller(server: SimulatorServer) -> None:
    async with connect(server) as peer:
        await peer.conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": {
            "type": "server_vad", "idle_timeout_ms": 200}}}})
        await peer.until("session.updated")
        await peer.append(bytes(24000 * 2 // 10))  # 100 ms of silence
        events = await peer.until("response.done")
    types = _types(events)
    assert types.index("input_audio_buffer.timeout_triggered") < types.index("response.created")
    triggered = next(e for e in events if e["type"] == "input_audio_buffer.timeout_triggered")
    assert triggered["audio_end_ms"] == 100
    assert events[-1]["response"]["output"][0]["content"][0]["transcript"] == "[are you still there?]"


# --------------------------------------------------------------------------- interruption


async def test_response_cancel(fixtures_dir: Path) -> None:
    async with SimulatorServer(pace=2.0) as srv, connect(srv) as peer:
        await peer.send({"type": "response.create"})
        await peer.until("response.output_audio.delta")
        await peer.conn.response.cancel()
        events = await peer.until("response.done")
        done = events[-1]["response"]
        assert done["status"] == "cancelled"
        assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        assert done["output"][0]["status"] == "incomplete"
        assert "response.output_item.done" in _types(events)
        produced = len(_audio_of(peer.events)) // 48
        assert 0 < produced < 2000
        # Nothing streams after response.done.
        with pytest.raises(TimeoutError):
            await peer.next(within=0.3)

        await peer.send({"type": "response.cancel", "event_id": "evt_c"})
        error = (await peer.until("error"))[-1]["error"]
        assert error["code"] == "response_cancel_not_active" and error["event_id"] == "evt_c"
    record = srv.sessions[-1]
    assert [c["active"] for c in record.cancels] == [True, False]
    assert record.responses[0]["status"] == "cancelled"


async def test_truncate_valid_and_beyond_the_produced_audio(server: SimulatorServer) -> None:
    async with connect(server) as peer:
        await peer.send({"type": "response.create"})
        events = await peer.until("response.done")
        item_id = events[-1]["response"]["output"][0]["id"]
        produced_ms = len(_audio_of(events)) // 48

        too_long = produced_ms + 60
        await peer.conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=too_long)
        error = (await peer.until("error"))[-1]["error"]
        assert error["message"] == f"Audio content of {produced_ms}ms is already shorter than {too_long}ms"
        assert error["type"] == "invalid_request_error" and error["param"] == "audio_end_ms"

        await peer.conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=1000)
        truncated = (await peer.until("conversation.item.truncated"))[-1]
        assert truncated["item_id"] == item_id
        assert (truncated["content_index"], truncated["audio_end_ms"]) == (0, 1000)

        # The item is now 1000 ms long.
        await peer.conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=1001)
        error = (await peer.until("error"))[-1]["error"]
        assert error["message"] == "Audio content of 1000ms is already shorter than 1001ms"

        # Only assistant audio can be truncated.
        await peer.conn.conversation.item.create(item={"type": "message", "role": "user",
                                                       "content": [{"type": "input_text", "text": "hi"}]})
        user_item = (await peer.until("conversation.item.done"))[-1]["item"]["id"]
        await peer.conn.conversation.item.truncate(item_id=user_item, content_index=0, audio_end_ms=0)
        assert (await peer.until("error"))[-1]["error"]["code"] == "unsupported_content_type"

    truncates = server.sessions[-1].truncates
    assert [(t["audio_end_ms"], t["accepted"]) for t in truncates] == [
        (produced_ms + 60, False), (1000, True), (1001, False), (0, False)]
    assert truncates[0]["produced_ms"] == produced_ms


async def test_barge_in_cancels_the_response_then_echoes(fixtures_dir: Path) -> None:
    speech = _speech_24k(fixtures_dir)
    async with SimulatorServer(pace=2.0) as srv, connect(srv) as peer:
        await peer.conn.session.update(session=SESSION_PCM)
        await peer.until("session.updated")
        await peer.send({"type": "response.create"})
        first = (await peer.until("response.output_audio.delta"))[-1]
        await peer.append(speech.tobytes())
        events = await peer.until("input_audio_buffer.committed")
        types = _types(events)
        # speech_started, then the greeting is cancelled by the server (server VAD semantics).
        assert types.index("input_audio_buffer.speech_started") < types.index("response.done")
        cancelled = next(e for e in events if e["type"] == "response.done")["response"]
        assert cancelled["id"] == first["response_id"]
        assert cancelled["status"] == "cancelled"
        assert cancelled["status_details"]["reason"] == "turn_detected"
        echo_events = await peer.until("response.done")
        assert echo_events[-1]["response"]["status"] == "completed"
        assert "echo of caller speech" in echo_events[-1]["response"]["output"][0]["content"][0]["transcript"]

        # The cancelled greeting can still be truncated to what was played.
        greeting_item = cancelled["output"][0]["id"]
        await peer.conn.conversation.item.truncate(item_id=greeting_item, content_index=0, audio_end_ms=40)
        await peer.until("conversation.item.truncated")
    record = srv.sessions[-1]
    assert len(record.speech_started_at) == 1
    assert record.responses[0]["status"] == "cancelled" and record.responses[0]["reason"] == "turn_detected"


async def test_interrupt_response_false_keeps_the_response(fixtures_dir: Path) -> None:
    speech = _speech_24k(fixtures_dir)
    async with SimulatorServer(pace=4.0) as srv, connect(srv) as peer:
        await peer.conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": {
            "type": "server_vad", "interrupt_response": False, "create_response": False}}}})
        await peer.until("session.updated")
        await peer.send({"type": "response.create"})
        await peer.until("response.output_audio.delta")
        await peer.append(speech.tobytes())
        events = await peer.until("response.done")
        assert "input_audio_buffer.speech_started" in _types(events)
        assert events[-1]["response"]["status"] == "completed"
        with pytest.raises(TimeoutError):
            await peer.next(within=0.3)


# --------------------------------------------------------------------------- tools


async def test_tool_call_hook_then_confirmation(server: SimulatorServer) -> None:
    tool = {"type": "function", "name": "transfer_call", "description": "Transfer the caller",
            "parameters": {"type": "object", "properties": {"extension": {"type": "string"}}}}
    async with connect(server) as peer:
        await peer.conn.session.update(session={"type": "realtime", "tools": [tool]})
        await peer.until("session.updated")
        await peer.conn.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text",
                         "text": 'DTMF 5 call_tool:transfer_call {"extension": "201"}'}]})
        added = await peer.until("conversation.item.done")
        assert _types(added) == ["conversation.item.added", "conversation.item.done"]
        with pytest.raises(TimeoutError):
            await peer.next(within=0.3)

        await peer.conn.response.create()
        events = await peer.until("response.done")
        assert "response.output_audio.delta" not in _types(events)
        item = next(e for e in events if e["type"] == "response.output_item.added")["item"]
        assert item["type"] == "function_call" and item["name"] == "transfer_call"
        done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        assert done["arguments"] == '{"extension": "201"}' and done["call_id"] == item["call_id"]
        streamed = "".join(e["delta"] for e in events
                           if e["type"] == "response.function_call_arguments.delta")
        assert streamed == done["arguments"]
        assert json.loads(done["arguments"]) == {"extension": "201"}
        output = events[-1]["response"]["output"][0]
        assert output["type"] == "function_call" and output["status"] == "completed"

        await peer.conn.conversation.item.create(
            item={"type": "function_call_output", "call_id": item["call_id"], "output": '{"ok": true}'})
        await peer.until("conversation.item.done")
        await peer.conn.response.create()
        events = await peer.until("response.done")
        assert len(_audio_of(events)) > 24000  # a spoken confirmation of more than half a second
        assert events[-1]["response"]["output"][0]["content"][0]["transcript"] == "[tool result received]"
    record = server.sessions[-1]
    assert [r["kind"] for r in record.responses] == ["tool_call", "confirmation"]
    assert record.items_created[-1]["type"] == "function_call_output"


async def test_tool_hook_needs_a_declared_tool(server: SimulatorServer) -> None:
    async with connect(server) as peer:
        await peer.conn.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "call_tool:nope {}"}]})
        await peer.until("conversation.item.done")
        await peer.conn.response.create()
        events = await peer.until("response.done")
    assert "response.function_call_arguments.done" not in _types(events)
    assert events[-1]["response"]["output"][0]["content"][0]["transcript"] == "[tool nope is not available]"


async def test_conversation_items_retrieve_and_delete(server: SimulatorServer) -> None:
    async with connect(server) as peer:
        await peer.conn.conversation.item.create(item={
            "id": "item_mine", "type": "message", "role": "system",
            "content": [{"type": "input_text", "text": "Caller is a VIP."}]})
        done = (await peer.until("conversation.item.done"))[-1]
        assert done["item"]["id"] == "item_mine" and done["previous_item_id"] is None
        await peer.conn.conversation.item.create(item={
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]})
        second = (await peer.until("conversation.item.done"))[-1]
        assert second["previous_item_id"] == "item_mine"
        await peer.conn.conversation.item.retrieve(item_id="item_mine")
        retrieved = (await peer.until("conversation.item.retrieved"))[-1]["item"]
        assert retrieved["content"][0]["text"] == "Caller is a VIP."
        await peer.conn.conversation.item.delete(item_id="item_mine")
        assert (await peer.until("conversation.item.deleted"))[-1]["item_id"] == "item_mine"
        await peer.conn.conversation.item.delete(item_id="item_mine")
        assert (await peer.until("error"))[-1]["error"]["code"] == "item_not_found"


# --------------------------------------------------------------------------- connection level


async def test_beta_header_is_closed_with_4000(server: SimulatorServer) -> None:
    client = AsyncOpenAI(api_key="test", websocket_base_url=server.url, max_retries=0)
    try:
        async with client.beta.realtime.connect(model="gpt-realtime") as conn:
            first = json.loads(await conn.recv_bytes())
            assert first["type"] == "error" and first["error"]["code"] == "beta_api_shape_disabled"
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await conn.recv_bytes()
    finally:
        await client.close()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "beta_api_shape_disabled")
    assert server.sessions == []
    assert server.rejections == [("beta_api_shape_disabled", "/v1/realtime")]


async def test_authentication() -> None:
    async with SimulatorServer(api_key="sk-right") as srv:
        url = f"ws://127.0.0.1:{srv.port}/v1/realtime?model=gpt-realtime"
        with pytest.raises(websockets.exceptions.InvalidStatus) as missing:
            async with websockets.connect(url):
                pass
        assert missing.value.response.status_code == 401

        client = AsyncOpenAI(api_key="sk-wrong", websocket_base_url=srv.url, max_retries=0)
        try:
            with pytest.raises(websockets.exceptions.InvalidStatus) as wrong:
                async with client.realtime.connect(model="gpt-realtime"):
                    pass
        finally:
            await client.close()
        assert wrong.value.response.status_code == 401

        async with connect(srv, api_key="sk-right") as peer:
            assert peer.events[0]["type"] == "session.created"

        # Azure OpenAI v1 surface: /openai/v1/realtime with the api-key header alone.
        azure = f"ws://127.0.0.1:{srv.port}/openai/v1/realtime?model=my-deployment"
        async with websockets.connect(azure, additional_headers={"api-key": "sk-right"}) as ws:
            created = json.loads(await ws.recv())
            assert created["type"] == "session.created" and created["session"]["model"] == "my-deployment"
    assert [r[0] for r in srv.rejections] == ["unauthorized", "unauthorized"]
    assert [s.path for s in srv.sessions] == ["/v1/realtime", "/openai/v1/realtime"]


async def test_drop_all_closes_sessions_with_the_given_code(server: SimulatorServer) -> None:
    async with connect(server) as a, connect(server) as b:
        await server.drop_all()
        for peer in (a, b):
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await peer.next()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    assert [s.close_code for s in server.sessions] == [1011, 1011]


async def test_session_duration_limit() -> None:
    async with SimulatorServer(max_session_seconds=0.3) as srv, connect(srv) as peer:
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            await peer.next(within=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert "maximum duration" in closed.value.rcvd.reason


async def test_concurrent_sessions_are_isolated(server: SimulatorServer) -> None:
    formats = [{"type": "audio/pcm", "rate": 24000}, {"type": "audio/pcmu"}, {"type": "audio/pcma"}] * 2

    async def one(fmt: dict[str, Any]) -> tuple[str, int]:
        async with connect(server) as peer:
            await peer.conn.session.update(session={"type": "realtime", "audio": {"output": {"format": fmt}}})
            await peer.until("session.updated")
            await peer.send({"type": "response.create"})
            events = await peer.until("response.done")
            return events[-1]["response"]["id"], len(_audio_of(events))

    results = await asyncio.gather(*(one(f) for f in formats))
    assert len({r[0] for r in results}) == len(formats)
    greeting = len(simulator.greeting_samples())
    for fmt, (_, nbytes) in zip(formats, results, strict=True):
        expected = greeting * 2 if fmt["type"] == "audio/pcm" else greeting // 3
        assert abs(nbytes - expected) <= 2, fmt
    assert len(server.sessions) == len(formats)
    assert len({s.id for s in server.sessions}) == len(formats)


async def test_command_line_serves_until_sigterm() -> None:
    code = ("import argparse, sys\n"
            "from bridge.cli import simulator as command\n"
            "parser = argparse.ArgumentParser()\n"
            "command.register(parser.add_subparsers())\n"
            "args = parser.parse_args(sys.argv[1:])\n"
            "sys.exit(args.func(args))\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, "simulator", "--port", "0", "--pace", "8",
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert "websocket_base_url=" in line, line
        url = line.strip().split("websocket_base_url=")[1].split()[0]
        assert line.strip().endswith(url.removesuffix("/v1").replace("ws://", "voice_live_endpoint=http://"))
        client = AsyncOpenAI(api_key="test", websocket_base_url=url, max_retries=0)
        try:
            async with client.realtime.connect(model="gpt-realtime") as conn:
                assert json.loads(await conn.recv_bytes())["type"] == "session.created"
        finally:
            await client.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_register_adds_the_simulator_command() -> None:
    parser = argparse.ArgumentParser()
    simulator_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["simulator", "--host", "0.0.0.0", "--port", "9000", "--pace", "1.5"])
    assert (args.command, args.host, args.port) == ("simulator", "0.0.0.0", 9000)
    assert (args.pace, args.delta_ms, args.api_key) == (1.5, 50, None)
    assert callable(args.func)


async def test_timing_log_stamps_turns_and_responses(tmp_path: Path, fixtures_dir: Path) -> None:
    log_path = tmp_path / "timing.jsonl"
    speech = _speech_24k(fixtures_dir)
    frame = 24000 * 20 // 1000 * 2  # bytes in 20 ms
    async with SimulatorServer(pace=20.0, events_log=str(log_path)) as server:
        async with connect(server) as peer:
            await peer.conn.session.update(session=SESSION_PCM)
            await peer.until("session.updated")
            await peer.conn.response.create()  # the greeting
            await peer.until("response.done")
            sent_at: list[float] = []
            pcm = speech.tobytes()
            for i in range(0, len(pcm), frame):
                sent_at.append(time.monotonic())
                await peer.append(pcm[i:i + frame], frame, compact=True)
            events = await peer.until("response.done")
        session_id = server.sessions[-1].id
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert {line["s"] for line in lines} == {session_id}
    kinds = [line["e"] for line in lines]
    assert kinds[0] == "open" and kinds[-1] == "close"
    assert kinds.count("first_audio") == kinds.count("done") == 2
    # Stamps are the monotonic clock this process reads too.
    assert all(sent_at[0] - 60 < line["t"] <= time.monotonic() for line in lines)
    greeting_first = next(line for line in lines if line["e"] == "first_audio")
    assert greeting_first["kind"] == "greeting"
    greeting_done = next(line for line in lines if line["e"] == "done")
    assert greeting_done["status"] == "completed" and greeting_done["r"] == greeting_first["r"]
    assert 0 <= greeting_done["voiced_ms"][0] < greeting_done["voiced_ms"][1] <= greeting_done["audio_ms"]
    started = next(line for line in lines if line["e"] == "speech_started")
    assert started["agent"] is False  # the greeting had finished
    # The turn's end is stamped with the arrival of the append that completed its last speech
    # frame (sent when the speech stopped), before the silence that ends the turn had arrived.
    stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
    speech_end = next(line for line in lines if line["e"] == "speech_end")
    last_speech_frame = (stopped["audio_end_ms"] - 500) // 20 - 1  # silence_duration_ms is 500
    assert speech_end["t"] >= sent_at[last_speech_frame]
    assert speech_end["t"] < speech_end["stopped"]
