"""What a far end that plays audio on its own clock has actually played, from its mark echoes.

Twilio Media Streams and the jambonz fork of mod_audio_fork queue the audio they are sent and play
it at their own pace. Both echo a named *mark* once everything queued before it has played, and
both can be told to drop what is queued (Twilio ``clear``, mod_audio_fork ``killAudio``). The
daemon paces its audio at real time, so the far end holds only its jitter buffer and the network
in flight; but that is still 60-300 ms, and a barge-in truncation that reported what was *sent*
would tell the model the caller heard words they never heard.

Model: the far end plays in order at real time, ``delay`` seconds after the audio was sent, where
``delay`` is measured on every echo as (echo arrival - mark sent) — a figure that includes the
echo's return trip, so the estimate errs towards "heard less". The played position at ``now`` is
the audio sent up to ``now - delay``, never less than what an echo has confirmed and never more
than what was sent. Before the first echo (or with a far end that never echoes) nothing is
subtracted: the estimate is what was sent.

Pure arithmetic: times are monotonic seconds passed in, durations are milliseconds.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass

# Send times kept for the lookup: far more than any far-end delay worth modelling.
HISTORY_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class PendingMark:
    name: str
    position_ms: float  # audio sent before the mark
    sent_at: float


class RemotePlayback:
    """Audio sent to a far end that buffers it, and how much of it has been played."""

    def __init__(self, prefix: str = "cb") -> None:
        self._prefix = prefix
        self._counter = 0
        self._sent_ms = 0.0
        self._marked_ms = 0.0  # position of the last mark placed
        self._floor_ms = 0.0  # confirmed played (or discarded by a clear)
        self._times: deque[float] = deque()
        self._ends: deque[float] = deque()  # position after each chunk, parallel to _times
        self._lengths: deque[float] = deque()
        self._pending: dict[str, PendingMark] = {}
        self.delay: float | None = None  # seconds from sending to played-and-echoed
        self.echoes = 0

    @property
    def sent_ms(self) -> float:
        return self._sent_ms

    @property
    def pending_marks(self) -> int:
        return len(self._pending)

    def sent(self, now: float, duration_ms: float) -> None:
        """``duration_ms`` of audio was handed to the far end at ``now``."""
        self._sent_ms += duration_ms
        self._times.append(now)
        self._ends.append(self._sent_ms)
        self._lengths.append(duration_ms)
        horizon = now - HISTORY_SECONDS
        while self._times and self._times[0] < horizon:
            self._times.popleft()
            self._ends.popleft()
            self._lengths.popleft()

    @property
    def unmarked_ms(self) -> float:
        """Audio sent since the last mark (or clear)."""
        return self._sent_ms - self._marked_ms

    def place_mark(self, now: float) -> str | None:
        """Name for a mark placed after everything sent so far; None when nothing was sent since."""
        if self._sent_ms <= self._marked_ms:
            return None
        self._counter += 1
        name = f"{self._prefix}-{self._counter}"
        self._pending[name] = PendingMark(name, self._sent_ms, now)
        self._marked_ms = self._sent_ms
        return name

    def echoed(self, name: str, now: float) -> bool:
        """The far end echoed ``name``; False when the mark is unknown or was cleared."""
        mark = self._pending.pop(name, None)
        if mark is None:
            return False
        # Marks are echoed in order: any earlier one still pending was skipped or lost.
        for other in [m for m in self._pending.values() if m.position_ms <= mark.position_ms]:
            del self._pending[other.name]
        self.echoes += 1
        self._floor_ms = max(self._floor_ms, mark.position_ms)
        self.delay = max(0.0, now - mark.sent_at)
        return True

    def clear(self) -> None:
        """The far end was told to drop its queue: all audio sent so far is accounted for.

        Echoes of marks placed before the clear say nothing about playback (Twilio echoes them
        when it drops them), so they are forgotten.
        """
        self._pending.clear()
        self._floor_ms = self._sent_ms
        self._marked_ms = self._sent_ms

    def _sent_by(self, t: float) -> float:
        """Audio position played by time ``t`` if every chunk ended playing when it was sent.

        ``t`` is ``now - delay``; a chunk of L ms sent at ``s`` is taken to play from ``s - L`` to
        ``s`` on that shifted clock (back to back, as the pacer sends them).
        """
        i = bisect.bisect_right(self._times, t)
        if i == len(self._times):
            return self._ends[-1]
        start = self._ends[i] - self._lengths[i]
        length = self._lengths[i]
        return start + min(length, max(0.0, (t - self._times[i]) * 1000.0 + length))

    def played_ms(self, now: float) -> float:
        """Estimated audio the far end has played by ``now``."""
        if self.delay is None:
            return self._sent_ms
        estimate = self._sent_by(now - self.delay) if self._times else self._sent_ms
        return min(self._sent_ms, max(self._floor_ms, estimate))

    def unplayed_ms(self, now: float) -> float:
        """Audio sent but not yet played by ``now``."""
        return max(0.0, self._sent_ms - self.played_ms(now))
