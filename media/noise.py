"""Noise suppression for the caller's audio, one implementation chosen per tenant.

Modes
-----
``off``     nothing is done locally (latency 0).
``model``   nothing is done locally either, but the realtime model is asked to reduce noise itself;
            the object only carries that request (``model_noise_reduction``) for the bridge.
``speex``   the speexdsp preprocessor's spectral noise suppressor (a log-spectral-amplitude gain,
            Ephraim & Malah 1985, over a minima-controlled noise estimate, Cohen 2002), via the
            ``pyspeex-noise`` wheel. Suppression depth ``level_db`` is the
            preprocessor's ``SPEEX_PREPROCESS_SET_NOISE_SUPPRESS`` (negative dB); AGC is off.
``webrtc``  WebRTC's noise suppressor (the Wiener-filter NS of webrtc-audio-processing), via the
            ``webrtc-noise-gain`` wheel; ``level_db`` picks its nearest policy (about 6, 10, 15
            or 21 dB of suppression).
``adaptive`` (the default) Speex at ``level_db`` where the line carries steady noise, the input
            untouched on a clean line or behind babble, judged per call (``AdaptiveSuppressor``).

Both libraries are built for 16 kHz and take exactly 10 ms (160 samples) per call. Feeding 8 kHz
samples to the Speex binding as if they were 16 kHz would work, but it would process 20 ms blocks
and the preprocessor delays its output by one block (overlap-add of a 2-block window), which alone
would spend the inbound latency budget; at 16 kHz its delay is 10 ms.

So an 8 kHz leg is taken to 16 kHz by zero stuffing (``media.resample.zero_stuff``: no filter, no
delay), suppressed there, image band and all, and brought back by a resampler whose stopband
starts at the first image of the passband edge (4.6 kHz) and whose gain of 2 restores the level. Both suppressors treat
the mirrored upper band like the lower one; the benchmark (bench/media) compares this with a proper
interpolation filter in front: the same scores on noisy speech, a little lower on clean speech, one
filter stage and 1.9 ms less.
A chain that carries the audio on at another rate builds the 16 kHz suppressor and does the
same around it (``media.chain``), so the 8 kHz round trip is skipped.

Speex has a second engine: when the system's ``libspeexdsp`` (Debian package ``libspeexdsp1``) is
installed, the preprocessor is built for the caller's own rate with 10 ms blocks (80 samples at
8 kHz) and called through ``ctypes``. That is the same algorithm without the detour through
16 kHz: half the FFT work per frame (about 19 against 36 us per 20 ms), no zero stuffing, no image
filter, and the same 10 ms delay. ``speexdsp_available()`` says which engine ``make_suppressor``
picks; the binding above stays the fallback.

All latencies here are whole samples at 8 kHz, so a caller can compensate them exactly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import weakref
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from media.resample import StreamResampler, zero_stuff

Samples = npt.NDArray[np.int16]

SUPPRESSION_MODES = ("adaptive", "off", "speex", "webrtc", "model")
DEFAULT_SUPPRESSION = "adaptive"
DEFAULT_LEVEL_DB = -25
SUPPORTED_RATES_HZ = (8000, 16000)
# An 8 kHz leg zero-stuffed to 16 kHz carries its image from 4 kHz up (the mirror of whatever the
# line carries up to 4 kHz). A stage that goes on at a higher rate (the chain's 16 -> 24 kHz) stops
# from 4 kHz and doubles the level zero stuffing halved. Going back down to 8 kHz, the image folds
# onto the band it mirrors, so there the stopband may start at the image of the passband edge
# (4.6 kHz): the transition band is symmetric about 4 kHz and what folds back restores it.
IMAGE_STOPBAND_HZ = 4000.0
_FOLD_STOPBAND_HZ = 4600.0
TELEPHONY_PASSBAND_HZ = 3400.0
ZERO_STUFF_GAIN = 2.0

_LIBRARY_RATE_HZ = 16000
_INT16 = np.dtype(np.int16)
_BLOCK_SAMPLES = 160  # 10 ms at 16 kHz: the only block size either library accepts
_BLOCK_SECONDS = 0.010
# The Speex preprocessor's output lags its input by one block (see the module docstring).
_SPEEX_DELAY_BLOCKS = 1
# WebRTC NS analyses 256-sample windows advanced by 160: 96 samples of look-back delay at 16 kHz.
_WEBRTC_DELAY_SAMPLES = 96
# WebRTC NS policies 1..4 and their nominal suppression depth (webrtc NsConfig kLow..kVeryHigh).
_WEBRTC_POLICY_DB = {1: 6, 2: 10, 3: 15, 4: 21}


class SuppressorError(ValueError):
    """Bad configuration or frame for a noise suppressor."""


@runtime_checkable
class NoiseSuppressor(Protocol):
    """``process`` takes int16 at ``rate_hz``, a multiple of 10 ms, and returns as many samples."""

    rate_hz: int
    latency_seconds: float

    def process(self, frame: Samples) -> Samples: ...

    def reset(self) -> None: ...


def _check_frame(frame: npt.ArrayLike, rate_hz: int) -> Samples:
    arr = np.asarray(frame)
    if arr.ndim != 1 or arr.dtype != np.int16:
        raise SuppressorError(f"expected a 1-D int16 frame, got {arr.dtype} shape {arr.shape}")
    block = rate_hz // 100
    if len(arr) % block:
        raise SuppressorError(f"frame of {len(arr)} samples is not a multiple of 10 ms at {rate_hz} Hz")
    return arr


def _check_rate(rate_hz: int) -> None:
    if rate_hz not in SUPPORTED_RATES_HZ:
        raise SuppressorError(f"noise suppression runs at 8000 or 16000 Hz, not {rate_hz}")


class PassthroughSuppressor:
    """No local suppression (modes ``off`` and ``model``)."""

    latency_seconds = 0.0

    def __init__(self, rate_hz: int, *, model_noise_reduction: bool = False) -> None:
        _check_rate(rate_hz)
        self.rate_hz = rate_hz
        # True for mode "model": the bridge asks the realtime model for its own noise reduction.
        self.model_noise_reduction = model_noise_reduction

    @property
    def mode(self) -> str:
        return "model" if self.model_noise_reduction else "off"

    def process(self, frame: Samples) -> Samples:
        return _check_frame(frame, self.rate_hz)

    def reset(self) -> None:
        pass


class _BlockSuppressor:
    """Shared framing: 10 ms blocks at 16 kHz, with an 8 kHz leg converted inside."""

    mode = ""
    model_noise_reduction = False
    _core_delay_seconds = 0.0

    def __init__(self, rate_hz: int) -> None:
        _check_rate(rate_hz)
        self.rate_hz = rate_hz
        self._down: StreamResampler | None = None
        if rate_hz != _LIBRARY_RATE_HZ:
            self._down = StreamResampler(
                _LIBRARY_RATE_HZ, rate_hz, stopband_hz=_FOLD_STOPBAND_HZ, gain=ZERO_STUFF_GAIN
            )
        self.latency_seconds = self._core_delay_seconds + (
            0.0 if self._down is None else self._down.latency_seconds
        )
        self._open()

    def _open(self) -> None:
        raise NotImplementedError

    def _run_block(self, block: bytes) -> bytes:
        raise NotImplementedError

    def process(self, frame: Samples) -> Samples:
        x = _check_frame(frame, self.rate_hz)
        if self._down is not None:
            x = zero_stuff(x)
        # Plain bytes slicing and joining: per-frame numpy calls cost more than the data here.
        data = x.tobytes()
        step = 2 * _BLOCK_SAMPLES
        cleaned = bytearray().join([self._run_block(data[i : i + step]) for i in range(0, len(data), step)])
        y = np.frombuffer(cleaned, dtype=np.int16)
        if self._down is not None:
            return self._down.process(y)
        return y

    def reset(self) -> None:
        if self._down is not None:
            self._down.reset()
        self._open()


class SpeexSuppressor(_BlockSuppressor):
    """Speex preprocessor noise suppression (no AGC, no VAD) at ``level_db`` (negative dB)."""

    mode = "speex"
    _core_delay_seconds = _SPEEX_DELAY_BLOCKS * _BLOCK_SECONDS

    def __init__(self, rate_hz: int, level_db: int = DEFAULT_LEVEL_DB) -> None:
        if not -60 <= level_db < 0:
            raise SuppressorError(f"speex suppression level must be in -60..-1 dB, got {level_db}")
        self.level_db = int(level_db)
        super().__init__(rate_hz)

    def _open(self) -> None:
        from speex_noise_cpp import create_speex_noise, process_10ms

        # auto_gain 0 leaves the AGC off: level changes are the caller's, not ours to make.
        self._state = create_speex_noise(0, self.level_db)
        self._run = process_10ms

    def _run_block(self, block: bytes) -> bytes:
        # The binding always reads 160 samples; _check_frame and the framing guarantee them.
        result: bytes = self._run(self._state, block)
        return result


class WebRtcSuppressor(_BlockSuppressor):
    """WebRTC noise suppression (no gain control) at the policy nearest to ``level_db``."""

    mode = "webrtc"
    _core_delay_seconds = _WEBRTC_DELAY_SAMPLES / _LIBRARY_RATE_HZ

    def __init__(self, rate_hz: int, level_db: int = DEFAULT_LEVEL_DB) -> None:
        if not -60 <= level_db < 0:
            raise SuppressorError(f"webrtc suppression level must be in -60..-1 dB, got {level_db}")
        self.policy = min(_WEBRTC_POLICY_DB, key=lambda p: abs(_WEBRTC_POLICY_DB[p] + level_db))
        super().__init__(rate_hz)

    def _open(self) -> None:
        from webrtc_noise_gain import AudioProcessor

        self._processor = AudioProcessor(0, self.policy)

    def _run_block(self, block: bytes) -> bytes:
        result: bytes = self._processor.Process10ms(block).audio
        return result


# speex_preprocess.h request codes (speexdsp 1.2).
_SPEEX_SET_DENOISE = 0
_SPEEX_SET_AGC = 2
_SPEEX_SET_NOISE_SUPPRESS = 18
_SPEEX_GET_NOISE_SUPPRESS = 19
_SPEEXDSP_SONAME = "libspeexdsp.so.1"


def _native_block_runner() -> Callable[[int, int, Samples, int], bytearray] | None:
    try:
        from media._native import run_blocks
    except ImportError:  # not built (no C compiler at install time): ctypes calls each block
        return None
    return run_blocks


_RUN_BLOCKS = _native_block_runner()


@functools.cache
def _speexdsp() -> ctypes.CDLL | None:
    """The system's libspeexdsp with its preprocessor's signatures declared, or None."""
    for name in (_SPEEXDSP_SONAME, ctypes.util.find_library("speexdsp")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.speex_preprocess_state_init.restype = ctypes.c_void_p
        lib.speex_preprocess_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.speex_preprocess_state_destroy.restype = None
        lib.speex_preprocess_state_destroy.argtypes = [ctypes.c_void_p]
        lib.speex_preprocess_ctl.restype = ctypes.c_int
        lib.speex_preprocess_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        lib.speex_preprocess_run.restype = ctypes.c_int
        lib.speex_preprocess_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        return lib
    return None


def speexdsp_available() -> bool:
    """True when Speex suppression runs on the system's libspeexdsp at the caller's own rate."""
    return _speexdsp() is not None


class SpeexDspSuppressor:
    """Speex preprocessor noise suppression (no AGC, no VAD) from the system's libspeexdsp, at
    ``rate_hz`` itself in 10 ms blocks; output lags input by one block (10 ms)."""

    mode = "speex"
    model_noise_reduction = False
    latency_seconds = _SPEEX_DELAY_BLOCKS * _BLOCK_SECONDS

    def __init__(self, rate_hz: int, level_db: int = DEFAULT_LEVEL_DB) -> None:
        _check_rate(rate_hz)
        if not -60 <= level_db < 0:
            raise SuppressorError(f"speex suppression level must be in -60..-1 dB, got {level_db}")
        lib = _speexdsp()
        if lib is None:
            raise SuppressorError(f"{_SPEEXDSP_SONAME} is not installed")
        self._lib = lib
        self.rate_hz = rate_hz
        self.level_db = int(level_db)
        self._block = rate_hz // 100
        self._run_address = ctypes.cast(lib.speex_preprocess_run, ctypes.c_void_p).value
        # Without the compiled block loop the preprocessor works in place on a ctypes buffer, seen
        # from numpy without a copy, made (and grown) when a chunk first needs it.
        self._capacity = 0
        self._state = 0  # the preprocessor state's address, set by _open
        self._finalizer: weakref.finalize[..., SpeexDspSuppressor] | None = None
        self._open()

    def _grow(self, samples: int) -> None:
        self._buffer = (ctypes.c_int16 * samples)()
        self._address = ctypes.addressof(self._buffer)
        self._view: Samples = np.frombuffer(memoryview(self._buffer).cast("B"), dtype=np.int16)
        self._capacity = samples

    def _open(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # destroys the previous state
        lib = self._lib
        state = lib.speex_preprocess_state_init(self._block, self.rate_hz)
        if not state:
            raise SuppressorError("speex_preprocess_state_init failed")
        # Denoise on, AGC off (level changes are the caller's, not ours to make), depth in dB.
        for request, value in ((_SPEEX_SET_DENOISE, 1), (_SPEEX_SET_AGC, 0),
                               (_SPEEX_SET_NOISE_SUPPRESS, self.level_db)):
            lib.speex_preprocess_ctl(state, request, ctypes.byref(ctypes.c_int(value)))
        self._state = state
        self._finalizer = weakref.finalize(self, lib.speex_preprocess_state_destroy, state)

    @property
    def configured_level_db(self) -> int:
        """The suppression depth as the library reports it back."""
        value = ctypes.c_int(0)
        self._lib.speex_preprocess_ctl(self._state, _SPEEX_GET_NOISE_SUPPRESS, ctypes.byref(value))
        return value.value

    def process(self, frame: Samples) -> Samples:
        x = _check_frame(frame, self.rate_hz)
        if _RUN_BLOCKS is not None and self._run_address:
            # One compiled call copies the frame and runs the preprocessor on each block of it.
            return np.frombuffer(_RUN_BLOCKS(self._run_address, self._state, x, self._block), _INT16)
        n = len(x)
        if n > self._capacity:
            self._grow(n)
        view = self._view[:n]
        view[:] = x
        run, state, address = self._lib.speex_preprocess_run, self._state, self._address
        step = 2 * self._block
        for offset in range(0, 2 * n, step):
            run(state, address + offset)
        return view.copy()

    def process_pcm(self, frame: Samples) -> bytes | bytearray:
        """``process`` with the result as native-endian PCM16 bytes (the chain's hand-off to a
        compiled resampler: no array is made around the compiled call's output)."""
        if _RUN_BLOCKS is not None and self._run_address and type(frame) is np.ndarray:
            if frame.dtype is not _INT16 or frame.ndim != 1 or len(frame) % self._block:
                _check_frame(frame, self.rate_hz)  # raises the same error as process
            return _RUN_BLOCKS(self._run_address, self._state, frame, self._block)
        return self.process(frame).tobytes()

    def reset(self) -> None:
        self._open()


# The line estimate of AdaptiveSuppressor (see its docstring). Energies are of 10 ms blocks, in dB.
_LINE_HISTORY_BLOCKS = 400  # 4 s: long enough to hold the caller's pauses
_LINE_FIRST_BLOCKS = 50  # 0.5 s heard before the first judgement
_LINE_UPDATE_BLOCKS = 25  # a new judgement every 250 ms
_LINE_AGREEMENT = 3  # judgements in a row that must call for suppression (0.75 s)
_SILENT_FLOOR_DB = 20.0  # re one LSB squared: an RMS of 10 LSB, -70 dBFS
_LOW_PERCENTILE = 2.0
_FLOOR_PERCENTILE = 10.0
_HIGH_PERCENTILE = 95.0
# Stationarity: the spread (dB) between the 10th and 2nd percentiles of the block energies, i.e.
# of the background heard in the caller's pauses. Steady noise (white, pink, hum) stays near 1 dB
# (up to 1.5 dB where the caller hardly pauses); babble's level follows its talkers' syllables,
# mostly 3 dB and more, though a few seconds of it can look steadier.
_STEADY_SPREAD_DB = 1.5
_UNSTEADY_SPREAD_DB = 2.5
# Noise: the distance (dB) from the 10th to the 95th percentile, the loud speech over the floor.
# Up to about 20 dB SNR (estimate 26-28 dB) Speex gains PESQ and STOI alike; from about 30 dB
# SNR on it costs STOI, and on a clean line PESQ too (-0.28): it is faded out in between.
_NOISY_SNR_DB = 28.0
_QUIET_SNR_DB = 38.0
_RAMP_PER_BLOCK = 0.02  # wet share moves at most 2 % per 10 ms: 0.5 s from dry to wet


class AdaptiveSuppressor:
    """Speex suppression at ``level_db`` only where the line calls for it (mode ``adaptive``).

    Theory of operation: Speex runs on every block so that its noise estimate is always current,
    but what the caller hears is a mix of its output (wet) and the input delayed by the same
    10 ms (dry, so the two are sample-aligned and any mix is free of comb filtering). The wet
    share follows a per-call estimate of the line, made from the energies of the last 4 s of
    10 ms blocks and renewed every 250 ms:

    ============================  ======================  ==========
    line                          estimate (dB)           wet share
    ============================  ======================  ==========
    clean (or noise far below)    95th - 10th > 38        0 (dry)
    steady noise, SNR <~ 20 dB    10th - 2nd < 1.5        1 (Speex)
    babble, other talkers         10th - 2nd > 2.5        0 (dry)
    ============================  ======================  ==========

    Between the edges the share is graded linearly (the product of both). A call starts dry and
    is first judged after 0.5 s; Speex is let in only once three judgements in a row (0.75 s)
    call for it, and the share moves by at most 2 % per block, so a change of line takes half a
    second and never clicks. Speex on a clean line or on babble lowers PESQ and STOI (see
    bench/media); dry output is exactly the input, so there the result cannot be worse.
    """

    mode = "adaptive"
    model_noise_reduction = False

    def __init__(self, rate_hz: int, level_db: int = DEFAULT_LEVEL_DB) -> None:
        _check_rate(rate_hz)
        if not -60 <= level_db < 0:
            raise SuppressorError(f"adaptive suppression level must be in -60..-1 dB, got {level_db}")
        self.rate_hz = rate_hz
        self.level_db = int(level_db)
        self._inner: SpeexDspSuppressor | SpeexSuppressor
        if speexdsp_available():
            self._inner = SpeexDspSuppressor(rate_hz, level_db)
            self._run_inner: Callable[[Samples], bytes | bytearray] = self._inner.process_pcm
        else:
            self._inner = SpeexSuppressor(rate_hz, level_db)
            self._run_inner = self._inner_bytes
        self.latency_seconds = self._inner.latency_seconds
        self._delay = round(self.latency_seconds * rate_hz)
        self._block = rate_hz // 100
        self._energies = np.zeros(_LINE_HISTORY_BLOCKS)
        self.reset()

    def _inner_bytes(self, x: Samples) -> bytes:
        return self._inner.process(x).tobytes()

    def reset(self) -> None:
        self._inner.reset()
        self._dry = bytes(2 * self._delay)  # the input's last 10 ms, as PCM16
        self._blocks = 0
        self.wet_share = 0.0  # what the last block got
        self._verdicts: tuple[float, ...] = ()
        self.target_share = 0.0

    def _judge(self) -> None:
        heard = self._energies[: min(self._blocks, _LINE_HISTORY_BLOCKS)]
        # Order statistics (np.partition) rather than np.percentile: a tenth of the CPU.
        ranks = [round(p / 100.0 * (len(heard) - 1)) for p in (_LOW_PERCENTILE, _FLOOR_PERCENTILE, _HIGH_PERCENTILE)]
        low, floor, high = (10.0 * np.partition(heard, ranks)[ranks]).tolist()
        spread, snr = floor - low, high - floor
        if floor < _SILENT_FLOOR_DB:
            snr = math.inf  # a floor of digital silence is no noise at all
        steady = min(1.0, max(0.0, (_UNSTEADY_SPREAD_DB - spread) / (_UNSTEADY_SPREAD_DB - _STEADY_SPREAD_DB)))
        noisy = min(1.0, max(0.0, (_QUIET_SNR_DB - snr) / (_QUIET_SNR_DB - _NOISY_SNR_DB)))
        # A verdict counts once it has held for the last few judgements: babble heard for a
        # moment can look steady; steady noise looks steady every time.
        self._verdicts = (*self._verdicts[1 - _LINE_AGREEMENT :], steady * noisy)
        self.target_share = min(self._verdicts) if len(self._verdicts) == _LINE_AGREEMENT else 0.0

    def process(self, frame: Samples) -> Samples:
        return np.frombuffer(self.process_pcm(frame), _INT16)

    def process_pcm(self, frame: Samples) -> bytes | bytearray:
        """``process`` with the result as native-endian PCM16 bytes. On a steady line (all dry or
        all wet, nearly every frame of a call) no array is made: the wet frame is Speex's own
        bytes, the dry one the previous frame's tail joined to this frame's head."""
        x = _check_frame(frame, self.rate_hz)
        wet = self._run_inner(x)
        n = 2 * len(x)
        line = self._dry + x.tobytes()
        dry, self._dry = line[:n], line[n:]
        size = self._block
        levels = _BLOCK_LEVELS(x, size) if _BLOCK_LEVELS is not None else _block_levels(x, size)
        # Block by block, so that judgements and the ramp fall on the same samples however the
        # audio is cut into frames.
        weights: npt.NDArray[np.float64] | None = None
        for i, level in enumerate(levels):
            self._energies[self._blocks % _LINE_HISTORY_BLOCKS] = level
            self._blocks += 1
            share = self.wet_share
            judge = self._blocks >= _LINE_FIRST_BLOCKS and self._blocks % _LINE_UPDATE_BLOCKS == 0
            if weights is None and share == self.target_share and not judge:
                continue  # nothing changes in this block
            if weights is None:
                weights = np.full(len(x), share)
            target = self.target_share
            if share != target:
                end = min(target, share + _RAMP_PER_BLOCK) if target > share else max(target, share - _RAMP_PER_BLOCK)
                weights[i * size : (i + 1) * size] = np.linspace(share, end, size + 1)[1:]
                weights[(i + 1) * size :] = end
                self.wet_share = end
            if judge:
                self._judge()  # takes effect from the next block
        if weights is None:
            if self.wet_share == 0.0:
                return dry
            if self.wet_share == 1.0:
                return wet
            weights = np.full(len(x), self.wet_share)
        d = np.frombuffer(dry, _INT16).astype(np.float64)
        y = d + weights * (np.frombuffer(wet, _INT16) - d)
        return np.rint(y).astype(np.int16).tobytes()


def _block_levels(x: Samples, size: int) -> list[float]:
    """log10(mean square + 1) of each ``size`` samples (media._native.block_levels in numpy)."""
    f = x.astype(np.float64).reshape(len(x) // size, size)
    levels: list[float] = np.log10(np.einsum("ij,ij->i", f, f) / size + 1.0).tolist()
    return levels


def _native_block_levels() -> Callable[[Samples, int], list[float]] | None:
    try:
        from media._native import block_levels
    except ImportError:  # not built: numpy computes the levels
        return None
    return block_levels


_BLOCK_LEVELS = _native_block_levels()


def working_rate_hz(mode: str, caller_rate_hz: int) -> int:
    """The rate at which ``mode`` suppresses without converting inside: the caller's own for
    Speex on libspeexdsp, otherwise 16 kHz, the only rate both wheels run at."""
    if mode in ("speex", "adaptive") and speexdsp_available() and caller_rate_hz in SUPPORTED_RATES_HZ:
        return caller_rate_hz
    return _LIBRARY_RATE_HZ


def make_suppressor(mode: str, rate_hz: int, level_db: int = DEFAULT_LEVEL_DB) -> NoiseSuppressor:
    """Build the suppressor for a tenant's ``mode`` at the caller's rate (8000 or 16000 Hz)."""
    if mode == "off":
        return PassthroughSuppressor(rate_hz)
    if mode == "model":
        return PassthroughSuppressor(rate_hz, model_noise_reduction=True)
    if mode == "speex":
        if speexdsp_available():
            return SpeexDspSuppressor(rate_hz, level_db)
        return SpeexSuppressor(rate_hz, level_db)
    if mode == "webrtc":
        return WebRtcSuppressor(rate_hz, level_db)
    if mode == "adaptive":
        return AdaptiveSuppressor(rate_hz, level_db)
    raise SuppressorError(f"unknown noise suppression mode {mode!r}; expected one of {SUPPRESSION_MODES}")
