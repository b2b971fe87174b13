"""/health: the fields monitors of Voice Live deployments read, and the provider's reachability."""

from __future__ import annotations

import socket

import aiohttp

from bridge.ops.http import REACHABILITY_TTL, Reachability
from bridge.simulator import SimulatorServer
from tests.conftest import loopback_settings
from tests.servers import running_daemon


async def test_health_fields_on_voice_live(tmp_path) -> None:
    async with SimulatorServer(api_key="k") as voicelive:
        settings = loopback_settings(tmp_path, app_env="staging", audiosocket={"enabled": False},
                                     agi={"enabled": False}, model={
                                         "voicelive_endpoint": voicelive.http_url, "voicelive_api_key": "k",
                                         "voicelive_model": "gpt-4o-realtime-preview"})
        async with running_daemon(settings) as app, aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{app.http.port}/health") as response:
            body = await response.json()
    assert response.status == 200
    assert body == {"status": "ok", "service": "callbridge", "calls_active": 0, "env": "staging",
                    "worker_status": "running",
                    "voice_model": "gpt-4o-realtime-preview", "provider": "azure_voicelive",
                    "provider_reachable": True}


async def test_reachability_is_asked_again_after_its_ttl() -> None:
    now = [0.0]
    reach = Reachability(clock=lambda: now[0])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    url = f"wss://127.0.0.1:{port}/voice-live/realtime"
    assert await reach.reachable(url) is True
    listener.close()
    now[0] = REACHABILITY_TTL - 1
    assert await reach.reachable(url) is True  # the cached answer
    now[0] = REACHABILITY_TTL + 1
    assert await reach.reachable(url) is False  # nothing listens there any more
