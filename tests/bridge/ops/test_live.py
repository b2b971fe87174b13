"""Live call events: the hub's bounded per-subscriber queues and tenant filter, and
``GET /api/calls/live`` over a real loopback HTTP server (SSE and WebSocket)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from bridge.ops.api import OpsApi
from bridge.ops.live import LiveEvents, TeeTap
from bridge.ops.metrics import Metrics
from bridge.records.archive import CallArchive
from tests.bridge.ops.test_ops_api import ACME, ADMIN, OPS, bearer
from tests.peers.tap_call import FakeClock, call_info, make_settings


async def next_event(sub, within: float = 2.0):
    return await asyncio.wait_for(sub.get(), within)


async def test_slow_subscriber_loses_the_oldest_events_and_is_told():
    registry = CollectorRegistry()
    hub = LiveEvents(Metrics(registry), queue_size=4)
    info = call_info(1, "acme", started_at=1_750_000_000.0)
    slow = hub.subscribe(None)
    tap = hub.open_call(info)
    tap.event("answered")
    for n in range(10):
        tap.transcript("caller", f"line {n}", 0.0)
    # Nothing waited for the reader: the publisher never blocks. The reader learns what it missed.
    dropped = await next_event(slow)
    assert dropped["type"] == "dropped" and dropped["count"] == 8  # snapshot + started + 10 lines, 4 kept
    assert registry.get_sample_value("callbridge_live_events_dropped_total") == 8
    rest = [await next_event(slow) for _ in range(4)]
    assert [e["text"] for e in rest] == ["line 6", "line 7", "line 8", "line 9"]
    # A late subscriber starts from a snapshot of the call so far (the last lines kept).
    late = hub.subscribe("acme")
    snapshot = await next_event(late)
    assert snapshot["type"] == "snapshot"
    assert [c["call_id"] for c in snapshot["calls"]] == [info.call_id]
    assert snapshot["calls"][0]["transcript"][-1]["text"] == "line 9"
    tap.event("ended", outcome="normal")
    assert (await next_event(late))["type"] == "call.ended"
    assert (await next_event(hub.subscribe(None)))["calls"] == []


async def test_tenant_subscription_sees_only_its_tenant():
    hub = LiveEvents()
    acme = hub.subscribe("acme")
    everyone = hub.subscribe(None)
    for n, tenant in enumerate(("acme", "globex")):
        tap = hub.open_call(call_info(n + 1, tenant, started_at=1_750_000_000.0))
        tap.event("answered")
        tap.event("agent_speaking")
    await next_event(acme)
    await next_event(everyone)
    acme_seen = [await next_event(acme) for _ in range(2)]
    assert {e["tenant"] for e in acme_seen} == {"acme"}
    with_globex = [await next_event(everyone) for _ in range(4)]
    assert {e["tenant"] for e in with_globex} == {"acme", "globex"}
    await asyncio.sleep(0.05)
    assert acme._queue == type(acme._queue)()  # nothing of globex is waiting


def test_tee_tap_feeds_both_and_binds_audio_to_the_first():
    seen: list[tuple[str, str]] = []

    class Tap:
        def __init__(self, name: str) -> None:
            self.name = name

        def caller_audio(self, samples, rate_hz) -> None:
            seen.append((self.name, "audio"))

        agent_audio = caller_audio

        def transcript(self, role, text, at) -> None:
            seen.append((self.name, text))

        def event(self, name, **fields) -> None:
            seen.append((self.name, name))

    first = Tap("recorder")
    tee = TeeTap(first, Tap("live"))
    assert tee.caller_audio == first.caller_audio
    tee.transcript("caller", "hi", 0.0)
    tee.event("dtmf", digit="5")
    assert seen == [("recorder", "hi"), ("live", "hi"), ("recorder", "dtmf"), ("live", "dtmf")]


async def test_live_endpoint_tokens_sse_and_websocket(tmp_path):
    settings = make_settings(tmp_path, ops=OPS)
    hub = LiveEvents()
    archive = CallArchive(settings, Metrics(CollectorRegistry()), clock=FakeClock())
    async with archive.running():
        app = web.Application()
        OpsApi(archive, settings.ops, live=hub).install(app)
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http:
                async with http.get("/api/calls/live") as resp:
                    assert resp.status == 401
                async with http.get("/api/calls/live", headers=bearer("nope")) as resp:
                    assert resp.status == 401
                async with http.get("/api/calls/live?tenant=globex", headers=bearer(ACME)) as resp:
                    assert resp.status == 403
                async with http.get("/api/calls/live?tenant=globex", headers=bearer(ADMIN)) as sse, \
                        http.ws_connect("/api/calls/live", headers=bearer(ACME)) as ws:
                    assert sse.status == 200
                    assert sse.headers["Content-Type"].startswith("text/event-stream")
                    assert json.loads((await ws.receive()).data)["type"] == "snapshot"
                    assert (await sse.content.readline()).startswith(b"id: ")
                    assert json.loads((await sse.content.readline())[5:])["type"] == "snapshot"
                    await sse.content.readline()
                    for n, tenant in enumerate(("globex", "acme")):
                        tap = hub.open_call(call_info(n + 1, tenant, started_at=1_750_000_000.0))
                        tap.event("answered")
                        tap.event("dtmf", digit=str(n))
                    got = json.loads((await ws.receive()).data)
                    assert (got["type"], got["tenant"]) == ("call.started", "acme")
                    assert json.loads((await ws.receive()).data)["digit"] == "1"
                    await sse.content.readline()
                    started = json.loads((await sse.content.readline())[5:])
                    await sse.content.readline()
                    await sse.content.readline()
                    digit = json.loads((await sse.content.readline())[5:])
                    assert (started["tenant"], digit["digit"]) == ("globex", "0")
                    assert hub.subscribers == 2
                await asyncio.sleep(0.1)
                # The WebSocket reader's subscription ends with its socket (an SSE reader's at the
                # next write, a keep-alive at the latest).
                assert hub.subscribers <= 1
        finally:
            await runner.cleanup()
