"""Media benchmark: noise suppressors and the default call chain on recorded speech over a phone line.

    python -m bench.media            # full run (a few minutes)
    python -m bench.media --quick    # one clip, two SNRs, fewer variants (well under a minute)

See bench/media/README.md for what is measured and the latest results.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bench.media.resampling import report as resampler_report
from bench.media.scores import Scores, align, measured_delay, score
from bench.media.signals import (
    NOISE_TYPES,
    RATE_HZ,
    SNRS_DB,
    SPEECH_CLIPS,
    STATIONARY_NOISES,
    Condition,
    make_condition,
)
from media.chain import InboundChain, OutboundChain
from media.codec import ULAW_8K
from media.noise import (
    DEFAULT_LEVEL_DB,
    DEFAULT_SUPPRESSION,
    IMAGE_STOPBAND_HZ,
    SpeexSuppressor,
    make_suppressor,
    speexdsp_available,
)
from media.resample import StreamResampler

FRAME = RATE_HZ // 50  # 20 ms
Samples = npt.NDArray[np.int16]

# Goals for the default chain: never worse than the unprocessed input in any cell (noise x SNR,
# mean over clips), clean speech within 0.05 PESQ of unprocessed, a clear gain on stationary noise.
GOAL_CELL_PESQ = 0.0
GOAL_CELL_STOI = -0.002
GOAL_CLEAN_PESQ_LOSS = 0.05
GOAL_STATIONARY_PESQ_GAIN = 0.45
GOAL_INBOUND_CPU_SECONDS = 40e-6  # mu-law decode + suppression + 8 -> 24 kHz
GOAL_IMAGE_REJECTION_DB = 60.0
TARGET_INBOUND_LATENCY_SECONDS = 0.015
TARGET_CPU_SECONDS = 100e-6


class Pipeline:
    """8 kHz int16 in, 8 kHz int16 out, with the delay (8 kHz samples) to undo before scoring."""

    def __init__(self, stages: list[Callable[[Samples], Samples]], delay_seconds: float, latency: float):
        self.stages = stages
        self.delay_samples = round(delay_seconds * RATE_HZ)
        # Inbound latency as the bridge sees it (for the chain: without the loop back to 8 kHz).
        self.latency_seconds = latency

    def process(self, frame: Samples) -> Samples:
        for stage in self.stages:
            frame = stage(frame)
        return frame


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    build: Callable[[], Pipeline]
    # Chains go 8 -> 24 -> 8 kHz to be scored; their changes are counted against the chain without
    # suppression, which makes the same two conversions, so that only the suppression is judged.
    chain: bool = False


def suppressor_variant(mode: str, level_db: int) -> Variant:
    def build() -> Pipeline:
        s = make_suppressor(mode, RATE_HZ, level_db)
        return Pipeline([s.process], s.latency_seconds, s.latency_seconds)

    label = mode if mode in ("off", "model") else f"{mode} {level_db} dB"
    return Variant(label, build)


def chain_variant(suppression: str, level_db: int, label: str) -> Variant:
    # The inbound chain's 24 kHz output goes back to 8 kHz through the outbound chain so it can be
    # scored with narrowband PESQ; that second conversion is counted in its delay, not its latency.
    def build() -> Pipeline:
        inbound = InboundChain(RATE_HZ, 24000, suppression, level_db)
        back = OutboundChain(24000, RATE_HZ)
        return Pipeline(
            [inbound.process, back.process],
            inbound.latency_seconds + back.latency_seconds,
            inbound.latency_seconds,
        )

    return Variant(label, build, chain=suppression != "off")


def wheel_speex_variant(level_db: int) -> Variant:
    # Speex through the pyspeex-noise wheel (16 kHz only, 8 kHz zero-stuffed around it): what the
    # chain falls back to without the system's libspeexdsp.
    def build() -> Pipeline:
        s = SpeexSuppressor(RATE_HZ, level_db)
        return Pipeline([s.process], s.latency_seconds, s.latency_seconds)

    return Variant(f"speex {level_db} dB, wheel at 16 kHz", build)


def interpolated_speex_variant(level_db: int) -> Variant:
    # The alternative to zero stuffing: a proper 8 -> 16 kHz interpolation filter in front of the
    # 16 kHz suppressor, and the usual anti-alias filter back down. Kept to show what stuffing costs.
    def build() -> Pipeline:
        up = StreamResampler(RATE_HZ, 16000)
        core = make_suppressor("speex", 16000, level_db)
        down = StreamResampler(16000, RATE_HZ, stopband_hz=IMAGE_STOPBAND_HZ)
        delay = up.latency_seconds + core.latency_seconds + down.latency_seconds
        return Pipeline([lambda f: down.process(core.process(up.process(f)))], delay, delay)

    return Variant(f"speex {level_db} dB, interpolated", build)


PLAIN_CHAIN = "chain, no suppression (8k->24k)"
DEFAULT_CHAIN = f"default chain ({DEFAULT_SUPPRESSION} {DEFAULT_LEVEL_DB} dB, 8k->24k)"


def variants(quick: bool) -> list[Variant]:
    out = [suppressor_variant("off", DEFAULT_LEVEL_DB)]
    levels = (DEFAULT_LEVEL_DB,) if quick else (-15, -20, -25, -30)
    out += [suppressor_variant("speex", level) for level in levels]
    if speexdsp_available():
        out.append(wheel_speex_variant(DEFAULT_LEVEL_DB))
    if not quick:
        out.append(interpolated_speex_variant(DEFAULT_LEVEL_DB))
    webrtc_levels = (-10,) if quick else (-6, -10, -15, -21)
    out += [suppressor_variant("webrtc", level) for level in webrtc_levels]
    out.append(suppressor_variant("adaptive", DEFAULT_LEVEL_DB))
    if not quick:
        out.append(chain_variant("speex", DEFAULT_LEVEL_DB, f"chain, speex {DEFAULT_LEVEL_DB} dB (8k->24k)"))
    out.append(chain_variant("off", DEFAULT_LEVEL_DB, PLAIN_CHAIN))
    out.append(chain_variant(DEFAULT_SUPPRESSION, DEFAULT_LEVEL_DB, DEFAULT_CHAIN))
    return out


def run(pipeline: Pipeline, received: Samples) -> Samples:
    """Stream 20 ms frames through, then enough silence to push out what the stages hold back."""
    tail = math.ceil(pipeline.delay_samples / FRAME) + 1
    padded = np.concatenate((received, np.zeros((-len(received)) % FRAME + tail * FRAME, np.int16)))
    return np.concatenate([pipeline.process(padded[i : i + FRAME]) for i in range(0, len(padded), FRAME)])


def evaluate(variant: Variant, condition: Condition) -> Scores:
    pipeline = variant.build()
    out = run(pipeline, condition.received)
    return score(condition.reference, align(out, pipeline.delay_samples, len(condition.reference)))


def evaluate_job(job: tuple[int, int, bool]) -> tuple[int, int, Scores]:
    v, c, quick = job
    return v, c, evaluate(variants(quick)[v], CONDITIONS[c])


def conditions(quick: bool) -> list[Condition]:
    clips = list(enumerate(SPEECH_CLIPS))
    snrs = SNRS_DB
    if quick:
        clips, snrs = clips[1:], (0, 10)
    out = []
    for index, clip in clips:
        out.append(make_condition(index, clip, "clean", None))
        out += [make_condition(index, clip, kind, snr) for kind in NOISE_TYPES for snr in snrs]
    return out


CONDITIONS: list[Condition] = []


def cpu_per_frame(step: Callable[[], None], frames: int, passes: int = 15) -> float:
    """CPU seconds (this thread's, not wall clock) per call of ``step``, best of ``passes`` passes.

    Thread CPU time leaves out time the scheduler gave to other processes; the best of many short
    passes further estimates the cost on an idle core, as a busy machine only adds cache misses.
    """
    frames = min(frames, 100)
    best = math.inf
    for _ in range(passes):
        t0 = time.thread_time()
        for _ in range(frames):
            step()
        best = min(best, (time.thread_time() - t0) / frames)
    return best


def measure_cpu(variant: Variant, received: Samples) -> float:
    pipeline = variant.build()
    frames = [received[i : i + FRAME] for i in range(0, len(received) - FRAME + 1, FRAME)]
    it = iter(frames * 20)
    return cpu_per_frame(lambda: pipeline.stages[0](next(it)), len(frames))


def measure_call_cpu(received: Samples, model_audio: Samples) -> dict[str, float]:
    """CPU per 20 ms frame each way: decode + inbound chain + outbound chain + encode, and its parts."""
    inbound = InboundChain(RATE_HZ)
    outbound = OutboundChain(24000, RATE_HZ)
    payloads = [ULAW_8K.encode(received[i : i + FRAME]) for i in range(0, len(received) - FRAME + 1, FRAME)]
    replies = [model_audio[i : i + 3 * FRAME] for i in range(0, len(model_audio) - 3 * FRAME + 1, 3 * FRAME)]
    n = min(len(payloads), len(replies))
    decoded = [ULAW_8K.decode(p) for p in payloads]
    back = [outbound.process(r) for r in replies]
    outbound.reset()

    def cycle(fn: Callable[[int], object]) -> Callable[[], None]:
        state = {"i": 0}

        def step() -> None:
            i = state["i"] % n
            state["i"] += 1
            fn(i)

        return step

    def whole(i: int) -> None:
        inbound.process(ULAW_8K.decode(payloads[i]))
        ULAW_8K.encode(outbound.process(replies[i]))

    small = np.zeros(FRAME, dtype=np.float32)
    return {
        "call": cpu_per_frame(cycle(whole), n),
        "decode_inbound": cpu_per_frame(cycle(lambda i: inbound.process_pcm(ULAW_8K.decode(payloads[i]))), n),
        "decode": cpu_per_frame(cycle(lambda i: ULAW_8K.decode(payloads[i])), n),
        "inbound": cpu_per_frame(cycle(lambda i: inbound.process(decoded[i])), n),
        "outbound": cpu_per_frame(cycle(lambda i: outbound.process(replies[i])), n),
        "encode": cpu_per_frame(cycle(lambda i: ULAW_8K.encode(back[i])), n),
        # How slow is this machine at the kind of work above: one tiny numpy call.
        "numpy_call": cpu_per_frame(lambda: np.add(small, 1.0), 5 * n),
    }


def chain_image_rejection(suppression: str) -> float:
    """dB between the power below 4 kHz and the power above it in the inbound chain's 24 kHz
    output, the worse of white noise and speech at 10 dB SNR through the mu-law line: broadband
    input up to 4 kHz puts images just above 4 kHz, where a filter that stops only at the image of
    the 3.4 kHz passband edge (4.6 kHz) lets them through."""
    worst = math.inf
    for kind in ("white", "clean"):
        received = make_condition(0, SPEECH_CLIPS[0], kind, 10 if kind != "clean" else None).received
        chain = InboundChain(RATE_HZ, 24000, suppression)
        out = np.concatenate(
            [chain.process(received[i : i + FRAME]) for i in range(0, len(received) - FRAME + 1, FRAME)]
        ).astype(np.float64)
        spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out)))) ** 2
        freqs = np.fft.rfftfreq(len(out), 1 / 24000)
        worst = min(worst, 10 * math.log10(spectrum[freqs < 4000].sum() / spectrum[freqs >= 4000].sum()))
    return worst


def fmt_row(cells: Iterable[str], widths: list[int]) -> str:
    return "  ".join(
        c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.media", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one clip, SNR 0 and 10 dB, fewer variants")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="scoring processes")
    parser.add_argument("--check", action="store_true", help="exit 1 when the default chain misses a target")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    CONDITIONS[:] = conditions(args.quick)
    vs = variants(args.quick)

    # CPU and latency first, on a quiet process, before any scoring workers start.
    probe = next(c for c in CONDITIONS if c.noise == "white" and c.snr_db == 10)
    cpu: dict[str, float] = {}
    delays: dict[str, tuple[float, int]] = {}
    for v in vs:
        cpu[v.name] = measure_cpu(v, probe.received)
        pipe = v.build()
        delays[v.name] = (
            pipe.latency_seconds,
            measured_delay(probe.received.astype(float), run(pipe, probe.received)),
        )
    model_audio = InboundChain(RATE_HZ, suppression="off").process(probe.received)
    call = measure_call_cpu(probe.received, model_audio)
    call_cpu = call["call"]
    image_rejection = {
        name: chain_image_rejection(suppression)
        for name, suppression in ((PLAIN_CHAIN, "off"), (DEFAULT_CHAIN, DEFAULT_SUPPRESSION))
    }
    resampler_lines = resampler_report()

    jobs = [(v, c, args.quick) for v in range(len(vs)) for c in range(len(CONDITIONS))]
    results: dict[tuple[int, int], Scores] = {}
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, initializer=_init_worker, initargs=(args.quick,)) as pool:
            for v, c, s in pool.map(evaluate_job, jobs, chunksize=4):
                results[v, c] = s
    else:
        for v, c, _ in jobs:
            results[v, c] = evaluate(vs[v], CONDITIONS[c])

    base = 0  # "off": the noisy input as received
    plain = next(i for i, v in enumerate(vs) if v.name == PLAIN_CHAIN)
    bases = [plain if v.chain else base for v in vs]
    clips = sorted({c.clip for c in CONDITIONS})
    print(
        f"callbridge media benchmark ({'quick' if args.quick else 'full'}): "
        f"{len(CONDITIONS)} conditions x {len(vs)} variants, clips {', '.join(clips)}"
    )
    print(
        "phone channel: noise band-limited 300-3400 Hz, G.711 mu-law; scores vs the clean recording, "
        "output aligned by the reported latency\n"
    )

    # Cells: clean speech, then every noise x SNR; each the mean over clips.
    groups: dict[tuple[str, float | None], list[int]] = defaultdict(list)
    for ci, c in enumerate(CONDITIONS):
        groups[c.noise, c.snr_db].append(ci)
    ordered = sorted(
        groups.items(),
        key=lambda kv: (-1 if kv[0][0] == "clean" else NOISE_TYPES.index(kv[0][0]), kv[0][1] or 0.0),
    )

    def cell_mean(vi: int, idx: list[int], metric: str) -> float:
        return statistics.fmean(getattr(results[vi, ci], metric) for ci in idx)

    def cell_delta(vi: int, idx: list[int], metric: str) -> float:
        return cell_mean(vi, idx, metric) - cell_mean(bases[vi], idx, metric)

    def harms(vi: int, key: tuple[str, float | None], idx: list[int]) -> tuple[bool, bool]:
        """Whether the cell breaks the goal on PESQ, on STOI."""
        dp, ds = cell_delta(vi, idx, "pesq_nb"), cell_delta(vi, idx, "stoi")
        if key[0] == "clean":
            return dp < -GOAL_CLEAN_PESQ_LOSS, ds < GOAL_CELL_STOI
        return dp < GOAL_CELL_PESQ, ds < GOAL_CELL_STOI

    summary: dict[str, dict[str, float]] = {}
    widths = [max(len(v.name) for v in vs), 8, 8, 8, 9, 9, 8, 8, 8, 8, 8, 6]
    print(
        fmt_row(
            ["variant", "lat ms", "meas ms", "us/20ms", "cleanPESQ", "cleanSTOI",
             "dPESQ", "dSTOI", "dSegSNR", "babPESQ", "babSTOI", "harm"],
            widths,
        )
    )
    for vi, v in enumerate(vs):
        clean = [results[vi, ci] for ci, c in enumerate(CONDITIONS) if c.noise == "clean"]
        noisy_idx = [ci for ci, c in enumerate(CONDITIONS) if c.noise in STATIONARY_NOISES]
        babble_idx = [ci for ci, c in enumerate(CONDITIONS) if c.noise == "babble"]
        b = bases[vi]
        dp = statistics.fmean(results[vi, ci].pesq_nb - results[b, ci].pesq_nb for ci in noisy_idx)
        ds = statistics.fmean(results[vi, ci].stoi - results[b, ci].stoi for ci in noisy_idx)
        dg = statistics.fmean(results[vi, ci].seg_snr_db - results[b, ci].seg_snr_db for ci in noisy_idx)
        bp = statistics.fmean(results[vi, ci].pesq_nb - results[b, ci].pesq_nb for ci in babble_idx)
        bs = statistics.fmean(results[vi, ci].stoi - results[b, ci].stoi for ci in babble_idx)
        cp = statistics.fmean(s.pesq_nb for s in clean)
        cs = statistics.fmean(s.stoi for s in clean)
        broken = sum(any(harms(vi, key, idx)) for key, idx in ordered)
        lat, meas = delays[v.name]
        summary[v.name] = {"dpesq": dp, "dstoi": ds, "clean_pesq": cp, "latency": lat, "harm": broken}
        print(
            fmt_row(
                [v.name, f"{lat * 1e3:.3f}", f"{meas / RATE_HZ * 1e3:.3f}", f"{cpu[v.name] * 1e6:.1f}",
                 f"{cp:.2f}", f"{cs:.3f}", f"{dp:+.2f}", f"{ds:+.3f}", f"{dg:+.1f}", f"{bp:+.3f}",
                 f"{bs:+.4f}", str(broken)],
                widths,
            )
        )
    print(
        "\nlat = algorithmic latency reported by the object (inbound only for chains);\n"
        "meas = cross-correlation lag of output vs input (chains: including the loop back to 8 kHz);\n"
        "us/20ms = thread CPU time of the stage alone per 20 ms frame (best of 15 passes of 100 frames);\n"
        "d* = mean change vs the noisy input over white, pink and hum at all SNRs and clips;\n"
        "bab* = mean change vs the noisy input over babble at all SNRs and clips;\n"
        "chains with suppression are compared with the chain without it (the same 8 -> 24 -> 8 kHz);\n"
        f"harm = cells of the harm tables below that break the goal (of {len(ordered)}).\n"
    )

    cols = [max(len(v.name) for v in vs)] + [9] * len(ordered)
    header = ["noise SNR dB"] + ["clean" if snr is None else f"{kind[:6]} {snr:g}" for (kind, snr), _ in ordered]
    for metric, label, fmt in (("pesq_nb", "PESQ-NB", "{:.2f}"), ("stoi", "STOI", "{:.3f}")):
        print(f"{label} per cell, mean over clips")
        print(fmt_row(header, cols))
        for vi, v in enumerate(vs):
            print(fmt_row([v.name] + [fmt.format(cell_mean(vi, idx, metric)) for _, idx in ordered], cols))
        print()
    print(
        f"Harm table: change vs the unprocessed input (chains: vs the chain without suppression) per cell, mean "
        f"over clips; '!' marks a cell that "
        f"breaks the goal (noisy: dPESQ < {GOAL_CELL_PESQ:+.2f} or dSTOI < {GOAL_CELL_STOI:+.3f}; clean: "
        f"dPESQ < -{GOAL_CLEAN_PESQ_LOSS:.2f} or dSTOI < {GOAL_CELL_STOI:+.3f})"
    )
    for metric, label, fmt, which in (("pesq_nb", "dPESQ-NB", "{:+.3f}", 0), ("stoi", "dSTOI", "{:+.4f}", 1)):
        print(fmt_row([label, *header[1:]], cols))
        for vi, v in enumerate(vs):
            if vi == base:
                continue
            cells = [v.name]
            for key, idx in ordered:
                mark = "!" if harms(vi, key, idx)[which] else " "
                cells.append(fmt.format(cell_delta(vi, idx, metric)) + mark)
            print(fmt_row(cells, cols))
        print()

    chain = summary[DEFAULT_CHAIN]
    decode_inbound = call["decode_inbound"]
    checks = [
        (
            "no cell worse than the input (dPESQ >= 0, dSTOI >= -0.002; clean: dPESQ >= -0.05)",
            chain["harm"] == 0,
            f"{chain['harm']:.0f} cells break it",
        ),
        (
            f"mean PESQ-NB gain over stationary noise >= +{GOAL_STATIONARY_PESQ_GAIN}",
            chain["dpesq"] >= GOAL_STATIONARY_PESQ_GAIN,
            f"{chain['dpesq']:+.2f}",
        ),
        (
            f"clean-speech PESQ-NB within {GOAL_CLEAN_PESQ_LOSS} of unprocessed",
            chain["clean_pesq"] >= summary[PLAIN_CHAIN]["clean_pesq"] - GOAL_CLEAN_PESQ_LOSS,
            f"{chain['clean_pesq']:.2f} against {summary[PLAIN_CHAIN]['clean_pesq']:.2f}",
        ),
        (
            "inbound chain latency <= 15 ms",
            chain["latency"] <= TARGET_INBOUND_LATENCY_SECONDS,
            f"{chain['latency'] * 1e3:.3f} ms",
        ),
        (
            f"CPU per 20 ms, decode + suppress + 8 -> 24 kHz <= {GOAL_INBOUND_CPU_SECONDS * 1e6:.0f} us",
            decode_inbound <= GOAL_INBOUND_CPU_SECONDS,
            f"{decode_inbound * 1e6:.1f} us",
        ),
        (
            f"image rejection above 4 kHz in the 24 kHz output >= {GOAL_IMAGE_REJECTION_DB:.0f} dB",
            image_rejection[DEFAULT_CHAIN] >= GOAL_IMAGE_REJECTION_DB,
            f"{image_rejection[DEFAULT_CHAIN]:.1f} dB",
        ),
        (
            "CPU per 20 ms, decode + suppress + resample in and out + encode <= 100 us",
            call_cpu <= TARGET_CPU_SECONDS,
            f"{call_cpu * 1e6:.1f} us",
        ),
    ]
    print("\n".join(resampler_lines) + "\n")
    print(
        "Image rejection of the inbound chains (8 kHz in, 24 kHz out): power above 4 kHz against the "
        "power below it, worst of white noise and speech through the mu-law line:\n  "
        + ", ".join(f"{name}: {db:.1f} dB" for name, db in image_rejection.items())
        + "\n"
    )
    print(
        "CPU per 20 ms frame each way (thread time, best of 15 passes of 100 frames): "
        + ", ".join(f"{k} {call[k] * 1e6:.1f} us" for k in ("decode", "inbound", "outbound", "encode"))
        + f"; decode + inbound together {decode_inbound * 1e6:.1f} us; the whole call pass {call_cpu * 1e6:.1f} us. "
        f"For scale: one numpy call on 160 samples (np.add) takes {call['numpy_call'] * 1e6:.2f} us here.\n"
    )
    print(f"default chain goals ({DEFAULT_CHAIN}):")
    for label, ok, value in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {label}: {value}")
    print(f"\nbench time {time.perf_counter() - started:.0f} s")
    if args.check and not all(ok for _, ok, _ in checks):
        return 1
    return 0


def _init_worker(quick: bool) -> None:
    CONDITIONS[:] = conditions(quick)


if __name__ == "__main__":
    sys.exit(main())
