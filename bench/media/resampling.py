"""StreamResampler figures: latency, steadiness, passband flatness, image/alias rejection, CPU."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from media.resample import NATIVE, StreamResampler

PAIRS = ((8000, 24000), (24000, 8000), (16000, 24000), (24000, 16000), (8000, 16000), (16000, 8000))
FRAME_SECONDS = 0.020
_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class ResamplerFigures:
    in_rate_hz: int
    out_rate_hz: int
    latency_seconds: float
    frame_sizes: set[int]  # output sizes seen for 20 ms input frames
    ripple_db: float  # worst gain deviation for tones up to the passband edge
    rejection_db: float  # worst image/alias level relative to the tone, tones in or beyond the band
    cpu_seconds: float  # thread CPU per 20 ms frame, best of 15 passes of 25 frames


def _tone(freq: float, rate: int) -> np.ndarray:
    t = np.arange(round(rate * _SECONDS)) / rate
    return np.rint(16000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def _stream(r: StreamResampler, x: np.ndarray) -> tuple[np.ndarray, set[int]]:
    n = round(r.in_rate_hz * FRAME_SECONDS)
    parts = [r.process(x[i : i + n]) for i in range(0, len(x), n)]
    return np.concatenate(parts).astype(np.float64), {len(p) for p in parts}


def _band_power(y: np.ndarray, rate: int, lo: float, hi: float) -> float:
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y)))) ** 2
    freqs = np.fft.rfftfreq(len(y), 1 / rate)
    return float(spectrum[(freqs >= lo) & (freqs < hi)].sum()) + 1e-30


def measure(in_rate: int, out_rate: int) -> ResamplerFigures:
    r = StreamResampler(in_rate, out_rate)
    narrow = min(in_rate, out_rate) / 2
    edge = 0.85 * narrow
    skip = round(out_rate * 0.05)
    ripple = 0.0
    rejection = -np.inf
    sizes: set[int] = set()
    for freq in np.linspace(100, edge, 12):
        r.reset()
        y, seen = _stream(r, _tone(freq, in_rate))
        sizes |= seen
        y = y[skip:]
        gain = 20 * np.log10(np.sqrt(np.mean(y**2)) / (16000 / np.sqrt(2)))
        ripple = max(ripple, abs(gain))
        # Everything outside the narrow side's band is an image (going up) or cannot exist.
        wanted = _band_power(y, out_rate, freq - 50, freq + 50)
        rejection = max(rejection, 10 * np.log10(_band_power(y, out_rate, narrow, out_rate / 2) / wanted))
    if out_rate < in_rate:
        # Going down: tones above the new Nyquist frequency must not come back as aliases.
        for freq in np.linspace(narrow, in_rate / 2 - 100, 12):
            r.reset()
            y, _ = _stream(r, _tone(freq, in_rate))
            level = np.mean(y[skip:] ** 2) / (16000**2 / 2)
            rejection = max(rejection, 10 * np.log10(level + 1e-30))
    r.reset()
    x = _tone(1000, in_rate)
    n = round(in_rate * FRAME_SECONDS)
    frames = [x[i : i + n] for i in range(0, len(x), n)]
    best = np.inf
    for _ in range(15):
        t0 = time.thread_time()
        for f in frames:
            r.process(f)
        best = min(best, (time.thread_time() - t0) / len(frames))
    return ResamplerFigures(in_rate, out_rate, r.latency_seconds, sizes, ripple, rejection, best)


def report() -> list[str]:
    lines = [
        f"StreamResampler ({'compiled' if NATIVE else 'numpy'} filter loop; 20 ms frames; ripple = worst tone gain "
        "error up to 0.85 x the narrow Nyquist, rejection = worst image/alias vs the tone)",
        f"{'pair':<16}{'latency ms':>11}{'out/frame':>11}{'ripple dB':>11}{'rejection dB':>14}{'us/20ms':>9}",
    ]
    for a, b in PAIRS:
        f = measure(a, b)
        sizes = ",".join(str(s) for s in sorted(f.frame_sizes))
        lines.append(
            f"{f'{a} -> {b}':<16}{f.latency_seconds * 1e3:>11.3f}{sizes:>11}{f.ripple_db:>11.3f}"
            f"{f.rejection_db:>14.1f}{f.cpu_seconds * 1e6:>9.1f}"
        )
    return lines
