"""A token bucket for events a peer controls (DTMF digits, control messages), per call.

``burst`` events may pass at once; after that, one more every ``1 / rate`` seconds. An event over
the limit is refused, not queued: the caller drops it and counts it.
"""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]

# A person presses at most a few keys a second, and a PIN or an account number dialled at speed is
# a burst of a dozen or two (RFC 4733 section 2.5.1.6: minimum inter-digit interval 50 ms).
DTMF_BURST = 24
DTMF_PER_SECOND = 4.0


class TokenBucket:
    def __init__(self, burst: int, rate: float, clock: Clock) -> None:
        if burst < 1 or rate <= 0:
            raise ValueError("burst must be at least 1 and rate positive")
        self.burst = burst
        self.rate = rate
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def allow(self) -> bool:
        """Take one token if there is one."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
