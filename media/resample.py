"""Low-latency streaming sample-rate conversion for the call legs.

Theory of operation
-------------------
A rate change by the reduced ratio ``L/M`` is an upsample by ``L``, a low-pass FIR at the common rate
``L * in_rate`` and a downsample by ``M``: ``y[n] = L * sum_m x[m] * h[n*M - m*L]`` (the classical
polyphase form, Crochiere & Rabiner, "Multirate Digital Signal Processing", 1983, ch. 3). Only the
products that are not zero are computed.

Output samples are handled in *groups* of ``L`` that consume exactly ``M`` input samples, so the
pattern of taps repeats from group to group and a block of ``B`` groups is a fixed linear map of the
block's input and of the samples just before it (the filter's look-back). All whole blocks of a
chunk are therefore one small matrix product against a precomputed matrix, which numpy hands to
BLAS. Groups left over when a chunk is not a whole number of blocks go through the same taps one
group at a time (slower, exact), so any chunk size works and streaming output equals one-shot output
sample for sample.

Two implementations run that filter. The numpy one (``_Polyphase``) is the reference; a 20 ms frame
costs it some ten numpy calls, whose overhead outweighs the arithmetic. ``media._native``
(``media/_native.c``, built at install time when a C compiler is there) runs the same group taps
over the same float32 history in one call per frame; ``NATIVE`` says whether this install has it,
and ``StreamResampler`` uses it when it does. The two agree to within one LSB (float sums in a
different order can round the other way).

The prototype is a Kaiser-windowed sinc (Kaiser, "Nonrecursive digital filter design using the
I0-sinh window function", 1974) computed here with numpy, so the runtime needs nothing else. Its
length follows Kaiser's estimate ``N = (A - 7.95) / (2.285 * dw) + 1``. Being linear-phase, its
delay is exactly ``(N - 1) / 2`` samples at the common rate, which is the ``latency_seconds`` the
object reports.

Band edges. On the narrow side's Nyquist frequency ``fN`` the passband ends at ``0.85 * fN``
(3.4 kHz for 8 kHz telephony, ITU-T G.712's channel edge) and the stopband starts at ``fN`` both
ways. Going *down*, everything above ``fN`` is aliased into the band. Going *up*, the images of
whatever the input carries between the passband edge and ``fN`` (a G.711 line's quantisation noise
and any noise the channel filter left there reach 4 kHz) lie just above ``fN``; a stopband that
started only at the image of the passband edge (``2*fN - 0.85*fN``, 4.6 kHz) would let them
through some 55 dB down, so the output would carry energy above 4 kHz that no 8 kHz line has.

Pairs whose reduced ratio is not small (44.1 kHz against telephony rates) are delegated to soxr in its
variable-rate mode, whose output is made steady by a small queue primed with the amount soxr is seen
to hold back.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from media._native import Polyphase as _NativePolyphase

Samples = npt.NDArray[np.int16]
_Floats = npt.NDArray[np.float32]
_Doubles = npt.NDArray[np.float64]
# A chunk size's output array and buffer views: (out, rows, rows_out, windows, windows_out).
_Plan = tuple[_Floats, "_Floats | None", "_Floats | None", "_Floats | None", "_Floats | None"]

_LITTLE_ENDIAN = sys.byteorder == "little"
# Design attenuation; the requirement is 60 dB, the margin covers int16 rounding of the output.
_STOPBAND_DB = 70.0
_PASSBAND_FRACTION = 0.85
# Largest L or M served by the polyphase path; anything else goes to soxr.
_MAX_POLYPHASE_FACTOR = 6
# Distinct chunk sizes whose buffer views a resampler keeps (a stream has one or two).
_PLANS_KEPT = 8
# Block length in input samples is chosen among divisors of this (10 ms at the input rate) when
# possible, so 10 and 20 ms frames never fall to the per-group path.
_BLOCK_SPAN_SECONDS = 0.010


class ResampleError(ValueError):
    """Raised for unusable rates or input."""


def _native_polyphase() -> type[_NativePolyphase] | None:
    try:
        from media._native import Polyphase
    except ImportError:  # installed without a C compiler: the numpy path serves
        return None
    return Polyphase


_NATIVE_POLYPHASE = _native_polyphase()
# Whether StreamResampler runs the compiled filter loop in this install (for the daemon to report).
NATIVE = _NATIVE_POLYPHASE is not None
_INT16 = np.dtype(np.int16)


def kaiser_beta(attenuation_db: float) -> float:
    """Kaiser window shape for a stopband attenuation (Kaiser 1974; Oppenheim & Schafer eq. 7.62)."""
    if attenuation_db > 50.0:
        return float(0.1102 * (attenuation_db - 8.7))
    if attenuation_db >= 21.0:
        return float(0.5842 * (attenuation_db - 21.0) ** 0.4 + 0.07886 * (attenuation_db - 21.0))
    return 0.0


def lowpass_taps(
    rate_hz: float, passband_hz: float, stopband_hz: float, attenuation_db: float, delay_multiple: int = 1
) -> _Doubles:
    """Linear-phase Kaiser-windowed sinc low-pass with unit gain at DC.

    The length is rounded up so that the delay, ``(N - 1) / 2`` samples, is a multiple of
    ``delay_multiple``.
    """
    if not 0.0 < passband_hz < stopband_hz <= rate_hz / 2:
        raise ResampleError(f"bad band edges {passband_hz} / {stopband_hz} Hz at {rate_hz} Hz")
    transition = 2.0 * math.pi * (stopband_hz - passband_hz) / rate_hz
    num_taps = math.ceil((attenuation_db - 7.95) / (2.285 * transition)) + 1
    step = 2 * delay_multiple
    num_taps = -(-(num_taps - 1) // step) * step + 1
    cutoff = (passband_hz + stopband_hz) / 2.0 / rate_hz  # cycles per sample
    n = np.arange(num_taps, dtype=np.float64) - (num_taps - 1) / 2.0
    taps = 2.0 * cutoff * np.sinc(2.0 * cutoff * n) * np.kaiser(num_taps, kaiser_beta(attenuation_db))
    taps /= taps.sum()
    return taps


_INT16_MAX = np.float32(32767.0)
_INT16_MIN = np.float32(-32768.0)


def _to_int16(y: npt.NDArray[np.floating]) -> Samples:
    # In place, with bounds of the array's own type: this runs on every frame of every call.
    np.rint(y, out=y)
    np.minimum(y, _INT16_MAX, out=y)
    np.maximum(y, _INT16_MIN, out=y)
    return y.astype(np.int16)


def _check_input(samples: npt.ArrayLike) -> Samples:
    arr = np.asarray(samples)
    if arr.ndim != 1:
        raise ResampleError(f"expected a 1-D array of samples, got shape {arr.shape}")
    if arr.dtype == np.int16:
        return arr
    if arr.size == 0:
        return np.zeros(0, dtype=np.int16)
    if not np.issubdtype(arr.dtype, np.integer) or arr.min() < -32768 or arr.max() > 32767:
        raise ResampleError(f"expected int16 samples, got {arr.dtype} values")
    return arr.astype(np.int16)


@dataclass(frozen=True, slots=True)
class _Design:
    """The filter of one rate pair as taps per group of ``up`` outputs (see the module docstring)."""

    up: int  # L: outputs per group
    down: int  # M: inputs per group
    lookback: int  # inputs before a group's first one that still reach its outputs
    group: _Floats  # (window, up): y[q*L + r] = sum_s x[q*M - lookback + s] * group[s, r]
    latency_seconds: float


def _design(
    in_rate_hz: int, out_rate_hz: int, passband_hz: float | None, stopband_hz: float | None, gain: float
) -> _Design:
    g = math.gcd(in_rate_hz, out_rate_hz)
    up, down = out_rate_hz // g, in_rate_hz // g
    nyquist = min(in_rate_hz, out_rate_hz) / 2.0
    passband = passband_hz if passband_hz is not None else _PASSBAND_FRACTION * nyquist
    if stopband_hz is None:
        stopband_hz = nyquist
    common_rate = float(in_rate_hz * up)
    # A delay of whole input and output samples (a multiple of L*M at the common rate) keeps
    # chains of stages aligned to the sample grid, which lets callers compensate it exactly.
    taps = lowpass_taps(common_rate, passband, stopband_hz, _STOPBAND_DB, up * down) * (up * gain)

    # Input offsets s (relative to the group's first input) that reach some output of a group.
    s_min = -((len(taps) - 1) // up)
    s_max = ((up - 1) * down) // up

    def coefficient(s: int, r: int) -> float:
        k = r * down - s * up
        return float(taps[k]) if 0 <= k < len(taps) else 0.0

    # One group at a time: y[q*L + r] = sum_s x[q*M + s] * group[s - s_min, r].
    group = np.zeros((s_max - s_min + 1, up))
    for s in range(s_min, s_max + 1):
        for r in range(up):
            group[s - s_min, r] = coefficient(s, r)
    return _Design(up, down, -s_min, group.astype(np.float32), (len(taps) - 1) / 2.0 / common_rate)


class _Polyphase:
    """Exact rational-ratio FIR resampler in numpy (see the module docstring); the reference."""

    def __init__(self, design: _Design, in_rate_hz: int) -> None:
        up, down = design.up, design.down
        self.up, self.down = up, down
        self.latency_seconds = design.latency_seconds
        self._lookback = design.lookback
        self._group = group = design.group
        self._window = len(group)

        # Whole blocks of B groups: block k's outputs are its input block (B*M samples) together
        # with the `lookback` samples before it, times self._span. In the buffer those rows overlap
        # (each starts B*M after the previous one), so they are a strided view and need no copy.
        self.block_in = self._choose_block(round(in_rate_hz * _BLOCK_SPAN_SECONDS))
        groups_per_block = self.block_in // down
        span = np.zeros((self._lookback + self.block_in, groups_per_block * up))
        for q in range(groups_per_block):
            first = q * down  # the group's first input is at lookback + q*M, its window s_min before
            span[first : first + self._window, q * up : (q + 1) * up] = group
        # float32: halves the memory the products stream through; int16 audio needs far less
        # precision than its 24-bit mantissa.
        self._span = np.ascontiguousarray(span, dtype=np.float32)

        # Streaming state: one float32 buffer holds the look-back history followed by the input not
        # yet consumed, and is reused from call to call. The strided views of it (and the output
        # arrays) for a given number of blocks are built once and kept, so a steady stream of equal
        # chunks costs a copy in, one matrix product and a shift of the history: numpy calls here
        # cost more than the arithmetic.
        self._buf = np.zeros(self._lookback + 4 * self.block_in, dtype=np.float32)
        self._fill = self._lookback  # valid samples in _buf: history, then pending input
        self._plans: dict[tuple[int, int], _Plan] = {}

    def _choose_block(self, span_samples: int) -> int:
        # Blocks about half the look-back long measured fastest: longer rows multiply more zeros,
        # shorter ones pay numpy's per-row overhead. A divisor of 10 ms keeps frames on the fast path.
        m = self.down
        need = max(self._lookback // 2, m)
        for size in range(need, span_samples + 1):
            if size % m == 0 and span_samples % size == 0:
                return size
        return -(-need // m) * m

    def reset(self) -> None:
        self._buf[: self._lookback] = 0.0
        self._fill = self._lookback

    def _plan(self, whole: int, rest: int) -> _Plan:
        """Output array and the views of the buffer for ``whole`` blocks then ``rest`` groups."""
        block, lookback, item = self.block_in, self._lookback, self._buf.itemsize
        per_block = (block // self.down) * self.up
        out = np.empty(whole * per_block + rest * self.up, dtype=np.float32)
        rows = rows_out = windows = windows_out = None
        if whole:
            rows = np.ndarray((whole, lookback + block), np.float32, buffer=self._buf, strides=(block * item, item))
            rows_out = out[: whole * per_block].reshape(whole, per_block)
        if rest:
            # Group g's window starts at buffer index lookback + g*M + s_min = g*M.
            windows = np.ndarray((rest, self._window), np.float32, buffer=self._buf,
                                 offset=whole * block * item, strides=(self.down * item, item))
            windows_out = out[whole * per_block :].reshape(rest, self.up)
        if len(self._plans) >= _PLANS_KEPT:
            self._plans.pop(next(iter(self._plans)))
        plan = (out, rows, rows_out, windows, windows_out)
        self._plans[(whole, rest)] = plan
        return plan

    def process(self, x: npt.NDArray[np.integer]) -> _Floats:
        """Filter ``x``; the result is only valid until the next call (it is a reused array)."""
        fill = self._fill
        end = fill + len(x)
        buf = self._buf
        if end > len(buf):
            grown = np.zeros(max(end, 2 * len(buf)), dtype=np.float32)
            grown[:fill] = buf[:fill]
            self._buf = buf = grown
            self._plans.clear()
        buf[fill:end] = x
        groups = (end - self._lookback) // self.down
        consumed = groups * self.down
        whole = consumed // self.block_in
        rest = groups - whole * (self.block_in // self.down)
        plan = self._plans.get((whole, rest))
        if plan is None:
            plan = self._plan(whole, rest)
        out, rows, rows_out, windows, windows_out = plan
        if rows is not None:
            np.matmul(rows, self._span, out=rows_out)
        if windows is not None:
            np.matmul(windows, self._group, out=windows_out)
        left = end - consumed
        buf[:left] = buf[consumed:end]  # numpy copies overlapping ranges correctly
        self._fill = left
        return out

    @property
    def pending_input(self) -> int:
        return self._fill - self._lookback


class _SoxrSteady:
    """soxr in variable-rate mode behind a queue that makes each call's output size steady."""

    def __init__(self, in_rate_hz: int, out_rate_hz: int) -> None:
        import soxr  # only needed for unusual rate pairs

        self._soxr = soxr
        self.in_rate, self.out_rate = in_rate_hz, out_rate_hz
        self._stream = self._new_stream()
        self._queue = np.zeros(0)
        self._owed = 0.0  # fractional output samples carried between calls
        self._prime = self._measure_holdback()
        self.latency_seconds = self._prime / out_rate_hz
        self.reset()

    def _new_stream(self) -> object:
        return self._soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float64", vr=True)

    def _measure_holdback(self) -> int:
        # Run a throwaway stream on 20 ms frames and see how far its output falls behind real time.
        probe = self._new_stream()
        frame = np.zeros(max(1, self.in_rate // 50))
        expected = produced = 0.0
        worst = 0.0
        for _ in range(40):
            produced += len(probe.resample_chunk(frame))  # type: ignore[attr-defined]
            expected += len(frame) * self.out_rate / self.in_rate
            worst = max(worst, expected - produced)
        return math.ceil(worst) + 1

    def reset(self) -> None:
        self._stream.clear()  # type: ignore[attr-defined]
        self._queue = np.zeros(self._prime)
        self._owed = 0.0

    def process(self, x: npt.NDArray[np.integer]) -> _Doubles:
        got = self._stream.resample_chunk(x.astype(np.float64))  # type: ignore[attr-defined]
        self._queue = np.concatenate((self._queue, got))
        self._owed += len(x) * self.out_rate / self.in_rate
        take = min(int(self._owed), len(self._queue))
        self._owed -= take
        out, self._queue = self._queue[:take], self._queue[take:]
        return out.copy()

    def flush(self) -> _Doubles:
        tail = self._stream.resample_chunk(np.zeros(0), last=True)  # type: ignore[attr-defined]
        out = np.concatenate((self._queue, tail))
        self.reset()
        return out


def is_polyphase_pair(in_rate_hz: int, out_rate_hz: int) -> bool:
    """True when this module's own filter serves the pair (otherwise soxr does, or nothing)."""
    g = math.gcd(in_rate_hz, out_rate_hz)
    return in_rate_hz != out_rate_hz and max(in_rate_hz, out_rate_hz) // g <= _MAX_POLYPHASE_FACTOR


class StreamResampler:
    """int16 mono resampler for one direction of one call; rates fixed at construction.

    Each call of ``process`` with ``n`` samples returns ``n * out / in`` samples, the fractional
    part carried to later calls, so 20 ms in gives 20 ms out. ``reset()`` forgets the history
    (barge-in); ``flush()`` returns the audio still held back by the filter (hang-up).

    ``passband_hz`` / ``stopband_hz`` override the default band edges (module docstring) and
    ``gain`` scales the output; both serve stages that know more about their input than a
    general resampler may assume (see ``zero_stuff``).
    """

    def __init__(
        self,
        in_rate_hz: int,
        out_rate_hz: int,
        *,
        passband_hz: float | None = None,
        stopband_hz: float | None = None,
        gain: float = 1.0,
    ) -> None:
        if in_rate_hz <= 0 or out_rate_hz <= 0:
            raise ResampleError(f"sample rates must be positive, got {in_rate_hz} -> {out_rate_hz}")
        self.in_rate_hz = in_rate_hz
        self.out_rate_hz = out_rate_hz
        # At most one of these is set; neither for equal rates (an identity).
        self._native: _NativePolyphase | None = None
        self._impl: _Polyphase | _SoxrSteady | None = None
        self._latency_seconds = 0.0
        if in_rate_hz == out_rate_hz:
            if gain != 1.0 or passband_hz is not None or stopband_hz is not None:
                raise ResampleError("equal rates are an identity; no filter or gain is applied")
        elif is_polyphase_pair(in_rate_hz, out_rate_hz):
            design = _design(in_rate_hz, out_rate_hz, passband_hz, stopband_hz, gain)
            self._latency_seconds = design.latency_seconds
            if _NATIVE_POLYPHASE is not None:
                self._native = _NATIVE_POLYPHASE(design.group, design.up, design.down, design.lookback)
            else:
                self._impl = _Polyphase(design, in_rate_hz)
        else:
            if gain != 1.0 or passband_hz is not None or stopband_hz is not None:
                raise ResampleError(f"{in_rate_hz} -> {out_rate_hz} Hz goes through soxr: no custom filter")
            self._impl = _SoxrSteady(in_rate_hz, out_rate_hz)
            self._latency_seconds = self._impl.latency_seconds

    @property
    def latency_seconds(self) -> float:
        """Algorithmic delay from input to output."""
        return self._latency_seconds

    def process(self, samples: npt.ArrayLike) -> Samples:
        native = self._native
        if native is not None:
            # An int16 array goes straight in (the per-frame case); anything else is checked and
            # converted first, so both paths accept and refuse the same input.
            if not (type(samples) is np.ndarray and samples.dtype is _INT16):
                samples = _check_input(samples)
            try:
                return np.frombuffer(native.process(samples), _INT16)
            except ValueError as exc:  # an int16 array of the wrong shape
                raise ResampleError(str(exc)) from None
        x = _check_input(samples)
        if self._impl is None:
            return x.copy()
        if x.size == 0:
            return np.zeros(0, dtype=np.int16)
        return _to_int16(self._impl.process(x))

    def process_pcm(self, pcm: bytes | bytearray) -> bytes | bytearray:
        """``process`` for native-endian PCM16 bytes in and out (an odd trailing byte is refused)."""
        if len(pcm) % 2:
            raise ResampleError(f"PCM16 bytes must have an even length, got {len(pcm)} bytes")
        native = self._native
        if native is not None:
            return native.process(pcm)
        return self.process(np.frombuffer(pcm, _INT16)).tobytes()

    def reset(self) -> None:
        if self._native is not None:
            self._native.reset()
        elif self._impl is not None:
            self._impl.reset()

    def _tail(self, pending_input: int, up: int, down: int) -> tuple[int, int]:
        """Zeros to feed and outputs owed to bring out the held-back input (``flush``)."""
        delay_in = math.ceil(self._latency_seconds * self.in_rate_hz)
        pad = delay_in + (-(pending_input + delay_in)) % down
        owed = (pending_input * up + down - 1) // down
        owed += math.ceil(self._latency_seconds * self.out_rate_hz)
        return pad, owed

    def flush(self) -> Samples:
        """Emit the held-back tail (the filter delay plus any partial group) and reset."""
        native = self._native
        if native is not None:
            pad, owed = self._tail(native.pending_input, native.up, native.down)
            tail = np.frombuffer(native.process(np.zeros(pad, dtype=np.int16)), dtype=np.int16)
            native.reset()
            return tail[:owed].copy()
        impl = self._impl
        if impl is None:
            return np.zeros(0, dtype=np.int16)
        if isinstance(impl, _SoxrSteady):
            return _to_int16(impl.flush())
        pad, owed = self._tail(impl.pending_input, impl.up, impl.down)
        y = impl.process(np.zeros(pad, dtype=np.int16))
        impl.reset()
        return _to_int16(y[:owed].copy())


def zero_stuff(samples: Samples) -> Samples:
    """Double the rate by inserting a zero after every sample: no filter, no delay, no arithmetic.

    The result holds the original spectrum at half amplitude plus its mirror image above the old
    Nyquist frequency. That is all a 16 kHz block processor fed from an 8 kHz leg needs when the
    stage after it removes the image band anyway: a ``StreamResampler`` from 16 kHz with
    ``stopband_hz`` at the old Nyquist frequency (4 kHz) and ``gain=2``.
    """
    x = _check_input(samples)
    if _LITTLE_ENDIAN:
        # Zero-extending each 16-bit sample to 32 bits lays out (sample, 0) pairs in memory.
        return x.view(np.uint16).astype(np.uint32).view(np.int16)
    out = np.zeros(2 * len(x), dtype=np.int16)
    out[::2] = x
    return out
