"""Compiled streaming polyphase resampler (media.resample), block runner and levels (media.noise),
WebSocket frames of base64 audio (bridge.core.realtime, bridge.wsmedia.leg) and G.711 table lookups
(media.g711);
media/_native.c."""

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

# numpy arrays export the buffer protocol, but numpy's stubs only say so for Python >= 3.12.
_Int16Buffer = Buffer | npt.NDArray[np.int16]
_TapBuffer = Buffer | npt.NDArray[np.float32] | npt.NDArray[np.float64]

class Polyphase:
    """Streaming rational-ratio FIR resampler for int16 audio.

    ``group`` is the (window, up) float32 or float64 tap matrix of one group of ``up`` outputs that
    consumes ``down`` inputs; its rows start ``lookback`` samples before the group's first input.
    """

    def __new__(cls, group: _TapBuffer, up: int, down: int, lookback: int) -> Polyphase: ...
    def process(self, samples: _Int16Buffer, /) -> bytearray:
        """Filter 1-D native int16 samples (or even-length PCM16 bytes); the int16 output as bytes."""
    def reset(self) -> None:
        """Forget the history and any pending input."""
    @property
    def pending_input(self) -> int:
        """Input samples waiting for a whole group."""
    @property
    def up(self) -> int: ...
    @property
    def down(self) -> int: ...

def run_blocks(function: int, state: int, samples: _Int16Buffer, block: int, /) -> bytearray:
    """Copy ``samples`` and call ``int function(void *state, int16_t *x)`` on each ``block`` of the
    copy in place (both given as addresses); return the copy."""

def block_levels(samples: _Int16Buffer, block: int, /) -> list[float]:
    """log10(mean square + 1) of each ``block`` samples (bels re one LSB squared)."""

def masked_text_frame(head: Buffer, data: Buffer, tail: Buffer, key: Buffer, /) -> bytes:
    """One final, masked WebSocket TEXT frame whose payload is ``head + base64(data) + tail``,
    masked with the 4-byte ``key``; ``head`` and ``tail`` must be ASCII."""

def text_frame(head: Buffer, data: Buffer, tail: Buffer, /) -> bytes:
    """One final, unmasked (server) WebSocket TEXT frame whose payload is
    ``head + base64(data) + tail``; ``head`` and ``tail`` must be ASCII."""

def expand(table: Buffer, codes: Buffer, /) -> bytearray:
    """Native int16 ``table[c]`` for each byte ``c`` of ``codes`` (``table``: 256 int16 values)."""

def compress(table: Buffer, samples: _Int16Buffer, /) -> bytes:
    """One byte ``table[s & 0xFFFF]`` per sample of 1-D native int16 ``samples`` (``table``: 65536 bytes)."""
