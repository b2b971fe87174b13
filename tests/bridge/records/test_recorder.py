from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from bridge.core.call import CallInfo, Outcome
from bridge.ops.metrics import Metrics
from bridge.records.callstore import CallRecord, CallStatus
from bridge.records.layout import ArchiveLayout, RecordingError
from bridge.records.recorder import CallRecorder
from bridge.records.writer import RecordingWriter
from media.wav import read_frames, repair
from tenants.config import TenantConfig
from tests.peers.killed_recorder import ramp

REPO = Path(__file__).resolve().parents[3]
RATE = 8000
FRAME = 160  # 20 ms at 8 kHz


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _info(call_id: str = "c0ffee00-0000-4000-8000-000000000001") -> CallInfo:
    return CallInfo("audiosocket", TenantConfig(tenant_id="t-acme", slug="acme"), "+5511999990001",
                    "5511988887777", call_id=call_id, started_at=1_750_000_000.0)


def _recorder(tmp_path: Path, clock, info: CallInfo | None = None, **kwargs) -> CallRecorder:
    info = info or _info()
    layout = ArchiveLayout(tmp_path)
    stem = layout.stem_for(info.tenant.slug, info.call_id, info.started_at)
    record = CallRecord(info.call_id, "acme", "t-acme", info.transport, info.dialled, info.caller_id,
                        info.started_at, path=stem)
    kwargs.setdefault("record_audio", True)
    return CallRecorder(info, record, layout, clock=clock, **kwargs)


def _voice(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * 4000).clip(-32768, 32767).astype(np.int16)


def _read(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 2 and w.getframerate() == RATE and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)


def test_tracks_share_one_timeline(tmp_path):
    """Caller audio from t=0, the agent's first frame played at 0.5 s: both land where they
    happened, with silence on the agent side before it spoke."""
    clock = FakeClock()
    rec = _recorder(tmp_path, clock)
    rec.begin()
    caller = _voice(RATE * 2, 1)
    agent = _voice(RATE, 2)
    t0 = clock.now
    for k in range(len(caller) // FRAME):
        clock.now = t0 + (k + 1) * 0.020  # received at the end of its 20 ms
        rec.caller_audio(caller[k * FRAME:(k + 1) * FRAME], RATE)
        tick = (k + 1) - 25  # the pacer starts 0.5 s in, one frame per tick
        if 0 <= tick < len(agent) // FRAME:
            clock.now = t0 + 0.5 + tick * 0.020
            rec.agent_audio(agent[tick * FRAME:(tick + 1) * FRAME], RATE)
        elif tick >= len(agent) // FRAME:
            rec.agent_audio(np.zeros(FRAME, dtype=np.int16), RATE)
        if k % 10 == 0:
            rec.service(clock.now)
    rec.transcript("caller", " hello there ", 1_750_000_001.25)
    rec.transcript("agent", "", 1_750_000_001.5)  # empty utterances are not kept
    rec.end("caller_hangup")
    final = rec.finish(clock.now)

    paths = rec.paths()
    frames = _read(paths[".wav"])
    np.testing.assert_array_equal(frames[: len(caller), 0], caller)
    np.testing.assert_array_equal(frames[:4000, 1], 0)
    np.testing.assert_array_equal(frames[4000:4000 + len(agent), 1], agent)
    assert final.status is CallStatus.COMPLETE and final.outcome == "caller_hangup"
    assert final.recorded and final.sample_rate == RATE
    assert final.recording_seconds == pytest.approx(len(frames) / RATE)
    assert final.recording_bytes == paths[".wav"].stat().st_size
    assert final.transcript_entries == 1
    lines = [json.loads(x) for x in paths[".jsonl"].read_text().splitlines()]
    assert lines == [{"role": "caller", "text": "hello there", "at": 1_750_000_001.25, "offset": 1.25}]
    meta = json.loads(paths[".json"].read_text())
    assert meta["status"] == "complete" and meta["outcome"] == "caller_hangup"
    peaks = json.loads(paths[".peaks.json"].read_text())
    assert peaks["rate"] == RATE and peaks["frames"] == len(frames)
    assert len(peaks["peaks"]) == 2 and len(peaks["peaks"][0]) == 1000
    # The agent lane is flat before 0.5 s and not after.
    assert peaks["peaks"][1][0] == [0, 0] and max(hi for _, hi in peaks["peaks"][1][300:600]) > 1000


def test_jittery_arrival_keeps_caller_audio_intact(tmp_path):
    """Frames arriving early, late and in bursts are written back to back: no holes in speech."""
    clock = FakeClock()
    rec = _recorder(tmp_path, clock)
    rec.begin()
    caller = _voice(RATE * 3, 3)
    rng = np.random.default_rng(7)
    t0 = clock.now
    k = 0
    n = len(caller) // FRAME
    while k < n:
        burst = 1 if rng.random() < 0.8 else int(rng.integers(2, 5))  # up to 80 ms arrive at once
        clock.now = t0 + (k + burst) * 0.020 + float(rng.uniform(-0.03, 0.03))
        for _ in range(burst):
            if k < n:
                rec.caller_audio(caller[k * FRAME:(k + 1) * FRAME], RATE)
                rec.agent_audio(np.zeros(FRAME, dtype=np.int16), RATE)
                k += 1
        rec.service(clock.now)
    rec.end("normal")
    rec.finish(clock.now)
    frames = _read(rec.paths()[".wav"])
    start = int(np.flatnonzero(frames[:, 0])[0])
    assert start < 0.06 * RATE
    np.testing.assert_array_equal(frames[start:start + len(caller), 0], caller)


def test_recording_off_keeps_metadata_only(tmp_path):
    clock = FakeClock()
    rec = _recorder(tmp_path, clock, record_audio=False)
    rec.begin()
    rec.caller_audio(_voice(FRAME, 1), RATE)
    rec.transcript("caller", "private", 1_750_000_001.0)
    rec.end("normal")
    final = rec.finish(clock.now)
    paths = rec.paths()
    assert not paths[".wav"].exists() and not paths[".jsonl"].exists()
    assert paths[".json"].exists() and final.recorded is False and final.transcript_entries == 0


def test_backlog_is_bounded_and_counted(tmp_path):
    metrics = Metrics(CollectorRegistry())
    clock = FakeClock()
    rec = _recorder(tmp_path, clock, max_backlog_seconds=0.5, metrics=metrics)
    for k in range(200):
        clock.now += 0.02
        rec.caller_audio(np.full(FRAME, k, dtype=np.int16), RATE)
    assert len(rec._chunks) == 50 and rec.dropped_chunks == 150
    assert metrics.registry.get_sample_value(
        "callbridge_frames_dropped_total", {"direction": "recording", "reason": "writer_backlog"}) == 150
    # What is kept is the newest audio, at its own place on the timeline.
    rec.begin()
    rec.end("normal")
    rec.finish(clock.now)
    frames = _read(rec.paths()[".wav"])
    assert frames[-1, 0] == 199 and (frames[: 150 * FRAME, 0] == 0).all()


def test_unwritable_root_fails_the_recording_not_the_call(tmp_path):
    metrics = Metrics(CollectorRegistry())
    blocker = tmp_path / "root"
    blocker.write_text("a file where the recordings directory should be")
    clock = FakeClock()
    rec = _recorder(blocker, clock, metrics=metrics)
    writer = RecordingWriter(flush_interval=0.01, clock=clock, metrics=metrics)
    done = threading.Event()
    results: list[CallRecord] = []
    writer.on_finished = lambda _r, record: (results.append(record), done.set())
    writer.start()
    try:
        writer.attach(rec)
        rec.caller_audio(_voice(FRAME, 1), RATE)
        rec.end("normal")
        writer.wake()
        assert done.wait(5)
    finally:
        writer.stop(5)
    assert rec.failed and results[0].recorded is False
    assert metrics.registry.get_sample_value("callbridge_recordings_total", {"result": "failed"}) >= 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priority is Linux's")
def test_the_writer_thread_alone_runs_at_the_lowest_priority():
    from bridge.records.writer import WRITER_NICE

    process_nice = os.getpriority(os.PRIO_PROCESS, 0)
    writer = RecordingWriter(flush_interval=0.01, clock=time.monotonic)
    writer.start()
    try:
        thread = writer._thread
        assert thread is not None and thread.native_id is not None
        deadline = time.monotonic() + 5
        while os.getpriority(os.PRIO_PROCESS, thread.native_id) != WRITER_NICE and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == WRITER_NICE
        # The rest of the process (the event loop's thread) keeps its own.
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == process_nice
        assert os.getpriority(os.PRIO_PROCESS, 0) == process_nice
    finally:
        writer.stop(5)


def test_call_ids_cannot_leave_the_root(tmp_path):
    layout = ArchiveLayout(tmp_path)
    with pytest.raises(RecordingError):
        layout.stem_for("acme", "../../etc/passwd", 0.0)
    with pytest.raises(RecordingError):
        layout.path("../../etc/passwd", ".wav")
    with pytest.raises(RecordingError):
        layout.path("acme/2025/01/01/x", ".sh")
    assert layout.path("acme/2025/01/01/x", ".wav") == tmp_path.resolve() / "acme/2025/01/01/x.wav"


def test_writer_thread_writes_as_the_call_goes(tmp_path):
    metrics = Metrics(CollectorRegistry())
    rec = _recorder(tmp_path, time.monotonic, metrics=metrics)
    finished = threading.Event()
    writer = RecordingWriter(flush_interval=0.05, clock=time.monotonic, metrics=metrics,
                             on_finished=lambda _r, _rec: finished.set())
    writer.start()
    try:
        writer.attach(rec)
        audio = _voice(RATE, 5)
        for k in range(len(audio) // FRAME):
            rec.caller_audio(audio[k * FRAME:(k + 1) * FRAME], RATE)
            rec.agent_audio(np.zeros(FRAME, dtype=np.int16), RATE)
            time.sleep(0.02)
        time.sleep(0.2)
        path = rec.paths()[".wav"]
        mid_call = _read(path)  # a valid file while the call is still going
        assert len(mid_call) >= RATE * 0.4
        meta = json.loads(rec.paths()[".json"].read_text())
        assert meta["status"] == "in_progress" and meta["sample_rate"] == RATE
        assert rec.layout.unfinished_marker(rec.record.call_id).exists()
        rec.end(Outcome.NORMAL.value)
        writer.wake()
        assert finished.wait(5)
    finally:
        writer.stop(5)
    assert writer.active == 0
    assert metrics.registry.get_sample_value("callbridge_recording_bytes_total") >= RATE * 4 * 0.9
    assert metrics.registry.get_sample_value("callbridge_recordings_total", {"result": "written"}) == 1


def test_sigkill_leaves_a_file_playable_to_within_a_second(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    call_id = "dead0000-0000-4000-8000-000000000001"
    proc = subprocess.Popen([sys.executable, "-m", "tests.peers.killed_recorder", str(tmp_path), call_id],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    fed = 0
    for line in proc.stdout:
        fed = int(line)
        if fed >= 125:  # 2.5 s of audio handed to the recorder
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    wav_path = next(tmp_path.rglob("*.wav"))
    # Even before repair the header describes all but the last header interval.
    with wave.open(str(wav_path)) as w:
        assert w.getnframes() >= (fed * 160) - 8000
    result = repair(wav_path)
    frames, fmt = read_frames(wav_path)
    assert fmt.channels == 2 and fmt.rate_hz == 8000
    lost_seconds = fed * 0.02 - result.info.duration_seconds
    assert lost_seconds < 1.0, lost_seconds
    expected = ramp(len(frames))
    np.testing.assert_array_equal(frames[:, 0], expected)
    np.testing.assert_array_equal(frames[:, 1], -expected)
    assert (tmp_path / ".unfinished" / call_id).exists()


def test_a_broken_recording_does_not_stop_the_others(tmp_path):
    metrics = Metrics(CollectorRegistry())
    clock = FakeClock()
    good = _recorder(tmp_path, clock, info=_info("aaaaaaaa-0000-4000-8000-000000000001"))
    bad = _recorder(tmp_path, clock, info=_info("bbbbbbbb-0000-4000-8000-000000000002"))
    finished: dict[str, CallRecord] = {}
    done = threading.Event()

    def on_finished(_rec, record):
        finished[record.call_id] = record
        if len(finished) == 2:
            done.set()

    writer = RecordingWriter(flush_interval=0.01, clock=clock, metrics=metrics, on_finished=on_finished)
    writer.start()
    try:
        writer.attach(good)
        writer.attach(bad)
        audio = _voice(RATE, 9)
        for k in range(len(audio) // FRAME):
            clock.now += 0.02
            good.caller_audio(audio[k * FRAME:(k + 1) * FRAME], RATE)
            good.agent_audio(np.zeros(FRAME, dtype=np.int16), RATE)
            # Not a mono frame: whatever handed this over is wrong, and only this call suffers.
            bad.caller_audio(np.zeros((FRAME, 2), dtype=np.int16), RATE)
            bad.agent_audio(np.zeros(FRAME, dtype=np.int16), RATE)
        time.sleep(0.1)
        good.end("normal")
        bad.end("normal")
        writer.wake()
        assert done.wait(5)
    finally:
        writer.stop(5)
    assert finished[good.record.call_id].recorded
    np.testing.assert_array_equal(_read(good.paths()[".wav"])[: len(audio), 0], audio)
    assert bad.failed and not finished[bad.record.call_id].recorded
