"""One load-generator process: an asyncio loop running its share of the simulated callers.

Callers start at absolute monotonic times chosen by the parent (CLOCK_MONOTONIC is system-wide, so
every worker shares the schedule). The worker also measures its own event-loop lag, so a report can
tell bridge lateness from load-generator lateness.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.load.audio import Utterance, load_utterances, noise_frames
from bench.load.callers import AudioSocketCaller, ScriptedCaller

LAG_PROBE_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class WorkerJob:
    worker: int
    transport: str
    indices: tuple[int, ...]
    starts: tuple[float, ...]  # monotonic start time per caller
    duration: float
    fixtures_dir: str
    agi_port: int
    http_port: int
    dialled: str
    seed: int
    uvloop: bool = False


def make_caller(job: WorkerJob, index: int, utterances: Any, noise: list[bytes]) -> ScriptedCaller:
    common: dict[str, Any] = dict(index=index, utterances=utterances, noise=noise, duration=job.duration,
                                  seed=job.seed * 100_003 + index)
    if job.transport == "audiosocket":
        return AudioSocketCaller(job.agi_port, job.dialled, **common)
    if job.transport == "webrtc":
        from bench.load.webrtc_callers import WebRtcCaller

        return WebRtcCaller(job.http_port, job.dialled, **common)
    from bench.load.ws_callers import make_ws_caller

    return make_ws_caller(job.transport, job.http_port, job.dialled, **common)


async def _probe_lag(samples: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        due = time.monotonic() + LAG_PROBE_SECONDS
        await asyncio.sleep(LAG_PROBE_SECONDS)
        samples.append(max(0.0, time.monotonic() - due))


async def _run(job: WorkerJob, utterances: list[Utterance], noise: list[bytes]) -> dict[str, Any]:
    if job.transport == "webrtc":
        # ICE on loopback only, as the daemon is configured for the benchmark.
        from bridge.webrtc.ice import HostAddresses

        HostAddresses(["127.0.0.1"]).install()
    lag: list[float] = []
    stop = asyncio.Event()
    probe = asyncio.create_task(_probe_lag(lag, stop))

    async def one(index: int, start: float) -> dict[str, Any]:
        delay = start - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        caller = make_caller(job, index, utterances, noise)
        result = await caller.run()
        return result.to_wire()

    results = await asyncio.gather(*(one(i, s) for i, s in zip(job.indices, job.starts, strict=True)))
    stop.set()
    await probe
    times = os.times()
    return {"worker": job.worker, "callers": results, "loop_lag": lag,
            "cpu_seconds": times.user + times.system}


def run_worker(job: WorkerJob, utterances: list[Utterance] | None = None,
               noise: list[bytes] | None = None) -> dict[str, Any]:
    """Run the job's callers to the end (in this process)."""
    if utterances is None:
        utterances = load_utterances(Path(job.fixtures_dir))
    if noise is None:
        noise = noise_frames(50, seed=job.seed + job.worker)
    if job.uvloop:
        import uvloop

        return uvloop.run(_run(job, utterances, noise))  # type: ignore[no-any-return]
    return asyncio.run(_run(job, utterances, noise))


def worker_process(job: WorkerJob, ready: Any, go: Any, results: Any) -> None:
    """Child process body: get ready, report it, wait for the common start time, run, hand back
    the results."""
    utterances = load_utterances(Path(job.fixtures_dir))
    noise = noise_frames(50, seed=job.seed + job.worker)
    ready.put(os.getpid())
    start = go.get()
    job = replace(job, starts=tuple(start + offset for offset in job.starts))
    results.put(run_worker(job, utterances, noise))
