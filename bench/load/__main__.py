"""Load benchmark: callbridge under N concurrent real-time calls.

    python -m bench.load                      # AudioSocket and WebSocket, N = 10, 50, 100, 45 s calls
    python -m bench.load --quick              # 10 calls x 15 s, AudioSocket only
    python -m bench.load --calls 100 --transports audiosocket --loop asyncio
    python -m bench.load --search             # largest N that meets the delivery and latency targets
    python -m bench.load --calls 100 --transports sip   # the SIP trunk (PCMU over RTP)

Each run starts the realtime-protocol simulator and callbridge as separate processes (the daemon as
deployed: ``python -m bridge.cli serve`` configured by environment variables, recording, noise
suppression and metrics on), pins callbridge to one core and everything else (simulator, load
generator processes) to the other, places N calls and reads the figures described in
bench/README.md. Nothing here runs in the test suite.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import multiprocessing as mp
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.load import analysis as an
from bench.load.audio import FRAME_SECONDS, default_fixtures_dir
from bench.load.processes import (
    REPO_ROOT,
    BridgePorts,
    Process,
    bridge_environment,
    cpu_times,
    free_port,
    peak_rss,
    pin,
    sample,
    scrape_metrics,
    sip_environment,
    start_bridge,
    start_simulator,
)
from bench.load.worker import WorkerJob, worker_process

DIALLED = "+5511990000001"
CALLS_PER_WORKER = 25
MAX_WORKERS = 6
SAMPLE_PERIOD = 0.5
# The simulator and the load generator run on uvloop when it is installed: less CPU on their core.
HARNESS_UVLOOP = importlib.util.find_spec("uvloop") is not None
WS_TRANSPORTS = ("twilio", "ws_audio", "freeswitch", "webrtc")
OTHER_TRANSPORTS = ("audiosocket", "sip")

# The targets at 100 calls.
TARGET_CPU_PER_CALL_MINUTE = 0.5
TARGET_LATENCY_P95 = {"audiosocket": 0.060, "websocket": 0.040, "sip": 0.060}
TARGET_BARGE_IN_P95 = 0.060
TARGET_RSS_PER_CALL = 2 * 1024 * 1024

TENANTS_YAML = """\
version: 1
tenants:
  - slug: bench
    name: Load benchmark line
    numbers:
      - "{number}"
    greeting: Hello, this is the load benchmark line.
    instructions: Repeat what the caller says.
    noise_suppression: "{suppression}"
    recording: true
    max_concurrent_calls: 100000
"""


@dataclass(frozen=True, slots=True)
class RunConfig:
    transport: str
    calls: int
    duration: float
    loop: str  # callbridge's event loop: auto (its default), asyncio or uvloop
    pin: bool
    fixtures_dir: Path
    keep: bool
    out_dir: Path
    seed: int = 1
    profile: bool = False
    source: Path = REPO_ROOT
    recording: bool = True
    # The tenant's noise suppression. Speex, which the adaptive default runs on every steady-noise
    # line, so that every call pays the full suppression cost (the worst case for CPU).
    suppression: str = "speex"
    # The SIP trunk's sip.codecs (the callers offer PCMU only): with G722 listed PJSIP's bridge
    # runs at 16 kHz and resamples every narrowband call.
    sip_codecs: str = "PCMU"


def _ramp_seconds(calls: int) -> float:
    return min(10.0, 0.05 * calls)


def start_offsets(calls: int, ramp: float) -> list[float]:
    """When each call starts, relative to the first: spread over ``ramp`` seconds, and at phases
    spread evenly over the 20 ms frame period (golden-ratio steps). Calls from a real PBX send
    their frames at unrelated phases; calls started on a common grid would all send at the same
    instants and load the bridge in bursts no PBX produces."""
    golden = (5 ** 0.5 - 1) / 2
    out = []
    for i in range(calls):
        slot = math.floor(ramp * i / calls / FRAME_SECONDS) * FRAME_SECONDS
        out.append(slot + ((i * golden) % 1.0) * FRAME_SECONDS)
    return out


def run_once(cfg: RunConfig) -> dict[str, Any]:
    run_dir = cfg.out_dir / f"{cfg.transport}-{cfg.calls}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    two_cores = (os.cpu_count() or 1) >= 2 and cfg.pin
    harness_cpus = {0} if two_cores else None
    bridge_cpus = {1} if two_cores else None
    pin(os.getpid(), harness_cpus)

    tenants = run_dir / "tenants.yaml"
    tenants.write_text(TENANTS_YAML.format(number=DIALLED, suppression=cfg.suppression), encoding="utf-8")
    sim_port = free_port()
    events_log = run_dir / "simulator-events.jsonl"
    ports = BridgePorts(free_port(), free_port(), free_port())
    simulator = start_simulator(run_dir, sim_port, events_log, harness_cpus, uvloop=HARNESS_UVLOOP)
    bridge: Process | None = None
    workers: list[mp.Process] = []  # type: ignore[type-arg]
    try:
        env = bridge_environment(run_dir, ports, sim_port, tenants, max_calls=max(200, 2 * cfg.calls))
        if not cfg.recording:
            env["CALLBRIDGE_RECORDING__ENABLED"] = "false"
        sip_port = 0
        if cfg.transport == "sip":
            sip_port = free_port()
            env.update(sip_environment(sip_port, cfg.calls, cfg.sip_codecs.split(",")))
        bridge = start_bridge(run_dir, env, ports, bridge_cpus, cfg.loop, cfg.source)
        time.sleep(1.0)
        idle = sample(bridge.pid)

        ctx = mp.get_context("spawn")
        n_workers = max(1, min(MAX_WORKERS, math.ceil(cfg.calls / CALLS_PER_WORKER)))
        ramp = _ramp_seconds(cfg.calls)
        offsets = start_offsets(cfg.calls, ramp)
        ready, results = ctx.Queue(), ctx.Queue()
        gos = []
        for w in range(n_workers):
            indices = tuple(range(w, cfg.calls, n_workers))
            job = WorkerJob(w, cfg.transport, indices, tuple(offsets[i] for i in indices), cfg.duration,
                            str(cfg.fixtures_dir), ports.agi, ports.http, DIALLED, cfg.seed,
                            uvloop=HARNESS_UVLOOP, sip_port=sip_port)
            go = ctx.Queue()
            p = ctx.Process(target=worker_process, args=(job, ready, go, results), daemon=True)
            p.start()
            workers.append(p)
            gos.append(go)
        worker_pids = []
        while len(worker_pids) < len(workers):
            try:
                worker_pids.append(ready.get(timeout=1.0))
            except Exception:  # queue.Empty
                if not all(p.is_alive() for p in workers):
                    raise RuntimeError("a load generator process failed to start") from None
        t_base = time.monotonic() + 1.0
        for go in gos:
            go.put(t_base)
        steady = (t_base + ramp + 3.0, t_base + cfg.duration - 1.0)

        del worker_pids
        sim_cpu0 = _cpu(simulator.pid)
        steal0 = cpu_times()
        collected: list[dict[str, Any]] = []
        profilers: list[subprocess.Popen[bytes]] = []
        while len(collected) < len(workers):
            if cfg.profile and not profilers and time.monotonic() >= steady[0]:
                profilers = [_start_profiler(proc, steady[1] - steady[0], run_dir, harness_cpus)
                             for proc in (bridge, simulator)]
            bridge.sample()
            simulator.sample()
            try:
                collected.append(results.get(timeout=SAMPLE_PERIOD))
            except Exception:  # queue.Empty: keep sampling
                if not any(p.is_alive() for p in workers) and results.empty():
                    raise RuntimeError("a load generator process died") from None
        worker_cpu = sum(w["cpu_seconds"] for w in collected)
        sim_cpu = _cpu(simulator.pid) - sim_cpu0
        for profiler in profilers:
            profiler.wait(30)
        metrics_text = scrape_metrics(ports.http)
        bridge_peak = peak_rss(bridge.pid)
        wall = time.monotonic() - t_base
        steal1 = cpu_times()
    finally:
        for p in workers:
            p.join(5)
            if p.is_alive():
                p.kill()
        if bridge is not None:
            bridge.stop()
        simulator.stop()

    if cfg.keep:
        with open(run_dir / "callers.pickle", "wb") as f:
            pickle.dump({"collected": collected, "samples": bridge.samples, "idle": idle, "steady": steady,
                         "metrics": metrics_text, "peak": bridge_peak}, f)
    result = summarise(cfg, collected, events_log, bridge, idle, steady, metrics_text, bridge_peak)
    result["simulator_runqueue_wait_share"] = _wait_share(simulator, steady)
    result["harness_cpu_share"] = (worker_cpu + sim_cpu) / wall if wall > 0 else math.nan
    ticks = steal1[1] - steal0[1]
    result["host_steal_share"] = (steal1[0] - steal0[0]) / ticks if ticks > 0 else math.nan
    result["simulator_cpu_share"] = sim_cpu / wall if wall > 0 else math.nan
    result["bridge_log_errors"] = _log_errors(bridge.log_path)
    (run_dir / "result.json").write_text(json.dumps(result, indent=2, default=float), encoding="utf-8")
    if not cfg.keep:
        shutil.rmtree(run_dir / "recordings", ignore_errors=True)
    return result


@dataclass
class _KeptProcess:
    samples: list[Any]


def reanalyse(run_dir: Path) -> dict[str, Any]:
    """The figures of a run kept with ``--out``, recomputed from what its callers, the simulator
    and the daemon's metrics recorded (after a change to the analysis)."""
    before = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    with open(run_dir / "callers.pickle", "rb") as f:
        kept = pickle.load(f)
    cfg = RunConfig(before["transport"], before["calls"], before["duration"], before["event_loop"], True,
                    default_fixtures_dir(), True, run_dir.parent, recording=before["recording"],
                    suppression=before["suppression"])
    result = summarise(cfg, kept["collected"], run_dir / "simulator-events.jsonl",
                       _KeptProcess(kept["samples"]), kept["idle"], kept["steady"], kept["metrics"],
                       kept["peak"])
    for key in ("simulator_runqueue_wait_share", "harness_cpu_share", "simulator_cpu_share",
                "bridge_log_errors", "host_steal_share"):
        if key in before:
            result[key] = before[key]
    return result


def _start_profiler(
    proc: Process, seconds: float, run_dir: Path, cpus: set[int] | None
) -> subprocess.Popen[bytes]:
    """py-spy (when installed) samples a process over the steady window: collapsed stacks, one
    line per distinct stack with its sample count (flamegraph.pl / speedscope input)."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    cmd = [exe, "record", "--pid", str(proc.pid), "--duration", str(max(1, int(seconds))), "--rate", "200",
           "--format", "raw", "--output", str(run_dir / f"{proc.name}-profile.txt"), "--nonblocking"]
    with open(run_dir / f"py-spy-{proc.name}.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    pin(proc.pid, cpus)
    return proc


def _wait_share(proc: Process, window: tuple[float, float]) -> float:
    inside = [s for s in proc.samples if window[0] <= s.at <= window[1]]
    if len(inside) < 2:
        return math.nan
    return (inside[-1].wait_seconds - inside[0].wait_seconds) / (inside[-1].at - inside[0].at)


def _cpu(pid: int) -> float:
    try:
        return sample(pid).cpu_seconds
    except (OSError, ValueError, IndexError):
        return -1.0


def _log_errors(path: Path) -> int:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if " ERROR " in line or "Traceback" in line)


def summarise(cfg: RunConfig, collected: list[dict[str, Any]], events_log: Path, bridge: Process,
              idle: Any, steady: tuple[float, float], metrics_text: str, bridge_peak: int) -> dict[str, Any]:
    callers = [an.CallerView.from_wire(c) for w in collected for c in w["callers"]]
    callers.sort(key=lambda c: c.raw["index"])
    loop_lag = [x for w in collected for x in w["loop_lag"]]
    sessions = an.read_timing_log(events_log)
    paired = an.pair_sessions(callers, sessions)

    inbound: list[float] = []
    outbound: list[float] = []
    barge: list[float] = []
    gaps: list[float] = []
    harness_gaps: list[float] = []
    expected = delivered = short = cut = responses = missing_end = 0
    failed: dict[str, int] = {}

    def fail(reason: str) -> None:
        failed[reason] = failed.get(reason, 0) + 1

    for c in callers:
        raw = c.raw
        if not raw["ok"]:
            fail(raw["error"] or "error")
            continue
        if cfg.transport == "audiosocket" and raw["status"] != "DONE":
            fail(f"CALLBRIDGE_STATUS={raw['status']}")
            continue
        if raw["transport"] != "audiosocket" and raw["status"] not in (None, "normal"):
            fail(f"closed: {raw['status']}")
            continue
        session = paired.get(raw["index"])
        if session is None:
            fail("no model session matched its turns")
            continue
        fig = an.analyse_call(c, session)
        if fig.responses == 0:
            fail("heard no agent audio")
            continue
        inbound += fig.inbound
        outbound += fig.outbound
        barge += fig.barge_in
        gaps += fig.gaps
        harness_gaps += fig.harness_gaps
        expected += fig.expected_frames
        delivered += fig.delivered_frames
        short += fig.short_responses
        cut += fig.cut_by_hangup
        responses += fig.responses
        missing_end += fig.missing_speech_end

    # CPU and memory over the window where every call was up.
    window = [s for s in bridge.samples if steady[0] <= s.at <= steady[1]]
    cpu_per_call_minute = cpu_share = rss_steady = wait_share = cpu_per_frame = system_share = math.nan
    if len(window) >= 2:
        span = window[-1].at - window[0].at
        used = window[-1].cpu_seconds - window[0].cpu_seconds
        cpu_share = used / span
        wait_share = (window[-1].wait_seconds - window[0].wait_seconds) / span
        system_share = (window[-1].system_seconds - window[0].system_seconds) / used if used else math.nan
        cpu_per_call_minute = used / (cfg.calls * span / 60.0)
        rss_steady = max(s.rss_bytes for s in window)
        # Frames the bridge actually moved in the window, both ways: a starved bridge moves fewer,
        # so CPU per frame compares runs taken under different machine load.
        t0, t1 = window[0].at, window[-1].at
        moved = 0
        for c in callers:
            sent_at = c.raw["media_at"] + 0.020 * np.arange(len(c.lateness)) + c.lateness
            moved += int(np.count_nonzero((sent_at >= t0) & (sent_at < t1)))
            moved += int(np.count_nonzero((c.recv_t >= t0) & (c.recv_t < t1)))
        cpu_per_frame = used / (moved / 2) if moved else math.nan
    lateness = np.concatenate([c.lateness for c in callers]) if callers else np.zeros(0)
    pacer = an.histogram_summary(metrics_text, "callbridge_pacer_lateness_seconds")
    loop = an.histogram_summary(metrics_text, "callbridge_event_loop_lag_seconds")
    gc_pauses = an.histogram_summary(metrics_text, "callbridge_gc_pause_seconds")
    turns = sum(len(c.raw["onsets"]) for c in callers)
    return {
        "transport": cfg.transport,
        "calls": cfg.calls,
        "duration": cfg.duration,
        "event_loop": cfg.loop,
        "recording": cfg.recording,
        "suppression": cfg.suppression,
        "steady_seconds": (window[-1].at - window[0].at) if len(window) >= 2 else 0.0,
        "cpu_per_call_minute": cpu_per_call_minute,
        "bridge_cpu_share": cpu_share,
        "bridge_runqueue_wait_share": wait_share,
        "bridge_cpu_in_kernel_share": system_share,
        # CPU per 20 ms of call audio moved (one frame in and one out): 1/3000 of a call-minute.
        "cpu_us_per_frame_pair": 1e6 * cpu_per_frame,
        "rss_idle_mb": idle.rss_bytes / 2**20,
        "rss_steady_mb": rss_steady / 2**20,
        "rss_peak_mb": bridge_peak / 2**20,
        "rss_per_call_mb": (rss_steady - idle.rss_bytes) / cfg.calls / 2**20,
        "inbound": an.percentiles(inbound),
        "outbound": an.percentiles(outbound),
        "barge_in": an.percentiles(barge),
        "latency_samples": [len(inbound), len(outbound), len(barge)],
        "pacer_lateness_mean": pacer["mean"],
        "pacer_lateness_p99_le": pacer["p99_le"],
        "bridge_loop_lag_p99_le": loop["p99_le"],
        # Garbage collections over the whole run, all generations (bridge.core.heap).
        "gc_collections": gc_pauses["count"],
        "gc_pause_mean": gc_pauses["mean"],
        "gc_pause_p99_le": gc_pauses["p99_le"],
        "gaps_over_40ms": len(gaps),
        "harness_gaps_over_40ms": len(harness_gaps),
        "max_gap": max(gaps) if gaps else 0.0,
        "delivered_pct": 100.0 * delivered / expected if expected else math.nan,
        "short_responses": short,
        "cut_by_hangup": cut,
        "responses": responses,
        "turns": turns,
        "barge_in_turns": sum(sum(c.raw["barge_planned"]) for c in callers),
        "missing_speech_end": missing_end,
        "failed_calls": sum(failed.values()),
        "failures": failed,
        "underruns": an.counter_total(metrics_text, "callbridge_playout_underruns_total"),
        "frames_dropped": an.counter_by_label(metrics_text, "callbridge_frames_dropped_total", "reason"),
        "outcomes": an.counter_by_label(metrics_text, "callbridge_calls_total", "outcome"),
        "harness_lateness": an.percentiles(lateness, (50, 99, 100)),
        "harness_loop_lag_p99": an.percentiles(loop_lag, (99,))[0],
    }


def _ms(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{1000 * x:.0f}"


def _trio(values: list[float]) -> str:
    return "/".join(_ms(v) for v in values)


HEADER = (
    "| transport | N | CPU s per call-min | bridge CPU | RSS idle / peak MB | RSS per call MB "
    "| inbound p50/95/99 ms | outbound p50/95/99 ms | barge-in p50/95/99 ms | pacer lateness mean / p99 ms "
    "| gaps >40 ms (load gen's) | delivered % | failed | load gen lateness p99 / max ms | host steal |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def table_row(r: dict[str, Any]) -> str:
    return (
        f"| {r['transport']} | {r['calls']} | {r['cpu_per_call_minute']:.3f} "
        f"| {100 * r['bridge_cpu_share']:.0f} % "
        f"| {r['rss_idle_mb']:.0f} / {r['rss_peak_mb']:.0f} | {r['rss_per_call_mb']:.2f} "
        f"| {_trio(r['inbound'])} | {_trio(r['outbound'])} | {_trio(r['barge_in'])} "
        f"| {1000 * r['pacer_lateness_mean']:.2f} / {_ms(r['pacer_lateness_p99_le'])} "
        f"| {r['gaps_over_40ms']} ({r.get('harness_gaps_over_40ms', 0)}) | {r['delivered_pct']:.2f} "
        f"| {r['failed_calls']} "
        f"| {_ms(r['harness_lateness'][1])} / {_ms(r['harness_lateness'][2])} "
        f"| {100 * r.get('host_steal_share', math.nan):.0f} % |"
    )


def meets_targets(r: dict[str, Any]) -> tuple[bool, list[str]]:
    """The delivery and latency targets (the ones the capacity search keeps)."""
    misses = []
    family = r["transport"] if r["transport"] in TARGET_LATENCY_P95 else "websocket"
    if r["failed_calls"]:
        misses.append(f"{r['failed_calls']} failed calls")
    if not r["delivered_pct"] >= 100.0:
        misses.append(f"delivered {r['delivered_pct']:.2f} %")
    if r["gaps_over_40ms"]:
        misses.append(f"{r['gaps_over_40ms']} gaps over 40 ms")
    total = r["inbound"][1] + r["outbound"][1]
    if not total <= TARGET_LATENCY_P95[family]:
        misses.append(f"latency p95 in+out {1000 * total:.0f} ms")
    if not r["barge_in"][1] <= TARGET_BARGE_IN_P95:
        misses.append(f"barge-in p95 {1000 * r['barge_in'][1]:.0f} ms")
    return not misses, misses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 calls x 15 s over AudioSocket")
    parser.add_argument("--calls", default="10,50,100", help="comma-separated N (default 10,50,100)")
    parser.add_argument("--duration", type=float, default=45.0, help="seconds per call (default 45)")
    parser.add_argument("--transports", default="audiosocket,twilio,ws_audio,freeswitch",
                        help="comma-separated: audiosocket, twilio, ws_audio, freeswitch, webrtc, sip")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                        help="callbridge's event loop (default: its own default, uvloop when installed)")
    parser.add_argument("--search", action="store_true",
                        help="then look for the largest N meeting the delivery and latency targets")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--no-recording", action="store_true",
                        help="turn call recording off (to see its cost; the targets are with it on)")
    parser.add_argument("--suppression", choices=("speex", "adaptive", "webrtc", "off"), default="speex",
                        help="the tenant's noise suppression (default speex: what the adaptive default "
                             "costs on a noisy line)")
    parser.add_argument("--sip-codecs", default="PCMU",
                        help="the daemon's sip.codecs, comma-separated (default PCMU; G722,PCMU puts "
                             "PJSIP's bridge at 16 kHz)")
    parser.add_argument("--profile", action="store_true",
                        help="sample callbridge with py-spy over the steady window (needs py-spy and --out)")
    parser.add_argument("--fixtures", type=Path, default=default_fixtures_dir())
    parser.add_argument("--source", type=Path, default=REPO_ROOT,
                        help="run callbridge from this source tree (default: this checkout), to compare versions")
    parser.add_argument("--out", type=Path, default=None, help="keep run directories here")
    parser.add_argument("--json", type=Path, default=None, help="write all results to this JSON file")
    parser.add_argument("--reanalyse", type=Path, default=None, metavar="DIR",
                        help="recompute the figures of the runs kept in DIR (by --out) and print the table")
    args = parser.parse_args(argv)

    if args.reanalyse is not None:
        print(HEADER)
        for run_dir in sorted(args.reanalyse.iterdir()):
            if (run_dir / "callers.pickle").exists():
                print(table_row(reanalyse(run_dir)))
        return 0
    if args.quick:
        calls, duration, transports = [10], 15.0, ["audiosocket"]
    else:
        calls = [int(x) for x in args.calls.split(",") if x]
        duration = args.duration
        transports = [t for t in args.transports.split(",") if t]
    for t in transports:
        if t not in OTHER_TRANSPORTS and t not in WS_TRANSPORTS:
            parser.error(f"unknown transport {t!r}")
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="callbridge-load-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    with open("/proc/loadavg", encoding="ascii") as f:
        load_before = f.read().split()[:3]
    print(f"load average before: {' '.join(load_before)}; runs in {out_dir}", flush=True)

    results: list[dict[str, Any]] = []

    def run(transport: str, n: int) -> dict[str, Any]:
        cfg = RunConfig(transport, n, duration, args.loop, not args.no_pin, args.fixtures,
                        keep=args.out is not None, out_dir=out_dir, profile=args.profile,
                        source=args.source.resolve(), recording=not args.no_recording,
                        suppression=args.suppression, sip_codecs=args.sip_codecs)
        print(f"-- {transport}, {n} calls x {duration:.0f} s ...", flush=True)
        r = run_once(cfg)
        ok, misses = meets_targets(r)
        r["meets_targets"] = ok
        r["misses"] = misses
        print(HEADER.splitlines()[0] if not results else "", end="" if results else "\n")
        print(table_row(r), flush=True)
        if r["failures"]:
            print(f"   failures: {r['failures']}")
        if misses:
            print(f"   misses: {', '.join(misses)}")
        results.append(r)
        return r

    for transport in transports:
        for n in calls:
            run(transport, n)
        if args.search:
            passing = [r["calls"] for r in results if r["transport"] == transport and r["meets_targets"]]
            low = max(passing, default=0)
            failing = [r["calls"] for r in results
                       if r["transport"] == transport and not r["meets_targets"] and r["calls"] > low]
            high = min(failing, default=None)  # the bisection starts from runs already made
            n = max(calls) if low == max(calls) else low
            if not passing:
                # Even the smallest N missed: step down until one meets the targets.
                high = n = min(calls)
                while n > 1 and not low:
                    n //= 2
                    if run(transport, n)["meets_targets"]:
                        low = n
                    else:
                        high = n
                n = 0
            while high is None and n:
                n = int(n * 1.5)
                if run(transport, n)["meets_targets"]:
                    low = n
                else:
                    high = n
            while high is not None and high - low > max(10, low // 10):
                mid = (low + high) // 2
                if run(transport, mid)["meets_targets"]:
                    low = mid
                else:
                    high = mid
            print(f"largest N meeting the delivery and latency targets over {transport}: {low}")
            results.append({"transport": transport, "search_max_calls": low})

    with open("/proc/loadavg", encoding="ascii") as f:
        load_after = f.read().split()[:3]
    print(f"\nload average after: {' '.join(load_after)}")
    print(HEADER)
    for r in results:
        if "calls" in r:
            print(table_row(r))
    if args.json is not None:
        args.json.write_text(json.dumps({"load_before": load_before, "load_after": load_after,
                                         "results": results}, indent=2, default=float), encoding="utf-8")
    if args.out is None:
        shutil.rmtree(out_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
