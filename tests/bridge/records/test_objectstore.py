"""Recordings in S3-compatible storage, through boto3 against moto's S3 server on loopback."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp
import boto3
import pytest
from moto.server import ThreadedMotoServer
from prometheus_client import CollectorRegistry

from bridge.ops.metrics import Metrics
from bridge.records.archive import CallArchive
from tests.peers.tap_call import RATE, FakeClock, call_info, make_settings, play_call, voice

BUCKET = "callbridge-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server:
    """moto's S3 server in this process; stopping it makes the store unreachable."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._server: ThreadedMotoServer | None = None

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        client = self.client()
        existing = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
        if BUCKET not in existing:
            client.create_bucket(Bucket=BUCKET)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self):
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def s3():
    server = S3Server(free_port())
    yield server
    server.stop()


def s3_settings(tmp_path: Path, server: S3Server, **s3_extra):
    return make_settings(tmp_path, recording={
        "storage": "s3",
        "s3": {"bucket": BUCKET, "prefix": "rec/", "endpoint_url": server.url, "region": "us-east-1",
               "access_key_id": "testing", "secret_access_key": "testing", "addressing_style": "path",
               "retry_initial_seconds": 0.1, "retry_max_seconds": 0.3, "connect_timeout": 1.0,
               **s3_extra},
    })


async def eventually(predicate, seconds: float = 20.0) -> None:
    # Upload progress is observed from outside, as an operator would (gauges, counters).
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.05)


def pending(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("callbridge_uploads_pending") or 0.0


async def test_upload_after_call_and_presigned_range(tmp_path, s3):
    s3.start()
    settings = s3_settings(tmp_path, s3)
    root = settings.recording.directory
    clock = FakeClock()
    metrics = Metrics(CollectorRegistry())
    archive = CallArchive(settings, metrics, clock=clock)
    async with archive.running():
        info = call_info(11)
        play_call(archive, clock, info, voice(RATE * 2, 1), voice(RATE * 2, 2),
                  transcript=[("caller", "hello", 0.2)])
        await asyncio.wait_for(archive.wait_idle(), 10)
        local = await archive.get(info.call_id)
        local_wav = (root / f"{local.path}.wav").read_bytes()
        await eventually(lambda: archive.uploads.pending == 0)
        record = await archive.get(info.call_id)
        assert record.object_key == f"rec/{record.path}.wav"
        # The local WAV goes once uploaded; metadata, transcript and peaks stay for the ops page.
        assert not (root / f"{record.path}.wav").exists()
        assert (root / f"{record.path}.jsonl").exists()
        client = s3.client()
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET)["Contents"])
        assert keys == sorted(f"rec/{record.path}{s}" for s in (".wav", ".jsonl", ".peaks.json", ".json"))
        stored = client.get_object(Bucket=BUCKET, Key=record.object_key)
        assert stored["ContentType"] == "audio/wav"
        assert stored["Body"].read() == local_wav
        url = await archive.presigned_recording(record, seconds=60)
        assert url.startswith(s3.url) and "X-Amz-Signature" in url
        async with aiohttp.ClientSession() as http:
            async with http.get(url, headers={"Range": "bytes=44-1043"}) as resp:
                assert resp.status == 206
                assert await resp.read() == local_wav[44:1044]
        # Transcript and waveform are still served (locally kept).
        assert [e["text"] for e in await archive.transcript(record)] == ["hello"]
    assert metrics.registry.get_sample_value("callbridge_uploads_total", {"result": "ok"}) == 1
    assert pending(metrics) == 0


async def test_store_down_spools_and_retries_across_restart(tmp_path, s3):
    settings = s3_settings(tmp_path, s3)
    root = settings.recording.directory
    clock = FakeClock()
    metrics = Metrics(CollectorRegistry())
    archive = CallArchive(settings, metrics, clock=clock)
    async with archive.running():
        info = call_info(12)
        play_call(archive, clock, info, voice(RATE, 1), voice(RATE, 2))
        await asyncio.wait_for(archive.wait_idle(), 10)
        await eventually(lambda: archive.uploads.failures >= 2)
        assert pending(metrics) == 1
        record = await archive.get(info.call_id)
        assert record.object_key is None and (root / f"{record.path}.wav").exists()
        assert (root / ".uploads" / info.call_id).exists()
    assert metrics.registry.get_sample_value("callbridge_uploads_total", {"result": "failed"}) >= 2

    # The daemon restarts while the store is still down, then the store comes back.
    metrics2 = Metrics(CollectorRegistry())
    archive2 = CallArchive(settings, metrics2, clock=clock)
    async with archive2.running():
        assert archive2.uploads.pending == 1 and pending(metrics2) == 1
        await eventually(lambda: archive2.uploads.failures >= 1)
        await asyncio.to_thread(s3.start)
        await eventually(lambda: archive2.uploads.pending == 0)
        record = await archive2.get(info.call_id)
        assert record.object_key == f"rec/{record.path}.wav"
        assert not (root / ".uploads" / info.call_id).exists()
        obj = await asyncio.to_thread(s3.client().head_object, Bucket=BUCKET, Key=record.object_key)
        assert obj["ContentLength"] == record.recording_bytes
    assert pending(metrics2) == 0


async def test_keep_local_and_store_going_down_mid_run(tmp_path, s3):
    s3.start()
    settings = s3_settings(tmp_path, s3, keep_local=True)
    root = settings.recording.directory
    clock = FakeClock()
    archive = CallArchive(settings, Metrics(CollectorRegistry()), clock=clock)
    async with archive.running():
        first = call_info(21)
        play_call(archive, clock, first, voice(RATE, 1), voice(RATE, 2))
        await asyncio.wait_for(archive.wait_idle(), 10)
        await eventually(lambda: archive.uploads.pending == 0)
        await asyncio.to_thread(s3.stop)
        second = call_info(22)
        play_call(archive, clock, second, voice(RATE, 3), voice(RATE, 4))
        await asyncio.wait_for(archive.wait_idle(), 10)
        await eventually(lambda: archive.uploads.failures >= 1)
        assert archive.uploads.pending == 1
        await asyncio.to_thread(s3.start)
        await eventually(lambda: archive.uploads.pending == 0)
        for info in (first, second):
            record = await archive.get(info.call_id)
            assert record.object_key is not None
            assert (root / f"{record.path}.wav").exists()  # keep_local
