from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from bridge.ops.metrics import Metrics
from bridge.records.archive import CallArchive
from bridge.records.callstore import CallQuery, CallStatus
from bridge.records.webhook import verify
from tests.peers.killed_recorder import ramp
from tests.peers.tap_call import FRAME, RATE, FakeClock, call_info, make_settings, play_call, voice
from tests.servers import serve_app, until

REPO = Path(__file__).resolve().parents[3]


async def test_finished_call_is_indexed_with_its_files(tmp_path):
    settings = make_settings(tmp_path)
    clock = FakeClock()
    metrics = Metrics(CollectorRegistry())
    archive = CallArchive(settings, metrics, clock=clock)
    async with archive.running():
        info = call_info(1, model="gpt-realtime-mini", voice="cedar", retention_days=7)
        caller, agent = voice(RATE * 2, 1), voice(RATE * 2, 2)
        play_call(archive, clock, info, caller, agent, outcome="caller_hangup",
                  transcript=[("caller", "I need help", 1.0), ("agent", "Sure, how can I help?", 1.6)])
        await asyncio.wait_for(archive.wait_idle(), 10)
        record = await archive.get(info.call_id)
        assert record is not None
        assert record.status is CallStatus.COMPLETE and record.outcome == "caller_hangup"
        assert (record.model, record.voice, record.barge_ins) == ("gpt-realtime-mini", "cedar", 1)
        assert record.transcript_entries == 2 and record.recorded
        assert record.expires_at == pytest.approx(info.started_at + 7 * 86400)
        assert record.path == f"acme/2025/06/15/{info.call_id}"
        wav_path = settings.recording.directory / f"{record.path}.wav"
        with wave.open(str(wav_path)) as w:
            frames = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
        np.testing.assert_array_equal(frames[: len(caller), 0], caller)
        np.testing.assert_array_equal(frames[: len(agent), 1], agent)
        entries = await archive.transcript(record)
        assert [(e["role"], e["text"]) for e in entries] == [("caller", "I need help"),
                                                            ("agent", "Sure, how can I help?")]
        assert (await archive.peaks(record))["frames"] == len(frames)
        assert not (settings.recording.directory / ".unfinished" / info.call_id).exists()
        # A tenant with recording off still gets a findable call, without audio or words.
        quiet = call_info(2, recording=False)
        play_call(archive, clock, quiet, voice(RATE, 3), voice(RATE, 4), transcript=[("caller", "x", 0.5)])
        await asyncio.wait_for(archive.wait_idle(), 10)
        quiet_record = await archive.get(quiet.call_id)
        assert quiet_record is not None and not quiet_record.recorded
        assert await archive.transcript(quiet_record) == []
        page = await archive.search(CallQuery(tenant="acme"))
        assert page.total == 2
    assert metrics.registry.get_sample_value("callbridge_recordings_total", {"result": "written"}) == 1


async def _recording_process(root: Path, call_id: str, frames: int) -> tuple[asyncio.subprocess.Process, int]:
    """Another process recording a call in ``root``, once it has handed over ``frames`` frames."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.peers.killed_recorder", str(root), call_id,
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    fed = 0
    try:
        while fed < frames:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line, "recorder process died"
            fed = int(line)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc, fed


async def _killed_call(root: Path, call_id: str, frames_before_kill: int) -> int:
    proc, fed = await _recording_process(root, call_id, frames_before_kill)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    return fed


async def test_recovery_repairs_and_marks_interrupted(tmp_path):
    settings = make_settings(tmp_path)
    root = settings.recording.directory
    call_id = "dead0000-0000-4000-8000-00000000beef"
    fed = await _killed_call(root, call_id, 100)
    metrics = Metrics(CollectorRegistry())
    archive = CallArchive(settings, metrics)
    async with archive.running():
        assert [r.call_id for r in archive.recovered] == [call_id]
        record = await archive.get(call_id)
        assert record is not None and record.status is CallStatus.INTERRUPTED
        assert record.recorded and record.sample_rate == RATE
        assert fed * 0.02 - record.recording_seconds < 1.0
        assert record.ended_at is not None and record.ended_at >= record.started_at
        assert record.transcript_entries == 1
        wav_path = root / f"{record.path}.wav"
        with wave.open(str(wav_path)) as w:
            frames = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
        assert len(frames) == round(record.recording_seconds * RATE)
        np.testing.assert_array_equal(frames[:, 0], ramp(len(frames)))
        assert (await archive.peaks(record)) is not None
        assert not (root / ".unfinished" / call_id).exists()
        meta = json.loads((root / f"{record.path}.json").read_text())
        assert meta["status"] == "interrupted"
    assert metrics.registry.get_sample_value("callbridge_recordings_total", {"result": "repaired"}) == 1
    # A second start finds nothing left to do.
    again = CallArchive(settings, Metrics(CollectorRegistry()))
    async with again.running():
        assert again.recovered == []
        assert (await again.get(call_id)).status is CallStatus.INTERRUPTED


async def test_recovery_cuts_a_torn_transcript_and_reindexes_finished_calls(tmp_path):
    settings = make_settings(tmp_path)
    root = settings.recording.directory
    clock = FakeClock()
    archive = CallArchive(settings, Metrics(CollectorRegistry()), clock=clock)
    async with archive.running():
        info = call_info(5)
        play_call(archive, clock, info, voice(RATE, 1), voice(RATE, 2), transcript=[("caller", "one", 0.1)])
        await asyncio.wait_for(archive.wait_idle(), 10)
        record = await archive.get(info.call_id)
    # As if the daemon had died after writing the final metadata but before indexing it, and
    # another call died mid-sentence.
    (root / "calls.sqlite3").unlink()
    for extra in ("-wal", "-shm"):
        (root / f"calls.sqlite3{extra}").unlink(missing_ok=True)
    (root / ".unfinished" / info.call_id).write_text(json.dumps(record.to_json()))
    torn = root / f"{record.path}.jsonl"
    torn.write_bytes(torn.read_bytes() + b'{"role":"agent","text":"cut in the mid')
    again = CallArchive(settings, Metrics(CollectorRegistry()))
    async with again.running():
        got = await again.get(info.call_id)
        assert got is not None and got.status is CallStatus.COMPLETE
        assert [e["text"] for e in await again.transcript(got)] == ["one"]


async def test_webhook_is_signed_and_retried(tmp_path):
    received: list[tuple[dict[str, str], bytes]] = []
    answers = [503, 200]

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=answers.pop(0) if answers else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with serve_app(app) as port:
        settings = make_settings(tmp_path, ops={"public_url": "https://ops.example.net"})
        clock = FakeClock()
        metrics = Metrics(CollectorRegistry())
        archive = CallArchive(settings, metrics, clock=clock)
        async with archive.running():
            info = call_info(7, webhook_url=f"http://127.0.0.1:{port}/hook", webhook_secret="s3cret")
            play_call(archive, clock, info, voice(RATE, 1), voice(RATE, 2), outcome="transferred",
                      transcript=[("caller", "sales please", 0.4)])
            await asyncio.wait_for(archive.wait_idle(), 10)
            for _ in range(200):
                if archive.webhooks.delivered:
                    break
                await asyncio.sleep(0.02)
    assert len(received) == 2  # 503, then the retry
    assert archive.webhooks.delivered == 1
    headers, body = received[1]
    assert headers["X-Callbridge-Delivery"] == received[0][0]["X-Callbridge-Delivery"]
    stamp, signature = int(headers["X-Callbridge-Timestamp"]), headers["X-Callbridge-Signature"]
    assert verify("s3cret", stamp, body, signature)
    assert not verify("other", stamp, body, signature)
    assert not verify("s3cret", stamp + 1, body, signature)
    payload = json.loads(body)
    assert payload["event"] == "call.completed"
    assert payload["call"]["call_id"] == info.call_id and payload["call"]["outcome"] == "transferred"
    assert payload["transcript"][0]["text"] == "sales please"
    assert payload["recording_url"] == f"https://ops.example.net/api/calls/{info.call_id}/recording"
    assert metrics.registry.get_sample_value("callbridge_webhooks_total", {"result": "delivered"}) == 1


async def test_retention_purges_files_and_rows(tmp_path):
    settings = make_settings(tmp_path, recording={"retention_days": 30})
    root = settings.recording.directory
    clock = FakeClock()
    archive = CallArchive(settings, Metrics(CollectorRegistry()), clock=clock)
    async with archive.running():
        old = call_info(1, retention_days=1)
        kept = call_info(2)  # the deployment default: 30 days
        forever = call_info(3, retention_days=0)
        for info in (old, kept, forever):
            play_call(archive, clock, info, voice(RATE, 1), voice(RATE, 2))
        await asyncio.wait_for(archive.wait_idle(), 10)
        old_record = await archive.get(old.call_id)
        assert (root / f"{old_record.path}.wav").exists()
        removed = await archive.purge_expired(now=old.started_at + 2 * 86400)
        assert removed == 1
        assert await archive.get(old.call_id) is None
        assert not any(root.rglob(f"{old.call_id}*"))
        assert await archive.get(kept.call_id) is not None
        assert await archive.purge_expired(now=old.started_at + 31 * 86400) == 1
        assert await archive.get(forever.call_id) is not None


async def test_shutdown_finishes_calls_still_open(tmp_path):
    settings = make_settings(tmp_path)
    clock = FakeClock()
    archive = CallArchive(settings, Metrics(CollectorRegistry()), clock=clock)
    async with archive.running():
        info = call_info(9)
        tap = archive.open_tap(info)
        for _ in range(50):
            clock.now += 0.02
            tap.caller_audio(voice(FRAME, 1), RATE)
            tap.agent_audio(np.zeros(FRAME, np.int16), RATE)
    again = CallArchive(settings, Metrics(CollectorRegistry()))
    async with again.running():
        record = await again.get(info.call_id)
        assert again.recovered == []
        assert record.status is CallStatus.COMPLETE and record.outcome == "shutdown"
        assert record.recording_seconds == pytest.approx(1.0, abs=0.05)


async def test_calls_are_indexed_in_postgres_when_tenants_live_there(tmp_path):
    import asyncpg

    from bridge.records.callstore import PostgresCallIndex
    from tests.bridge.records.test_callstore import _pg_cluster, _pg_database, _pg_drop

    cluster = _pg_cluster()
    cluster.start()
    name, dsn = await _pg_database(cluster)
    try:
        settings = make_settings(tmp_path, tenants={"backend": "postgres", "database_url": dsn})
        clock = FakeClock()
        archive = CallArchive(settings, Metrics(CollectorRegistry()), clock=clock)
        assert isinstance(archive.index, PostgresCallIndex)
        async with archive.running():
            info = call_info(31)
            play_call(archive, clock, info, voice(RATE, 1), voice(RATE, 2), outcome="model_error")
            await asyncio.wait_for(archive.wait_idle(), 10)
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow("SELECT tenant, outcome, status, record->>'caller_id' AS caller"
                                      " FROM callbridge_calls WHERE call_id = $1", info.call_id)
        finally:
            await conn.close()
        assert dict(row) == {"tenant": "acme", "outcome": "model_error", "status": "complete",
                             "caller": info.caller_id}
        assert not any((settings.recording.directory).glob("*.sqlite3"))
    finally:
        await _pg_drop(cluster, name)


async def test_a_call_recorded_by_another_live_process_is_left_alone(tmp_path):
    """Two daemons on one recordings directory (a rolling restart): the one starting must not
    take the other's calls in progress for interrupted ones."""
    settings = make_settings(tmp_path)
    root = settings.recording.directory
    call_id = "1ive0000-0000-4000-8000-000000000001"
    proc, _ = await _recording_process(root, call_id, 25)
    try:
        archive = CallArchive(settings, Metrics(CollectorRegistry()))
        async with archive.running():
            assert archive.recovered == []
            assert (root / ".unfinished" / call_id).exists()
            assert await archive.get(call_id) is None
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    again = CallArchive(settings, Metrics(CollectorRegistry()))
    async with again.running():
        assert [r.call_id for r in again.recovered] == [call_id]


async def test_recovered_call_ends_with_its_audio_and_sends_its_webhook(tmp_path):
    """A call the daemon died during: its duration is its audio's, not the time until the restart,
    and its tenant hears of it (``call.completed``, status ``interrupted``)."""
    from tenants.file import FileDirectory

    received: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with serve_app(app) as port:
        tenants_file = tmp_path / "tenants.yaml"
        tenants_file.write_text(
            "tenants:\n  - slug: acme\n    tenant_id: t-acme\n    numbers: ['+5511999990001']\n"
            f"    webhook_url: http://127.0.0.1:{port}/hook\n    webhook_secret: s3cret\n")
        settings = make_settings(tmp_path)
        call_id = "dead0000-0000-4000-8000-00000000cafe"
        fed = await _killed_call(settings.recording.directory, call_id, 100)
        await asyncio.sleep(1.0)  # the restart comes a while after the crash
        directory = await FileDirectory.open(tenants_file)
        archive = CallArchive(settings, Metrics(CollectorRegistry()), tenants=directory)
        async with archive.running():
            record = await archive.get(call_id)
            assert record is not None and record.status is CallStatus.INTERRUPTED
            assert record.duration == pytest.approx(record.recording_seconds, abs=0.05)
            assert abs(record.duration - fed * 0.02) < 1.0
            await until(lambda: bool(received))
    assert len(received) == 1
    payload = json.loads(received[0])
    assert payload["event"] == "call.completed"
    assert payload["call"]["call_id"] == call_id and payload["call"]["status"] == "interrupted"
    assert payload["call"]["duration"] == pytest.approx(record.duration, abs=0.01)
    assert [e["text"] for e in payload["transcript"]] == ["hello"]


async def test_refused_calls_are_kept_briefly_and_a_flood_is_counted(tmp_path):
    from bridge.core.switchboard import Refusal, RefusedCall
    from bridge.records.archive import MAX_REFUSAL_WRITES

    settings = make_settings(tmp_path, recording={"retention_days": 90})
    metrics = Metrics(CollectorRegistry())
    archive = CallArchive(settings, metrics)
    async with archive.running():
        at = 1_750_000_000.0
        archive.record_refusal(RefusedCall("twilio", Refusal.UNKNOWN_NUMBER, "+5511999990001", "", None, at))
        await until(lambda: archive._refusal_writes == 0)
        page = await archive.search(CallQuery())
        assert page.total == 1
        assert page.calls[0].expires_at == pytest.approx(at + 7 * 86400)
        # More refusals at once than the index takes: the rest are counted, not queued.
        for _ in range(MAX_REFUSAL_WRITES + 50):
            archive.record_refusal(RefusedCall("twilio", Refusal.CAPACITY, "+5511999990001", "", None, at))
        await until(lambda: archive._refusal_writes == 0)
    assert metrics.registry.get_sample_value("callbridge_refusals_not_indexed_total") == 50
