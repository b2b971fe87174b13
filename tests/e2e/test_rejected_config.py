"""A session.update the model refuses ends the call as ``model_rejected_config``; a tenant whose
settings the provider cannot take never reaches the model unless it accepts the provider's
defaults. Whole calls over /ws/audio, on both model dialects."""

from __future__ import annotations

import asyncio
import base64

import pytest

from bridge.simulator import SimulatorServer
from tests.conftest import loopback_settings
from tests.peers.media_ws import WsPeer
from tests.servers import start_daemon, stop_daemon

pytestmark = [pytest.mark.realtime, pytest.mark.timeout(90)]

TENANTS = """version: 1
tenants:
  - slug: greedy          # the OpenAI protocol allows at most 4096 output tokens
    numbers: ["+5511900000001"]
    max_output_tokens: 5000
    greeting: hi
  - slug: custom          # an azure-custom voice needs its deployment's endpoint_id
    numbers: ["+5511900000002"]
    voice: {type: azure-custom, name: MyBrandVoice}
    greeting: hi
  - slug: azure-voice     # an Azure voice on the OpenAI protocol: refused before the model
    numbers: ["+5511900000003"]
    voice: pt-BR-FranciscaNeural
  - slug: lenient         # the same, but it takes the provider's defaults
    numbers: ["+5511900000004"]
    voice: pt-BR-FranciscaNeural
    unsupported_settings: provider_defaults
    greeting: hi
"""


async def _app(tmp_path, model):
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(TENANTS, encoding="utf-8")
    settings = loopback_settings(tmp_path, audiosocket={"enabled": False}, agi={"enabled": False},
                                 tenants={"file": str(tenants)}, model=model)
    return await start_daemon(settings)


async def _call(app, number, seconds=1.5):
    client = WsPeer()
    await client.connect(f"ws://127.0.0.1:{app.http.port}/ws/audio/{number}")
    silence = base64.b64encode(bytes(1920)).decode()
    sender = asyncio.create_task(client.send_paced([silence] * int(seconds / 0.04), 0.040))
    closed = asyncio.create_task(client.closed.wait())
    await asyncio.wait([sender, closed], timeout=10, return_when=asyncio.FIRST_COMPLETED)
    sender.cancel()
    closed.cancel()
    if not client.closed.is_set():  # the call went on: the caller hangs up
        await client.close()
        return client, None
    return client, client.close_code


@pytest.mark.parametrize(("dialect", "number"), [("openai", "+5511900000001"), ("voicelive", "+5511900000002")])
async def test_a_refused_session_update_ends_the_call(tmp_path, dialect, number):
    async with SimulatorServer(api_key="k", pace=1.0) as external:
        model = {} if dialect == "openai" else {
            "provider": "azure_voicelive", "voicelive_endpoint": external.http_url, "voicelive_api_key": "k"}
        app, stop, task = await _app(tmp_path, model)
        try:
            client, code = await _call(app, number)
        finally:
            await stop_daemon(stop, task)
    assert code == 1011 and client.close_reason == "model_rejected_config"
    # Nothing of an unconfigured agent reached the caller.
    assert client.received == []
    session = (app.simulator if dialect == "openai" else external).sessions[-1]
    assert session.errors_sent and session.errors_sent[0]["param"] in (
        "session.max_output_tokens", "session.voice.endpoint_id")
    assert app.metrics.registry.get_sample_value(
        "callbridge_calls_total", {"transport": "ws_audio", "outcome": "model_rejected_config"}) == 1


async def test_a_tenant_the_provider_cannot_take_never_reaches_the_model(tmp_path, caplog):
    app, stop, task = await _app(tmp_path, {})
    try:
        refused, code = await _call(app, "+5511900000003")
        assert code == 1011 and refused.received == []
        assert app.simulator.sessions == []
        lenient, code = await _call(app, "+5511900000004", seconds=2.0)
    finally:
        await stop_daemon(stop, task)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    # At start-up, before any call, and again when the call came.
    assert sum("tenant azure-voice: voice: 'pt-BR-FranciscaNeural' is an Azure neural voice" in e
               for e in errors) == 2
    # The lenient tenant's call went ahead on the provider's default voice.
    update = app.simulator.sessions[-1].session_updates[0]
    assert "voice" not in update["audio"]["output"]
    assert lenient.received, "the lenient tenant's caller heard nothing"
