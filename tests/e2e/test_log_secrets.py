"""No secret in any log line, with every module at DEBUG: the daemon's own logging set-up (as
``callbridge serve`` makes it) while calls authenticate every way they can, the model leg
presents its key (websockets logs each upgrade header at DEBUG), and the ops API is used."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from twilio.request_validator import RequestValidator

from bridge.app import Application
from bridge.ops import logs
from bridge.simulator import SimulatorServer
from tests.conftest import loopback_settings
from tests.peers.media_ws import TwilioPeer, WsPeer

pytestmark = pytest.mark.realtime

MODEL_KEY = "sk-proj-modelkeyfortests0123456789abcdef"
ADMIN_TOKEN = "ops-admin-token-for-tests-0123456789"
TWILIO_AUTH_TOKEN = "twilio-auth-token-for-tests-0123456"
LINK_SECRET = "link-signing-secret-for-tests-0123"
MEDIA_TOKEN = "acme-media-token-0123456789abcdef"
NUMBER = "+5511988880001"


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: lg.level for name, lg in logging.root.manager.loggerDict.items()
              if isinstance(lg, logging.Logger)}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lg in logging.root.manager.loggerDict.items():
        if isinstance(lg, logging.Logger):
            lg.setLevel(levels.get(name, logging.NOTSET))


@pytest.mark.parametrize("provider", ["openai", "azure_openai"])
async def test_no_secret_in_any_log_line_at_debug(tmp_path, capsys, restored_logging, provider):
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(f"""
version: 1
tenants:
  - slug: acme
    numbers: ["{NUMBER}"]
    greeting: Olá
    media_token: {MEDIA_TOKEN}
""", encoding="utf-8")
    async with SimulatorServer(api_key=MODEL_KEY) as simulator:
        model: dict[str, Any] = (
            {"provider": "openai", "api_key": MODEL_KEY, "websocket_base_url": simulator.url}
            if provider == "openai" else
            {"provider": "azure_openai", "azure_endpoint": f"http://127.0.0.1:{simulator.port}",
             "azure_api_key": MODEL_KEY, "azure_deployment": "gpt-realtime"}
        )
        settings = loopback_settings(
            tmp_path, record=True, audiosocket={"enabled": False}, agi={"enabled": False},
            tenants={"file": str(tenants)}, model=model,
            ops={"admin_token": ADMIN_TOKEN, "link_secrets": [LINK_SECRET]},
            security={"twilio_auth_tokens": [TWILIO_AUTH_TOKEN]},
        )
        # What `callbridge serve` does, with every logger there is at DEBUG (libraries' too).
        import openai  # noqa: F401  (its loggers exist once imported)
        import websockets.asyncio.client  # noqa: F401

        everything = {name: "DEBUG" for name in logging.root.manager.loggerDict}
        everything.update({"websockets": "DEBUG", "websockets.client": "DEBUG", "aiohttp.access": "DEBUG"})
        logs.configure("DEBUG", False, everything, settings.secret_values())

        app = Application(settings)
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop.wait()))
        await asyncio.wait_for(app.wait_started(), 20)
        assert app.http is not None
        port = app.http.port
        try:
            for query, options in (
                ("", {"additional_headers": {"Authorization": f"Bearer {MEDIA_TOKEN}"}}),
                (f"?token={MEDIA_TOKEN}", {}),
                ("", {"subprotocols": ["callbridge", f"callbridge.bearer.{MEDIA_TOKEN}"]}),
            ):
                peer = WsPeer()
                await peer.connect(f"ws://127.0.0.1:{port}/ws/audio/{NUMBER}{query}", **options)
                async with asyncio.timeout(10):
                    while not peer.received:
                        await asyncio.sleep(0.02)
                await peer.close()
            url = f"ws://127.0.0.1:{port}/ws/twilio"
            signature = RequestValidator(TWILIO_AUTH_TOKEN).compute_signature(f"wss://127.0.0.1:{port}/ws/twilio", {})
            twilio = TwilioPeer()
            await twilio.start(url, {"to": NUMBER}, additional_headers={"X-Twilio-Signature": signature})
            async with asyncio.timeout(10):
                while not twilio.media:
                    await asyncio.sleep(0.02)
            await twilio.close()
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with aiohttp.ClientSession(headers=headers) as session:
                async with asyncio.timeout(10):
                    while True:
                        async with session.get(f"http://127.0.0.1:{port}/api/calls") as response:
                            assert response.status == 200
                            calls = (await response.json())["calls"]
                        if any(c["recording"]["available"] and c["status"] == "complete" for c in calls):
                            break
                        await asyncio.sleep(0.1)
                call_id = next(c["call_id"] for c in calls
                               if c["recording"]["available"] and c["status"] == "complete")
                async with session.get(f"http://127.0.0.1:{port}/api/calls/{call_id}/recording/link") as response:
                    link = (await response.json())["url"]
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}{link}") as response:
                    assert response.status == 200
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) > 100, "DEBUG logging did not reach the output"
    # The credentials went by where the libraries log them, masked.
    assert any("Authorization: [redacted]" in line or "api-key: [redacted]" in line for line in lines)
    assert any("token=[redacted]" in line for line in lines)
    signature_part = link.split("sig=")[1]
    for secret in (MODEL_KEY, ADMIN_TOKEN, TWILIO_AUTH_TOKEN, LINK_SECRET, MEDIA_TOKEN, signature,
                   signature_part):
        leaked = [line for line in lines if secret in line]
        assert not leaked, f"secret in the log: {leaked[:3]}"
