"""Per-listener admission by source: the allow-list of networks and a per-source set-up rate.

A peer outside the allow-list is refused before any work (the TCP listeners close the connection
at once; the HTTP listener answers 403). Call set-ups from one source address go through a token
bucket: ``rate`` per second with a burst of ``burst``; past it a set-up is refused at once (never
queued), so one source flooding a listener cannot take the CPU from other sources' calls. Every
refusal is counted (``callbridge_connections_refused_total{listener,reason}``); the log gets at
most one line per listener and reason per ``log_interval`` seconds, with the count since the last.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from bridge.ops.metrics import Metrics
from bridge.security.networks import Network, SourceNetworks

if TYPE_CHECKING:
    from bridge.settings import ListenerSettings, Settings

log = logging.getLogger(__name__)

Clock = Callable[[], float]

# Sources whose buckets are kept; beyond this the least recently seen is forgotten (a forgotten
# source starts again with a full bucket, which only a spoofing-free TCP peer can obtain).
MAX_SOURCES = 10_000


class Refusal(enum.StrEnum):
    NETWORK = "network"
    RATE = "rate"
    AUTH = "auth"
    ORIGIN = "origin"


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``take`` spends one when there is one."""

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = now

    def take(self, now: float) -> bool:
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class SourceGate:
    """Admission by source address for one listener."""

    def __init__(
        self,
        listener: str,
        allow_from: Iterable[Network],
        metrics: Metrics,
        *,
        rate: float,
        burst: int,
        log_interval: float = 10.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.listener = listener
        self.networks = SourceNetworks(allow_from)
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._metrics = metrics
        self._log_interval = log_interval
        self._last_logged: dict[Refusal, float] = {}
        self._unlogged: dict[Refusal, int] = {}

    def allows_peer(self, host: str | None) -> bool:
        """The allow-list: False (and counted) for a peer that may not connect at all."""
        if self.networks.allows(host):
            return True
        self.refused(Refusal.NETWORK, host)
        return False

    def allows_setup(self, host: str | None) -> bool:
        """The per-source rate of call set-ups: False (and counted) when over it."""
        key = host or ""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
            if len(self._buckets) > MAX_SOURCES:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        if bucket.take(now):
            return True
        self.refused(Refusal.RATE, host)
        return False

    def refused(self, reason: Refusal, host: str | None) -> None:
        """Count a refusal; log it unless one was logged for this reason within the interval."""
        self._metrics.connections_refused.labels(self.listener, reason.value).inc()
        now = self._clock()
        last = self._last_logged.get(reason)
        if last is not None and now - last < self._log_interval:
            self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
            return
        self._last_logged[reason] = now
        more = self._unlogged.pop(reason, 0)
        log.warning("%s: refused %s from %s%s", self.listener, _WHY[reason], host or "an unknown address",
                    f" (and {more} more since the last report)" if more else "")


_WHY = {
    Refusal.NETWORK: "a connection (source outside the allow-list)",
    Refusal.RATE: "a call set-up (over the per-source set-up rate)",
    Refusal.AUTH: "a call (missing or invalid credentials)",
    Refusal.ORIGIN: "a WebSocket (browser Origin not allowed)",
}


def peer_host(peername: object) -> str | None:
    """The address part of a socket's peer name (IPv4 or IPv6 tuple)."""
    if isinstance(peername, tuple) and peername and isinstance(peername[0], str):
        return peername[0]
    return None


def gate_for(name: str, listener: ListenerSettings, settings: Settings, metrics: Metrics,
             clock: Clock = time.monotonic) -> SourceGate:
    """The gate of one listener, from its allow-list and the deployment's set-up rate."""
    return SourceGate(name, listener.allow_from, metrics, rate=settings.limits.setup_rate,
                      burst=settings.limits.setup_burst,
                      log_interval=settings.security.refusal_log_interval, clock=clock)
