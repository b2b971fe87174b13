"""The archive's evaluation of finished calls, with the simulator's text model over loopback: a
webhook that cannot wait gets call.completed (pending) then call.evaluated; the evaluation file
goes to S3 (moto's server) with the recording; unanswered calls and tenants without evaluation are
left alone."""

from __future__ import annotations

import asyncio
import json

from openai import AsyncOpenAI
from prometheus_client import CollectorRegistry

from bridge.ops.live import LiveEvents
from bridge.ops.metrics import Metrics
from bridge.records.archive import CallArchive
from bridge.records.evaluation import Evaluator
from bridge.simulator import SimulatorServer
from tests.bridge.records.test_objectstore import BUCKET, S3Server, s3, s3_settings  # noqa: F401
from tests.peers.observers import WebhookReceiver
from tests.peers.tap_call import RATE, FakeClock, call_info, make_settings, play_call, voice

EVALUATION = {"enabled": True, "criteria": [{"name": "greeting"}]}
TRANSCRIPT = [("agent", "Hello", 0.2), ("caller", "Hi, bye", 0.8), ("agent", "Goodbye", 1.2)]


def evaluator(server: SimulatorServer, settings) -> Evaluator:
    url = server.text_base_url
    return Evaluator(settings.evaluation, lambda: AsyncOpenAI(api_key="t", base_url=url, max_retries=0))


async def test_late_evaluation_goes_out_as_call_evaluated(tmp_path):
    hooks = WebhookReceiver("whsec")
    await hooks.start()
    settings = make_settings(tmp_path, evaluation={"webhook_wait": 0.2})
    live = LiveEvents()
    watcher = live.subscribe("acme")
    async with SimulatorServer() as server:
        ev = evaluator(server, settings)
        archive = CallArchive(settings, Metrics(CollectorRegistry()), clock=FakeClock(), evaluator=ev, live=live)
        async with archive.running():
            slow = call_info(1, webhook_url=hooks.url, webhook_secret="whsec",
                             evaluation={**EVALUATION, "model": "simulator-slow-1"})
            play_call(archive, archive.clock, slow, voice(RATE * 2, 1), voice(RATE * 2, 2),
                      outcome="agent_hangup", transcript=TRANSCRIPT)
            unanswered = call_info(2, evaluation=EVALUATION)
            tap = archive.open_tap(unanswered)
            assert tap is not None
            tap.event("ended", outcome="model_error")  # never answered: nothing to evaluate
            plain = call_info(3)
            play_call(archive, archive.clock, plain, voice(RATE, 3), voice(RATE, 4), transcript=TRANSCRIPT)
            await asyncio.wait_for(archive.wait_idle(), 10)
            completed = await hooks.wait_for("call.completed")
            assert completed.payload["evaluation"] == {"status": "pending"}
            pending = await archive.get(slow.call_id)
            assert pending is not None and pending.evaluation_status == "pending"
            evaluated = await hooks.wait_for("call.evaluated", timeout=10)
            assert evaluated.payload["event"] == "call.evaluated"
            assert evaluated.payload["evaluation"]["status"] == "complete"
            score = evaluated.payload["evaluation"]["overall_score"]
            assert evaluated.payload["call"]["evaluation"] == {"status": "complete", "overall_score": score,
                                                              "error": None}
            await archive.wait_evaluations()
            done = await archive.get(slow.call_id)
            assert done is not None and done.overall_score == score
            for other in (unanswered, plain):
                record = await archive.get(other.call_id)
                assert record is not None and record.evaluation_status is None
                assert await archive.evaluation(record) is None
            assert len(server.text_model.requests) == 1
        await ev.close()
    events = []
    while True:
        try:
            events.append(await asyncio.wait_for(watcher.get(), 0.2))
        except TimeoutError:
            break
    assert [e["type"] for e in events if e.get("call_id") == slow.call_id] == ["evaluation"]
    await hooks.close()


async def test_evaluation_is_uploaded_with_the_recording(tmp_path, s3):  # noqa: F811
    s3.start()
    # moto keeps one bucket state per process: a prefix of its own, removed at the end, keeps this
    # test's objects out of the other S3 tests' listings.
    settings = s3_settings(tmp_path, s3, prefix="evaluated/")
    async with SimulatorServer() as server:
        ev = evaluator(server, settings)
        archive = CallArchive(settings, Metrics(CollectorRegistry()), clock=FakeClock(), evaluator=ev)
        async with archive.running():
            info = call_info(5, evaluation=EVALUATION)
            play_call(archive, archive.clock, info, voice(RATE, 5), voice(RATE, 6), outcome="agent_hangup",
                      transcript=TRANSCRIPT)
            await asyncio.wait_for(archive.wait_idle(), 10)
            await archive.wait_evaluations()
            async with asyncio.timeout(10):
                while archive.uploads is not None and archive.uploads.pending:
                    await asyncio.sleep(0.05)
            record = await archive.get(info.call_id)
            assert record is not None and record.object_key and record.evaluation_status == "complete"
            # The local WAV is gone (keep_local false); the evaluation is still served.
            assert await archive.local_file(record, ".wav") is None
            shown = await archive.evaluation(record)
            assert shown is not None and shown["overall_score"] == record.overall_score
            keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET)["Contents"]}
            assert f"evaluated/{record.path}.evaluation.json" in keys and f"evaluated/{record.path}.wav" in keys
            stored = json.loads(s3.client().get_object(Bucket=BUCKET, Key=f"evaluated/{record.path}.evaluation.json")
                                ["Body"].read())
            assert stored["overall_score"] == record.overall_score
            meta = json.loads(s3.client().get_object(Bucket=BUCKET, Key=f"evaluated/{record.path}.json")["Body"].read())
            assert meta["evaluation_status"] == "complete"
            mine = [{"Key": k} for k in keys if k.startswith("evaluated/")]
            s3.client().delete_objects(Bucket=BUCKET, Delete={"Objects": mine})
        await ev.close()


async def test_an_evaluation_cut_short_by_shutdown_is_recorded_as_failed(tmp_path):
    settings = make_settings(tmp_path)
    async with SimulatorServer() as server:
        ev = evaluator(server, settings)
        archive = CallArchive(settings, Metrics(CollectorRegistry()), clock=FakeClock(), evaluator=ev)
        info = call_info(8, evaluation={**EVALUATION, "model": "simulator-slow-4"})
        async with archive.running():
            play_call(archive, archive.clock, info, voice(RATE, 8), voice(RATE, 9), transcript=TRANSCRIPT)
            await asyncio.wait_for(archive.wait_idle(), 10)
            async with asyncio.timeout(5):
                while not server.text_model.requests:
                    await asyncio.sleep(0.02)
        await ev.close()
        # Read back from what the archive left: the index (reopened) and the files.
        archive = CallArchive(settings, Metrics(CollectorRegistry()), clock=FakeClock())
        async with archive.running():
            record = await archive.get(info.call_id)
            assert record is not None and record.evaluation_status == "failed"
            assert record.evaluation_error == "the daemon stopped before the evaluation finished"
            shown = await archive.evaluation(record)
            assert shown is not None and shown["status"] == "failed"
