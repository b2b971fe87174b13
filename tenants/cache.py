"""CachingDirectory: a TTL cache in front of a tenant backend that keeps answering when it is down.

Theory of operation
-------------------
Answers are cached per normalised number (and per slug for ``tenant_by_slug``), found and not
found alike; "not found" lives ``negative_ttl`` seconds, shorter than ``ttl``, so a newly added
number starts working soon even without a change notification.

==========================  =====================================================  ===========
state of the entry          what a lookup does                                     counted as
==========================  =====================================================  ===========
fresh                       return it                                              ``hit``
absent or expired           ask the backend (bounded by ``timeout``), store it     ``miss``
expired, backend fails      return the old answer (at most ``max_stale`` old) and  ``stale``
                            keep refreshing it in the background
absent, backend fails       raise DirectoryUnavailable                             ``error``
==========================  =====================================================  ===========

After a failure the backend counts as down for ``retry_interval`` seconds: lookups with an old
answer get it at once instead of waiting out another timeout, while a background fetch (at most
one per ``probe_interval``) probes the backend and refreshes that entry; its first success makes
the backend count as up again. Lookups without an old answer still ask the backend.

Concurrent lookups of one key share one backend fetch. A fetch outlives a caller that stopped
waiting for it (the caller's call goes on with a stale answer), so the answer still lands in the
cache. ``invalidate()`` (file reload, database NOTIFY) expires entries without dropping them, so
they remain usable as stale answers; a fetch that started before an invalidation stores its answer
already expired, since it may predate the change.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tenants.config import TenantConfig, TenantError
from tenants.directory import DirectoryError, DirectoryUnavailable, Resolution, TenantDirectory
from tenants.numbers import NumberError, normalize_number

log = logging.getLogger(__name__)

DEFAULT_TTL = 30.0
DEFAULT_NEGATIVE_TTL = 5.0
DEFAULT_TIMEOUT = 2.0
DEFAULT_FETCH_TIMEOUT = 30.0  # bound on a fetch nobody waits for any more
DEFAULT_MAX_STALE = 24 * 3600.0
DEFAULT_RETRY_INTERVAL = 5.0
DEFAULT_PROBE_INTERVAL = 1.0  # at most one background fetch per second while the store is down
DEFAULT_MAX_ENTRIES = 10_000

HIT = "hit"
MISS = "miss"
STALE = "stale"
ERROR = "error"

Key = tuple[str, str]


class _LabelledCounter(Protocol):
    def labels(self, *args: Any, **kwargs: Any) -> Any: ...


CacheObserver = Callable[[str], object] | _LabelledCounter
"""Told the result of every lookup (hit, miss, stale, error): a callable, or a Prometheus counter
with a ``result`` label."""


@dataclass(slots=True)
class _Entry:
    value: Any
    stored_at: float
    fresh_until: float


class CachingDirectory:
    """Wraps a TenantDirectory backend; the app uses this object as its directory."""

    def __init__(
        self,
        backend: TenantDirectory,
        ttl: float = DEFAULT_TTL,
        *,
        negative_ttl: float = DEFAULT_NEGATIVE_TTL,
        timeout: float = DEFAULT_TIMEOUT,
        fetch_timeout: float = DEFAULT_FETCH_TIMEOUT,
        max_stale: float = DEFAULT_MAX_STALE,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
        probe_interval: float = DEFAULT_PROBE_INTERVAL,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        default_country: str = "BR",
        observer: CacheObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.ttl = ttl
        self.negative_ttl = min(negative_ttl, ttl)
        self.timeout = timeout
        self.fetch_timeout = max(fetch_timeout, timeout)
        self.max_stale = max_stale
        self.retry_interval = retry_interval
        self.probe_interval = probe_interval
        self.max_entries = max_entries
        self.default_country = default_country
        self.observer = observer
        self.clock = clock
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._inflight: dict[Key, asyncio.Task[Any]] = {}
        self._generation = 0
        self._down_until = -math.inf
        self._probe_due = -math.inf
        self._down_logged = False
        self._closed = False
        add_listener = getattr(backend, "add_change_listener", None)
        if callable(add_listener):
            add_listener(self.invalidate)

    # -- TenantDirectory -------------------------------------------------------------------------

    async def explain(self, dialled: str) -> Resolution | None:
        try:
            number = normalize_number(dialled, self.default_country)
        except NumberError:
            return None
        result: Resolution | None = await self._lookup(("number", number), self.backend.explain, number)
        return result

    async def resolve(self, dialled: str) -> TenantConfig | None:
        found = await self.explain(dialled)
        return found.tenant if found else None

    async def tenant_by_slug(self, slug: str) -> TenantConfig | None:
        result: TenantConfig | None = await self._lookup(("slug", slug), self.backend.tenant_by_slug, slug)
        return result

    async def list_tenants(self) -> list[TenantConfig]:
        """Straight from the backend (an operator's question, not a call's)."""
        try:
            async with asyncio.timeout(self.fetch_timeout):
                return await self.backend.list_tenants()
        except TimeoutError:
            raise DirectoryUnavailable(
                f"tenant store did not answer within {self.fetch_timeout:g} s"
            ) from None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise
            except (DirectoryError, TenantError, TimeoutError):
                pass  # the fetch's own failure was already logged
        await self.backend.close()

    # -- change handling ------------------------------------------------------------------------

    def invalidate(self) -> None:
        """Expire every cached answer (kept for stale use); the next lookup asks the backend."""
        self._generation += 1
        for entry in self._entries.values():
            entry.fresh_until = -math.inf
        log.debug("tenant cache invalidated (%d entries)", len(self._entries))

    async def reload(self) -> bool:
        """SIGHUP: reload the backend if it can (the tenants file), and expire the cache."""
        reload = getattr(self.backend, "reload", None)
        ok = True
        if callable(reload):
            ok = bool(await reload())
        self.invalidate()
        return ok

    async def watch(self, interval: float | None = None) -> None:
        """Run the backend's change watcher (file polling, LISTEN/NOTIFY), if it has one."""
        watch = getattr(self.backend, "watch", None)
        if not callable(watch):
            return
        await (watch() if interval is None else watch(interval))

    def statistics(self) -> dict[str, Any]:
        return {
            "entries": len(self._entries),
            "inflight": len(self._inflight),
            "backend_down": self.clock() < self._down_until,
        }

    # -- internals ------------------------------------------------------------------------------

    def _observe(self, result: str) -> None:
        observer = self.observer
        if observer is None:
            return
        labels = getattr(observer, "labels", None)
        if callable(labels):
            labels(result=result).inc()
        else:
            observer(result)  # type: ignore[operator]

    async def _lookup(self, key: Key, fetch: Callable[[str], Awaitable[Any]], arg: str) -> Any:
        now = self.clock()
        entry = self._entries.get(key)
        if entry is not None and now < entry.fresh_until:
            self._entries.move_to_end(key)
            self._observe(HIT)
            return entry.value
        usable = entry is not None and now - entry.stored_at <= self.max_stale
        if usable and now < self._down_until:
            assert entry is not None
            if now >= self._probe_due:  # refresh in the background (rate-limited), answer now
                self._probe_due = now + self.probe_interval
                self._start_fetch(key, fetch, arg)
            return self._serve_stale(key, entry, now, None)
        task = self._start_fetch(key, fetch, arg)
        try:
            async with asyncio.timeout(self.timeout):
                value = await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                raise DirectoryUnavailable("tenant directory closed") from None
            raise
        except (DirectoryError, TenantError, TimeoutError) as exc:
            reason = exc if not isinstance(exc, TimeoutError) else f"no answer within {self.timeout:g} s"
            if not isinstance(exc, TenantError):  # one bad record does not make the store "down"
                self._mark_down(reason)
            if usable:
                assert entry is not None
                return self._serve_stale(key, entry, now, reason)
            self._observe(ERROR)
            if isinstance(exc, TimeoutError):
                raise DirectoryUnavailable(f"tenant store: {reason}") from None
            raise
        self._observe(MISS)
        return value

    def _serve_stale(self, key: Key, entry: _Entry, now: float, reason: object) -> Any:
        self._observe(STALE)
        age = now - entry.stored_at
        if reason is not None:
            log.warning("tenant store unavailable (%s); using a cached answer %.0f s old", reason, age)
        else:
            log.debug("tenant store still down; using a cached answer %.0f s old", age)
        return entry.value

    def _mark_down(self, reason: object) -> None:
        self._down_until = self.clock() + self.retry_interval
        if not self._down_logged:
            self._down_logged = True
            log.error("tenant store unavailable: %s", reason)

    def _mark_up(self) -> None:
        self._down_until = -math.inf
        if self._down_logged:
            self._down_logged = False
            log.info("tenant store reachable again")

    def _start_fetch(self, key: Key, fetch: Callable[[str], Awaitable[Any]], arg: str) -> asyncio.Task[Any]:
        task = self._inflight.get(key)
        if task is None:
            # The generation is taken now: a change notified after this point may not be in the answer.
            task = asyncio.get_running_loop().create_task(self._fetch(key, fetch, arg, self._generation))
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._fetch_done(key, t))
        return task

    def _fetch_done(self, key: Key, task: asyncio.Task[Any]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            exc = task.exception()  # retrieved here so an unawaited failure is not reported as lost
            if exc is not None and not isinstance(exc, DirectoryError | TenantError | TimeoutError):
                log.error("tenant lookup failed unexpectedly", exc_info=exc)

    async def _fetch(
        self, key: Key, fetch: Callable[[str], Awaitable[Any]], arg: str, generation: int
    ) -> Any:
        try:
            async with asyncio.timeout(self.fetch_timeout):
                value = await fetch(arg)
        except (DirectoryError, TimeoutError) as exc:
            self._mark_down(exc if not isinstance(exc, TimeoutError) else "timed out")
            raise
        except TenantError as exc:
            log.error("tenant record for %s %r is invalid: %s", key[0], key[1], exc)
            raise
        self._mark_up()
        now = self.clock()
        ttl = self.ttl if value is not None else self.negative_ttl
        fresh_until = now + ttl if generation == self._generation else -math.inf
        self._entries[key] = _Entry(value, now, fresh_until)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value
