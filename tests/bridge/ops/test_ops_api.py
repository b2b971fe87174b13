"""The ops API over a real loopback HTTP server, with calls recorded through the real archive."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from urllib.parse import parse_qs, urlsplit

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from bridge.ops.api import OpsApi, parse_time
from bridge.ops.metrics import Metrics
from bridge.records.archive import CallArchive
from tests.peers.tap_call import RATE, FakeClock, call_info, make_settings, play_call, voice
from tests.servers import serve_app

ADMIN = "admin-token-0123456789"
ACME = "acme-token-abcdef"
GLOBEX = "globex-token-xyz"
OPS = {"admin_token": ADMIN, "tenant_tokens": {"acme": ACME, "globex": GLOBEX}}


@asynccontextmanager
async def ops_server(tmp_path, **ops):
    settings = make_settings(tmp_path, ops={**OPS, **ops})
    clock = FakeClock()
    archive = CallArchive(settings, Metrics(CollectorRegistry()), clock=clock)
    async with archive.running(), serve_ops(archive, settings.ops) as http:
        yield archive, clock, http


@asynccontextmanager
async def serve_ops(archive, ops_settings):
    """One instance of the ops API over ``archive``, on a loopback port of its own."""
    app = web.Application()
    OpsApi(archive, ops_settings).install(app)
    async with serve_app(app) as port, aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http:
        yield http


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def record_calls(archive, clock):
    """Three calls: two for acme (one an hour later), one for globex."""
    calls = [
        call_info(1, "acme", started_at=1_750_000_000.0),
        call_info(2, "globex", started_at=1_750_000_100.0),
        call_info(3, "acme", started_at=1_750_003_600.0),
    ]
    outcomes = ["normal", "caller_hangup", "transferred"]
    for i, (info, outcome) in enumerate(zip(calls, outcomes, strict=True)):
        play_call(archive, clock, info, voice(RATE, 10 + i), voice(RATE, 20 + i), outcome=outcome,
                  transcript=[("caller", f"question {i}", 0.2), ("agent", f"answer {i}", 0.6)])
    await asyncio.wait_for(archive.wait_idle(), 10)
    return calls


async def test_tokens_decide_what_is_seen(tmp_path):
    async with ops_server(tmp_path) as (archive, clock, http):
        acme1, globex, acme3 = await record_calls(archive, clock)
        # No token, a malformed header, a wrong token: 401 and no data.
        for headers in ({}, {"Authorization": "Basic Zm9vOmJhcg=="}, {"Authorization": "Bearer"},
                        bearer("wrong"), bearer(ADMIN + "x")):
            async with http.get("/api/calls", headers=headers) as resp:
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                body = await resp.text()
                assert acme1.call_id not in body and "calls" not in body
            async with http.get(f"/api/calls/{acme1.call_id}/recording", headers=headers) as resp:
                assert resp.status == 401
        async with http.get("/api/calls", headers=bearer(ADMIN)) as resp:
            assert resp.status == 200
            page = await resp.json()
        assert page["total"] == 3
        assert [c["call_id"] for c in page["calls"]] == [acme3.call_id, globex.call_id, acme1.call_id]
        async with http.get("/api/calls", headers=bearer(ACME)) as resp:
            ids = [c["call_id"] for c in (await resp.json())["calls"]]
        assert ids == [acme3.call_id, acme1.call_id]
        async with http.get("/api/calls?tenant=globex", headers=bearer(ACME)) as resp:
            assert resp.status == 403
            assert globex.call_id not in await resp.text()
        async with http.get("/api/calls?tenant=acme", headers=bearer(ACME)) as resp:
            assert resp.status == 200
        # Another tenant's call does not exist for this token, whatever part is asked for.
        for suffix in ("", "/transcript", "/waveform", "/recording", "/recording/link"):
            async with http.get(f"/api/calls/{globex.call_id}{suffix}", headers=bearer(ACME)) as resp:
                assert resp.status == 404, suffix
                assert "question" not in await resp.text()
            async with http.get(f"/api/calls/{globex.call_id}{suffix}", headers=bearer(GLOBEX)) as resp:
                assert resp.status == 200, suffix
        async with http.get("/api/whoami", headers=bearer(GLOBEX)) as resp:
            assert await resp.json() == {"role": "tenant", "tenant": "globex"}
        async with http.get("/api/whoami", headers=bearer(ADMIN)) as resp:
            assert await resp.json() == {"role": "admin", "tenant": None}


async def test_search_filters_and_call_views(tmp_path):
    async with ops_server(tmp_path) as (archive, clock, http):
        acme1, globex, acme3 = await record_calls(archive, clock)
        admin = bearer(ADMIN)

        async def ids(query: str) -> list[str]:
            async with http.get(f"/api/calls?{query}", headers=admin) as resp:
                assert resp.status == 200, await resp.text()
                return [c["call_id"] for c in (await resp.json())["calls"]]

        assert await ids("tenant=acme&outcome=transferred") == [acme3.call_id]
        assert await ids(f"number={globex.caller_id[-6:]}") == [globex.call_id]
        assert await ids("number=%2B55%2011%2099999-0003") == [acme3.call_id]
        assert await ids("since=2025-06-15T15:10:00Z") == [acme3.call_id]
        assert await ids("until=1750000100") == [acme1.call_id]
        assert await ids("since=2025-06-15T18:07:00%2B03:00&until=2025-06-15T16:00:00Z") == [globex.call_id]
        assert await ids("limit=1&offset=1") == [globex.call_id]
        for bad in ("outcome=sideways", "limit=0", "limit=100000", "offset=-1", "since=yesterday",
                    "status=weird", "limit=x", "offset=9223372036854775808", "offset=" + "9" * 40,
                    "offset=1000000001"):
            async with http.get(f"/api/calls?{bad}", headers=admin) as resp:
                assert resp.status == 400, bad

        async with http.get(f"/api/calls/{acme1.call_id}", headers=admin) as resp:
            call = await resp.json()
        assert call["tenant"] == "acme" and call["outcome"] == "normal" and call["status"] == "complete"
        assert call["dialled"] == acme1.dialled and call["caller_id"] == acme1.caller_id
        assert call["started_at"] == "2025-06-15T15:06:40.000Z"
        assert call["recording"]["available"] and call["recording"]["sample_rate"] == RATE
        assert call["links"]["recording"] == f"/api/calls/{acme1.call_id}/recording"
        assert "path" not in call and "object_key" not in call

        async with http.get(f"/api/calls/{acme1.call_id}/transcript", headers=admin) as resp:
            transcript = await resp.json()
        assert [(e["role"], e["text"], e["offset"]) for e in transcript["entries"]] == [
            ("caller", "question 0", 0.2), ("agent", "answer 0", 0.6)]
        assert transcript["entries"][0]["at"] == "2025-06-15T15:06:40.200Z"

        async with http.get(f"/api/calls/{acme1.call_id}/waveform", headers=admin) as resp:
            peaks = await resp.json()
        assert peaks["rate"] == RATE and len(peaks["peaks"]) == 2


async def test_recording_range_requests_return_exact_bytes(tmp_path):
    async with ops_server(tmp_path) as (archive, clock, http):
        acme1, *_ = await record_calls(archive, clock)
        record = await archive.get(acme1.call_id)
        data = (archive.layout.root / f"{record.path}.wav").read_bytes()
        url = f"/api/calls/{acme1.call_id}/recording"
        async with http.get(url, headers=bearer(ACME)) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "audio/wav"
            assert resp.headers["Accept-Ranges"] == "bytes"
            assert await resp.read() == data
        for header, expected, status in (
            ("bytes=0-43", data[:44], 206),
            ("bytes=1000-1999", data[1000:2000], 206),
            ("bytes=-100", data[-100:], 206),
            (f"bytes={len(data) - 10}-", data[-10:], 206),
        ):
            async with http.get(url, headers={**bearer(ACME), "Range": header}) as resp:
                assert resp.status == status, header
                body = await resp.read()
                assert body == expected, header
                assert resp.headers["Content-Range"].endswith(f"/{len(data)}")
        async with http.get(url, headers={**bearer(ACME), "Range": f"bytes={len(data) + 5}-"}) as resp:
            assert resp.status == 416


async def test_signed_links_and_paths_that_try_to_escape(tmp_path):
    async with ops_server(tmp_path, link_seconds=60) as (archive, clock, http):
        acme1, *_ = await record_calls(archive, clock)
        record = await archive.get(acme1.call_id)
        data = (archive.layout.root / f"{record.path}.wav").read_bytes()
        async with http.get(f"/api/calls/{acme1.call_id}/recording/link", headers=bearer(ACME)) as resp:
            link = await resp.json()
        assert link["url"].startswith(f"/api/recordings/{acme1.call_id}.wav?")
        # The link alone is enough (an <audio> element sends no Authorization header) ...
        async with http.get(link["url"], headers={"Range": "bytes=44-143"}) as resp:
            assert resp.status == 206 and await resp.read() == data[44:144]
        # ... but only as issued: another call, another expiry or signature are refused.
        query = parse_qs(urlsplit(link["url"]).query)
        exp, sig = query["exp"][0], query["sig"][0]
        other = "00000000-0000-4000-8000-000000000002"
        for bad in (f"/api/recordings/{other}.wav?exp={exp}&sig={sig}",
                    f"/api/recordings/{acme1.call_id}.wav?exp={int(exp) + 1}&sig={sig}",
                    f"/api/recordings/{acme1.call_id}.wav?exp={exp}&sig={'0' * 64}",
                    f"/api/recordings/{acme1.call_id}.wav?exp={int(time.time()) - 1}&sig={sig}",
                    f"/api/recordings/{acme1.call_id}.wav"):
            async with http.get(bad) as resp:
                assert resp.status == 403, bad
        for path in ("/api/calls/..%2F..%2F..%2Fetc%2Fpasswd", "/api/calls/..%2Fcalls.sqlite3/recording",
                     "/api/calls/%2E%2E/recording", "/api/calls/acme%2F2025/transcript",
                     "/api/calls/.unfinished/recording"):
            async with http.get(path, headers=bearer(ADMIN)) as resp:
                assert resp.status == 404, path
                body = await resp.read()
                assert b"root:" not in body and b"SQLite" not in body


async def test_signed_links_hold_across_instances_and_key_rotation(tmp_path):
    """A configured link key is shared: a link one instance issued opens on another (a restart,
    another replica behind the balancer). Rotation: the new key first, the old one kept listed
    for the overlap; once it is removed its links stop opening. Without a configured key every
    instance has its own and another instance's links do not open."""
    old, new = "old-link-secret-0123456789", "new-link-secret-0123456789"
    settings = make_settings(tmp_path, ops={**OPS, "link_secrets": [old]})
    archive = CallArchive(settings, Metrics(CollectorRegistry()), clock=FakeClock())
    async with archive.running():
        acme1, *_ = await record_calls(archive, archive.clock)

        async def link(http):
            async with http.get(f"/api/calls/{acme1.call_id}/recording/link", headers=bearer(ACME)) as resp:
                return (await resp.json())["url"]

        async def opens(http, url):
            async with http.get(url) as resp:
                return resp.status == 200

        ops = settings.ops
        async with serve_ops(archive, ops) as first:
            issued_old = await link(first)
        async with serve_ops(archive, ops) as restarted:
            assert await opens(restarted, issued_old)
        overlap = make_settings(tmp_path, ops={**OPS, "link_secrets": [new, old]}).ops
        async with serve_ops(archive, overlap) as rotating:
            assert await opens(rotating, issued_old)
            issued_new = await link(rotating)
            assert issued_new != issued_old
        after = make_settings(tmp_path, ops={**OPS, "link_secrets": [new]}).ops
        async with serve_ops(archive, after) as rotated:
            assert await opens(rotated, issued_new)
            assert not await opens(rotated, issued_old)
        per_process = make_settings(tmp_path, ops=OPS).ops
        async with serve_ops(archive, per_process) as a, serve_ops(archive, per_process) as b:
            own = await link(a)
            assert await opens(a, own) and not await opens(b, own)


async def test_in_progress_calls_are_listed_but_not_served(tmp_path):
    async with ops_server(tmp_path) as (archive, clock, http):
        info = call_info(40)
        tap = archive.open_tap(info)
        for _ in range(10):
            clock.now += 0.02
            tap.caller_audio(voice(160, 1), RATE)
        async with asyncio.timeout(5):
            # The in-progress row is written in the background, as the call starts.
            while await archive.get(info.call_id) is None:
                await asyncio.sleep(0.02)
        async with http.get("/api/calls?status=in_progress", headers=bearer(ADMIN)) as resp:
            assert [c["call_id"] for c in (await resp.json())["calls"]] == [info.call_id]
        async with http.get(f"/api/calls/{info.call_id}/recording", headers=bearer(ADMIN)) as resp:
            assert resp.status == 409
        tap.event("ended", outcome="normal")
        await asyncio.wait_for(archive.wait_idle(), 10)
        async with http.get(f"/api/calls/{info.call_id}/recording", headers=bearer(ADMIN)) as resp:
            assert resp.status == 200
            assert len(await resp.read()) == (await archive.get(info.call_id)).recording_bytes


async def test_page_assets_are_served_with_a_strict_policy(tmp_path):
    async with ops_server(tmp_path) as (_archive, _clock, http):
        async with http.get("/ops", allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "/ops/"
        async with http.get("/ops/") as resp:
            assert resp.status == 200 and "text/html" in resp.headers["Content-Type"]
            assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
            assert 'src="app.js"' in await resp.text()
        for name, kind in (("app.js", "javascript"), ("app.css", "css")):
            async with http.get(f"/ops/{name}") as resp:
                assert resp.status == 200 and kind in resp.headers["Content-Type"]
        async with http.get("/ops/..%2Fops_api.py") as resp:
            assert resp.status == 404


def test_parse_time_forms():
    assert parse_time("1750000000", "since") == 1_750_000_000.0
    assert parse_time("2025-06-15T15:06:40Z", "since") == 1_750_000_000.0
    assert parse_time("2025-06-15T15:06:40", "since") == 1_750_000_000.0
    assert parse_time("2025-06-15T18:06:40+03:00", "since") == 1_750_000_000.0
    assert parse_time("2025-06-15T18:06:40 03:00", "since") == 1_750_000_000.0
    with pytest.raises(web.HTTPBadRequest):
        parse_time("soon", "since")
    assert np.isfinite(parse_time("2025-01-01", "until"))
