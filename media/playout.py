"""Playout buffer: agent audio waiting to be sent to the caller, one frame at a time.

The model delivers audio in bursts far faster than real time; the buffer holds it at the caller's
sample rate until the pacer takes one frame per period. It remembers how many samples of each
conversation item were actually handed out, which is what a barge-in truncation must report.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.int16]

_PLAYED_ITEMS_KEPT = 32


@dataclass(frozen=True, slots=True)
class PlayoutFrame:
    samples: Samples
    item_id: str | None  # the item whose audio starts this frame
    audio_samples: int  # samples that came from the model (the rest is padding)


class PlayoutBuffer:
    """Bounded FIFO of int16 samples tagged with the conversation item they belong to."""

    def __init__(self, rate_hz: int, frame_samples: int, max_seconds: float = 120.0) -> None:
        if frame_samples <= 0:
            raise ValueError("frame_samples must be positive")
        self.rate_hz = rate_hz
        self.frame_samples = frame_samples
        self.max_samples = int(max_seconds * rate_hz)
        self._chunks: deque[tuple[Samples, str | None]] = deque()
        self._head_offset = 0
        self._buffered = 0
        self._ended = False
        self._played: dict[str, int] = {}
        self.dropped_samples = 0

    @property
    def buffered_samples(self) -> int:
        return self._buffered

    @property
    def buffered_seconds(self) -> float:
        return self._buffered / self.rate_hz

    def write(self, samples: Samples, item_id: str | None) -> int:
        """Append audio; returns the number of samples dropped (oldest first) to stay bounded."""
        if len(samples) == 0:
            return 0
        # A copy: callers decode into buffers they may reuse, and this audio is played much later.
        samples = np.array(samples, dtype=np.int16)
        if samples.ndim != 1:
            raise ValueError(f"expected 1-D int16 samples, got shape {samples.shape}")
        self._chunks.append((samples, item_id))
        self._buffered += len(samples)
        self._ended = False
        dropped = 0
        while self._buffered > self.max_samples and self._chunks:
            head, _ = self._chunks[0]
            available = len(head) - self._head_offset
            excess = self._buffered - self.max_samples
            if available <= excess:
                self._chunks.popleft()
                self._head_offset = 0
                self._buffered -= available
                dropped += available
            else:
                self._head_offset += excess
                self._buffered -= excess
                dropped += excess
        self.dropped_samples += dropped
        return dropped

    def end_of_audio(self) -> None:
        """The current response is complete: a trailing partial frame may be padded and sent."""
        self._ended = True

    def read_frame(self) -> PlayoutFrame | None:
        """Take one frame, or None when less than a frame is buffered and more is expected."""
        n = self.frame_samples
        if self._buffered == 0 or (self._buffered < n and not self._ended):
            return None
        head, item_id = self._chunks[0]
        offset = self._head_offset
        if len(head) - offset >= n:
            # The common case, once per frame per call: the frame lies inside one chunk. Chunks are
            # the buffer's own copies and never written to, so the frame can be a view of one.
            end = offset + n
            if end == len(head):
                self._chunks.popleft()
                self._head_offset = 0
            else:
                self._head_offset = end
            self._buffered -= n
            if item_id is not None:
                played = self._played
                if item_id in played:
                    played[item_id] += n
                else:
                    played[item_id] = n
                    if len(played) > _PLAYED_ITEMS_KEPT:
                        del played[next(iter(played))]
            return PlayoutFrame(head[offset:end], item_id, n)
        out = np.zeros(n, dtype=np.int16)
        filled = 0
        first_item: str | None = None
        while filled < n and self._chunks:
            head, item_id = self._chunks[0]
            if filled == 0:
                first_item = item_id
            take = min(n - filled, len(head) - self._head_offset)
            out[filled : filled + take] = head[self._head_offset : self._head_offset + take]
            filled += take
            self._head_offset += take
            if item_id is not None:
                self._played[item_id] = self._played.get(item_id, 0) + take
            if self._head_offset >= len(head):
                self._chunks.popleft()
                self._head_offset = 0
        self._buffered -= filled
        if len(self._played) > _PLAYED_ITEMS_KEPT:
            for key in list(self._played)[: len(self._played) - _PLAYED_ITEMS_KEPT]:
                del self._played[key]
        return PlayoutFrame(out, first_item, filled)

    def clear(self) -> int:
        """Drop everything buffered (barge-in); returns the number of samples dropped."""
        dropped = self._buffered
        self._chunks.clear()
        self._head_offset = 0
        self._buffered = 0
        self._ended = False
        return dropped

    def played_ms(self, item_id: str) -> int:
        """Milliseconds of ``item_id`` handed to the caller so far."""
        return self._played.get(item_id, 0) * 1000 // self.rate_hz
