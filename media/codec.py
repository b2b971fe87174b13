"""Audio formats on the caller leg and their conversion to and from int16 samples."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from media import g711

Samples = npt.NDArray[np.int16]

FRAME_MS = 20
TELEPHONY_RATE_HZ = 8000
MODEL_RATE_HZ = 24000


class Encoding(enum.StrEnum):
    SLIN = "slin"  # signed 16-bit little-endian (AudioSocket, chan_websocket, FreeSWITCH)
    SLIN_BE = "slin_be"  # signed 16-bit big-endian (RTP L16, RFC 3551 section 4.5.11)
    ULAW = "ulaw"
    ALAW = "alaw"


_BE_INT16 = np.dtype(">i2")
# Per-frame calls pass dtype objects positionally: np.frombuffer(b, dtype=np.int16) spends about
# 0.3 us more per call turning the keyword and the type into a dtype.
_INT16 = np.dtype(np.int16)


@dataclass(frozen=True, slots=True)
class AudioFormat:
    encoding: Encoding
    rate_hz: int

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding in (Encoding.SLIN, Encoding.SLIN_BE) else 1

    def samples_for_ms(self, ms: int) -> int:
        return self.rate_hz * ms // 1000

    def bytes_for_ms(self, ms: int) -> int:
        return self.samples_for_ms(ms) * self.bytes_per_sample

    @property
    def frame_bytes(self) -> int:
        """Bytes in one 20 ms frame."""
        return self.bytes_for_ms(FRAME_MS)

    def duration_ms(self, nbytes: int) -> float:
        return nbytes / self.bytes_per_sample * 1000.0 / self.rate_hz

    def decode(self, payload: bytes) -> Samples:
        if self.encoding is Encoding.SLIN:
            usable = len(payload) & ~1
            return np.frombuffer(payload, _INT16, usable // 2)
        if self.encoding is Encoding.SLIN_BE:
            usable = len(payload) & ~1
            return np.frombuffer(payload, dtype=_BE_INT16, count=usable // 2).astype(np.int16)
        if self.encoding is Encoding.ULAW:
            return g711.ulaw_decode(payload)
        return g711.alaw_decode(payload)

    def encode(self, samples: Samples) -> bytes:
        if self.encoding is Encoding.SLIN:
            if type(samples) is np.ndarray and samples.dtype is _INT16:
                return samples.tobytes()  # the per-frame case: no conversion to ask numpy for
            return np.asarray(samples, dtype=np.int16).tobytes()
        if self.encoding is Encoding.SLIN_BE:
            return np.asarray(samples, dtype=np.int16).astype(_BE_INT16).tobytes()
        if self.encoding is Encoding.ULAW:
            return g711.ulaw_encode(samples)
        return g711.alaw_encode(samples)

    def silence(self, ms: int = FRAME_MS) -> bytes:
        n = self.samples_for_ms(ms)
        if self.encoding is Encoding.ULAW:
            return bytes([g711.MULAW_SILENCE]) * n
        if self.encoding is Encoding.ALAW:
            return bytes([g711.ALAW_SILENCE]) * n
        return bytes(2 * n)

    def __str__(self) -> str:
        return f"{self.encoding.value}@{self.rate_hz}"


SLIN_8K = AudioFormat(Encoding.SLIN, 8000)
SLIN_16K = AudioFormat(Encoding.SLIN, 16000)
SLIN_24K = AudioFormat(Encoding.SLIN, 24000)
ULAW_8K = AudioFormat(Encoding.ULAW, 8000)
ALAW_8K = AudioFormat(Encoding.ALAW, 8000)
