"""Recording benchmark: what a call's recorder costs the event loop, and how many concurrent calls
one writer thread keeps on disk in real time.

    python -m bench.recording                 # 200 calls x 30 s of audio
    python -m bench.recording --calls 50 --seconds 10

See bench/recording/README.md for what is measured and the latest results.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bridge.core.call import CallInfo
from bridge.records.callstore import CallRecord
from bridge.records.layout import ArchiveLayout
from bridge.records.recorder import CallRecorder
from tenants.config import TenantConfig

RATE_HZ = 8000
FRAME = RATE_HZ // 50  # 20 ms
FLUSH_SECONDS = 0.2  # the default recording.flush_interval


class SteppedClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_recorder(root: Path, n: int, clock: SteppedClock) -> CallRecorder:
    tenant = TenantConfig(tenant_id="t-bench", slug="bench")
    call_id = f"00000000-0000-4000-8000-{n:012d}"
    info = CallInfo("audiosocket", tenant, "+5511999990001", "5511988887777", call_id=call_id,
                    started_at=1_750_000_000.0)
    layout = ArchiveLayout(root)
    record = CallRecord(call_id, "bench", "t-bench", "audiosocket", info.dialled, info.caller_id,
                        info.started_at, path=layout.stem_for("bench", call_id, info.started_at))
    return CallRecorder(info, record, layout, record_audio=True, clock=clock)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.recording")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    speech = (rng.standard_normal(FRAME * 50) * 3000).astype(np.int16)
    frames = [speech[i:i + FRAME] for i in range(0, len(speech), FRAME)]
    root = Path(tempfile.mkdtemp(prefix="callbridge-bench-"))
    try:
        clock = SteppedClock()
        recorders = [make_recorder(root, n, clock) for n in range(args.calls)]
        for rec in recorders:
            rec.begin()
        ticks = int(args.seconds * 50)
        per_pass = int(FLUSH_SECONDS * 50)
        loop_seconds = 0.0
        writer_cpu = 0.0
        for tick in range(ticks):
            clock.now = (tick + 1) * 0.020
            frame = frames[tick % len(frames)]
            started = time.perf_counter()
            for rec in recorders:  # what the event loop does: one frame each way per call
                rec.caller_audio(frame, RATE_HZ)
                rec.agent_audio(frame, RATE_HZ)
            loop_seconds += time.perf_counter() - started
            if (tick + 1) % per_pass == 0:  # one writer pass every flush interval
                cpu = time.thread_time()
                for rec in recorders:
                    rec.service(clock.now + 0.1)
                writer_cpu += time.thread_time() - cpu
        cpu = time.thread_time()
        for rec in recorders:
            rec.end("normal")
            rec.finish(clock.now)
        finish_cpu = time.thread_time() - cpu
        wav_bytes = sum(p.stat().st_size for p in root.rglob("*.wav"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    call_seconds = args.calls * args.seconds
    per_frame_us = loop_seconds / (ticks * args.calls * 2) * 1e6
    writer_share = writer_cpu / call_seconds
    print(f"{args.calls} calls x {args.seconds:.0f} s, {wav_bytes / 1e6:.1f} MB of WAV")
    print(f"event loop: {per_frame_us:.2f} us per 20 ms frame handed to the recorder "
          f"({per_frame_us * 100 / 1e6 * 100:.4f} % of one core per call)")
    print(f"writer thread: {writer_share * 1e3:.3f} ms CPU per call-second "
          f"-> one core keeps up with about {1 / writer_share:.0f} concurrent calls")
    print(f"end of call (final header, fsync, peaks, metadata): {finish_cpu / args.calls * 1e3:.2f} ms CPU per call")


if __name__ == "__main__":
    main()
