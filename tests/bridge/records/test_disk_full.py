"""A disk that fills up during a call: the caller is not affected, the recording is marked failed
(logged and counted), and the call's outcome reaches the index once there is room again, without a
restart.

The full disk is the kernel's: ``RLIMIT_FSIZE`` makes every write past the limit fail (``EFBIG``,
with ``SIGXFSZ`` ignored) in this process, for the WAV, the transcript and SQLite's WAL alike."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
from collections.abc import Iterator

from prometheus_client import CollectorRegistry

from bridge.ops.metrics import Metrics
from bridge.records.archive import CallArchive
from bridge.records.callstore import CallStatus
from tests.peers.tap_call import RATE, FakeClock, call_info, make_settings, play_call, voice

LIMIT_BYTES = 2048  # the metadata files fit; audio and the index's WAL frames do not


@contextlib.contextmanager
def full_disk() -> Iterator[None]:
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)


async def test_call_on_a_full_disk_keeps_its_outcome(tmp_path, caplog):
    settings = make_settings(tmp_path)
    clock = FakeClock()
    metrics = Metrics(CollectorRegistry())
    archive = CallArchive(settings, metrics, clock=clock)
    archive.retry_interval = 0.2
    info = call_info(11)
    async with archive.running():
        # A first call makes the index file bigger than the limit, as any index in service is.
        play_call(archive, clock, call_info(10), voice(RATE, 1), voice(RATE, 2))
        await asyncio.wait_for(archive.wait_idle(), 10)
        with caplog.at_level(logging.ERROR), full_disk():
            play_call(archive, clock, info, voice(RATE * 3, 3), voice(RATE * 3, 4), outcome="caller_hangup",
                      transcript=[("caller", "hello", 0.5)])
            await asyncio.wait_for(archive.wait_idle(), 10)
            await asyncio.sleep(0.5)  # retries fail while the disk is full
            during = await archive.get(info.call_id)
        assert during is None or during.status is CallStatus.IN_PROGRESS
        assert "recording failed" in caplog.text and "index write failed" in caplog.text
        # Room again: the outcome lands without a restart.
        for _ in range(100):
            record = await archive.get(info.call_id)
            if record is not None and record.status is CallStatus.COMPLETE:
                break
            await asyncio.sleep(0.05)
        assert record is not None and record.status is CallStatus.COMPLETE
        assert record.outcome == "caller_hangup"
        assert not record.recorded and "too large" in record.extra["recording_error"].lower()
        assert not (settings.recording.directory / ".unfinished" / info.call_id).exists()
    assert metrics.registry.get_sample_value("callbridge_recordings_total", {"result": "failed"}) == 1
    assert metrics.registry.get_sample_value("callbridge_archive_write_errors_total", {"kind": "index"}) >= 1
    # A restart finds nothing to recover and the index still says how the call ended.
    again = CallArchive(settings, Metrics(CollectorRegistry()))
    async with again.running():
        assert again.recovered == []
        kept = await again.get(info.call_id)
        assert kept is not None and kept.outcome == "caller_hangup"
