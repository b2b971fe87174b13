"""Deadline arithmetic for sending one frame per frame period on a monotonic clock.

The pacer never reads a clock: the caller passes ``now`` (a monotonic reading in seconds). Frames
are due at ``t0 + n * period``. Sending late is measured as lateness; after a long stall (the event
loop blocked, the host paused) the schedule is re-anchored rather than caught up, because catching
up would send audio to the phone faster than real time and the far end would drop or squash it.
"""

from __future__ import annotations

from dataclasses import dataclass

FRAME_PERIOD = 0.020


@dataclass(slots=True)
class PacerStatistics:
    frames: int = 0
    late_frames: int = 0
    resyncs: int = 0
    max_lateness: float = 0.0
    total_lateness: float = 0.0


class Pacer:
    """Schedule of frame deadlines: ``deadline = t0 + n * period``."""

    def __init__(self, start: float, period: float = FRAME_PERIOD, max_catch_up: int = 3) -> None:
        if period <= 0:
            raise ValueError("period must be positive")
        self.period = period
        self._t0 = start
        self._n = 0
        # How many periods late a frame may be before the schedule is re-anchored.
        self._max_catch_up = max_catch_up
        self.stats = PacerStatistics()

    @property
    def next_deadline(self) -> float:
        return self._t0 + self._n * self.period

    def delay(self, now: float) -> float:
        """Seconds to wait before the next frame is due (zero when it is due or overdue)."""
        return max(0.0, self.next_deadline - now)

    def frame_sent(self, now: float) -> float:
        """Record that the due frame was sent at ``now``; returns its lateness in seconds."""
        lateness = max(0.0, now - self.next_deadline)
        stats = self.stats
        stats.frames += 1
        stats.total_lateness += lateness
        if lateness > stats.max_lateness:
            stats.max_lateness = lateness
        if lateness > self.period / 2:
            stats.late_frames += 1
        self._n += 1
        if lateness > self._max_catch_up * self.period:
            # Re-anchor: the next frame is due one period from now, not immediately.
            stats.resyncs += 1
            self._t0 = now + self.period
            self._n = 0
        return lateness

    def restart(self, now: float) -> None:
        """Start a new schedule whose first frame is due at ``now`` (after an idle stretch: a
        stream that pauses between talkspurts starts the next one at once, not on the old grid)."""
        self._t0 = now
        self._n = 0


_TOLERANCE_SECONDS = 1e-6


class RealTimeLimit:
    """Admits audio from a source at no more than real time, with bounded slack either way.

    A virtual-scheduling form of the Generic Cell Rate Algorithm (ITU-T I.371 annex A), counted in
    seconds of audio: ``tat`` is when the audio admitted so far would finish playing at real time.
    A chunk may pass when ``tat + duration <= now + lead``: the source may run ``lead`` seconds ahead
    of real time (bursty networks, large frames; at least one frame, since a frame is sent once it
    is complete). After a stall the source may catch up on at most
    ``catch_up`` seconds of lateness at once (audio delayed in the network arrives in a burst);
    longer silences earn no credit, so a client that says nothing for a minute cannot then push a
    minute of audio in a second.
    """

    def __init__(self, lead: float, catch_up: float) -> None:
        if lead < 0 or catch_up < 0:
            raise ValueError("lead and catch_up must not be negative")
        self.lead = lead
        self.catch_up = catch_up
        self._tat: float | None = None

    def _base(self, now: float) -> float:
        if self._tat is None:
            return now
        return max(self._tat, now - self.catch_up)

    def delay(self, now: float, duration: float) -> float:
        """Seconds until ``duration`` seconds of audio may pass (zero: now)."""
        wait = self._base(now) + duration - self.lead - now
        # Sums of frame durations carry rounding error; a microsecond is no reason to queue.
        return wait if wait > _TOLERANCE_SECONDS else 0.0

    def admit(self, now: float, duration: float) -> None:
        """Record that ``duration`` seconds of audio passed at ``now``."""
        self._tat = self._base(now) + duration
