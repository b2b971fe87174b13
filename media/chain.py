"""The per-call audio chains between the caller's rate and the model's rate.

Inbound (caller -> model): noise suppression, then rate conversion. Speex on the system's
libspeexdsp runs at the caller's rate, so the chain is suppress then 8 -> 24 kHz (13.625 ms in all:
10 ms of Speex, 3.625 ms of a filter that stops at 4 kHz, so nothing the 8 kHz line carried comes
out as an image above it). The suppressor wheels run only at 16 kHz: with a caller at 8 kHz and a
model at 24 kHz the chain then zero-stuffs 8 -> 16 kHz (no delay), suppresses, and converts
16 -> 24 kHz with a filter that also removes the zero-stuffing image (stopband from 4 kHz, gain 2;
see ``media.noise``), instead of letting the suppressor go back down to 8 kHz and the chain up
again: one conversion, 13.625 ms in all with Speex.

Outbound (model -> caller): rate conversion only.

Passthrough: equal rates and no local suppression give a chain that copies samples and reports zero
latency (a G.711 leg handed to a model that takes G.711 does not even decode; the bridge skips the
chain then, but an identity chain keeps call code uniform).

Each chain reports ``latency_seconds``, the sum of its stages' algorithmic delays.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from media.codec import MODEL_RATE_HZ
from media.noise import (
    DEFAULT_LEVEL_DB,
    DEFAULT_SUPPRESSION,
    IMAGE_STOPBAND_HZ,
    TELEPHONY_PASSBAND_HZ,
    ZERO_STUFF_GAIN,
    AdaptiveSuppressor,
    NoiseSuppressor,
    PassthroughSuppressor,
    SpeexDspSuppressor,
    make_suppressor,
    working_rate_hz,
)
from media.resample import StreamResampler, is_polyphase_pair, zero_stuff

Samples = npt.NDArray[np.int16]

_EMPTY: Samples = np.zeros(0, dtype=np.int16)
_INT16 = np.dtype(np.int16)


class ChainError(ValueError):
    """Samples a chain cannot take (wrong type or shape)."""


def _check_samples(samples: npt.ArrayLike) -> Samples:
    x = np.asarray(samples)
    if x.ndim != 1 or x.dtype != np.int16:
        raise ChainError(f"expected 1-D int16 samples, got {x.dtype} shape {x.shape}")
    return x


class InboundChain:
    """Caller audio (int16 at ``caller_rate_hz``) to model audio (int16 at ``model_rate_hz``)."""

    def __init__(
        self,
        caller_rate_hz: int,
        model_rate_hz: int = MODEL_RATE_HZ,
        suppression: str = DEFAULT_SUPPRESSION,
        level_db: int = DEFAULT_LEVEL_DB,
    ) -> None:
        self.caller_rate_hz = caller_rate_hz
        self.model_rate_hz = model_rate_hz
        self.suppression = suppression
        # The suppressor is built at the rate it really runs at (see media.noise): the caller's own
        # for Speex on libspeexdsp, else 16 kHz, which the chain converts to and from itself.
        probe = make_suppressor(suppression, working_rate_hz(suppression, caller_rate_hz), level_db)
        self._before: StreamResampler | None = None
        self._stuff = False
        if isinstance(probe, PassthroughSuppressor):
            self.suppressor: NoiseSuppressor | None = None
            self.model_noise_reduction = probe.model_noise_reduction
            self._after = StreamResampler(caller_rate_hz, model_rate_hz)
        else:
            self.suppressor = probe
            self.model_noise_reduction = False
            rate = probe.rate_hz
            if caller_rate_hz * 2 == rate and is_polyphase_pair(rate, model_rate_hz):
                self._stuff = True
                self._after = StreamResampler(
                    rate,
                    model_rate_hz,
                    passband_hz=TELEPHONY_PASSBAND_HZ * caller_rate_hz / 8000,
                    stopband_hz=IMAGE_STOPBAND_HZ * caller_rate_hz / 8000,
                    gain=ZERO_STUFF_GAIN,
                )
            else:
                if caller_rate_hz != rate:
                    self._before = StreamResampler(caller_rate_hz, rate)
                self._after = StreamResampler(rate, model_rate_hz)
        # Speex (adaptive or not) straight into the resampler, as PCM16 bytes, when nothing
        # converts before it.
        self._pcm_stages = (
            isinstance(self.suppressor, (SpeexDspSuppressor, AdaptiveSuppressor))
            and self._before is None
            and not self._stuff
        )
        # A suppressor takes whole 10 ms blocks; any partial block waits here for the next chunk.
        self._block = 0 if self.suppressor is None else self.suppressor.rate_hz // 100
        self._carry = _EMPTY
        self.latency_seconds = sum(
            s.latency_seconds for s in (self._before, self.suppressor, self._after) if s is not None
        )

    @classmethod
    def passthrough(cls, rate_hz: int) -> InboundChain:
        """An identity chain: same rate both sides, no local suppression."""
        return cls(rate_hz, rate_hz, suppression="off")

    @property
    def is_identity(self) -> bool:
        return self.suppressor is None and self.caller_rate_hz == self.model_rate_hz

    def process(self, samples: Samples) -> Samples:
        x = _check_samples(samples)
        if self.suppressor is None:
            return self._after.process(x)
        if self._stuff:
            x = zero_stuff(x)
        elif self._before is not None:
            x = self._before.process(x)
        if not len(self._carry) and not len(x) % self._block:
            # The usual case (whole 10 ms blocks, nothing carried): no slicing or copies.
            return self._after.process(self.suppressor.process(x))
        if len(self._carry):
            x = np.concatenate((self._carry, x))
        usable = len(x) - len(x) % self._block
        self._carry = x[usable:].copy() if usable < len(x) else _EMPTY
        if usable:
            x = self.suppressor.process(x[:usable])
        else:
            x = x[:0]
        return self._after.process(x)

    def process_pcm(self, samples: Samples) -> bytes | bytearray:
        """``process`` with the result as native-endian PCM16 bytes, what the model is sent.

        With Speex at the caller's rate the 20 ms frame goes from one compiled stage to the next
        as bytes (the per-frame case); anything else goes through ``process``."""
        if (self._pcm_stages and not len(self._carry) and type(samples) is np.ndarray
                and samples.dtype is _INT16 and samples.ndim == 1 and len(samples) % self._block == 0):
            assert isinstance(self.suppressor, (SpeexDspSuppressor, AdaptiveSuppressor))
            return self._after.process_pcm(self.suppressor.process_pcm(samples))
        return self.process(samples).tobytes()

    def reset(self) -> None:
        for stage in (self._before, self.suppressor, self._after):
            if stage is not None:
                stage.reset()
        self._carry = _EMPTY


class OutboundChain:
    """Model audio (int16 at ``model_rate_hz``) to caller audio (int16 at ``caller_rate_hz``)."""

    def __init__(self, model_rate_hz: int, caller_rate_hz: int) -> None:
        self.model_rate_hz = model_rate_hz
        self.caller_rate_hz = caller_rate_hz
        self._resampler = StreamResampler(model_rate_hz, caller_rate_hz)
        self.latency_seconds = self._resampler.latency_seconds

    @classmethod
    def passthrough(cls, rate_hz: int) -> OutboundChain:
        return cls(rate_hz, rate_hz)

    @property
    def is_identity(self) -> bool:
        return self.model_rate_hz == self.caller_rate_hz

    def process(self, samples: Samples) -> Samples:
        return self._resampler.process(_check_samples(samples))

    def reset(self) -> None:
        self._resampler.reset()

    def flush(self) -> Samples:
        return self._resampler.flush()
