"""CachingDirectory over an in-memory backend whose availability and latency the test controls."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tenants.cache import CachingDirectory
from tenants.config import TenantConfig, TenantError
from tenants.directory import DirectoryUnavailable, Resolution
from tenants.file import TenantTable, parse_tenants_yaml

TENANTS = """
tenants:
  - slug: acme
    numbers: ["+5511988880001"]
    voice: alloy
  - slug: block
    numbers: ["+55119888801*"]
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TableBackend:
    """A TenantDirectory answering from a TenantTable, which can be made to fail or stall."""

    def __init__(self, table: TenantTable) -> None:
        self.table = table
        self.available = True
        self.invalid_record = False
        self.gate: asyncio.Event | None = None
        self.calls: list[str] = []
        self.closed = False

    async def _enter(self, what: str) -> None:
        self.calls.append(what)
        if self.gate is not None:
            await self.gate.wait()
        if not self.available:
            raise DirectoryUnavailable("connection refused")
        if self.invalid_record:
            raise TenantError("unknown key 'colour'")

    async def explain(self, dialled: str) -> Resolution | None:
        await self._enter(dialled)
        return self.table.explain(dialled)

    async def resolve(self, dialled: str) -> TenantConfig | None:
        found = await self.explain(dialled)
        return found.tenant if found else None

    async def tenant_by_slug(self, slug: str) -> TenantConfig | None:
        await self._enter("slug:" + slug)
        return self.table.by_slug(slug)

    async def list_tenants(self) -> list[TenantConfig]:
        await self._enter("list")
        return list(self.table.tenants)

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def backend() -> TableBackend:
    return TableBackend(parse_tenants_yaml(TENANTS))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def results() -> list[str]:
    return []


@pytest.fixture
def cache(backend: TableBackend, clock: Clock, results: list[str]) -> CachingDirectory:
    return CachingDirectory(
        backend, ttl=30, negative_ttl=5, timeout=0.2, retry_interval=10, observer=results.append, clock=clock
    )


async def test_hits_within_ttl_then_refetches(
    cache: CachingDirectory, backend: TableBackend, clock: Clock, results: list[str]
) -> None:
    first = await cache.resolve("(11) 98888-0001")
    again = await cache.resolve("+5511988880001")
    assert first is not None and first is again
    assert backend.calls == ["+5511988880001"]  # asked once, with the normalised number
    clock.now += 31
    await cache.resolve("+5511988880001")
    assert backend.calls == ["+5511988880001"] * 2
    assert results == ["miss", "hit", "miss"]


async def test_negative_answers_have_a_shorter_ttl(
    cache: CachingDirectory, backend: TableBackend, clock: Clock
) -> None:
    assert await cache.resolve("+12125550100") is None
    clock.now += 4
    assert await cache.resolve("+12125550100") is None
    assert len(backend.calls) == 1
    clock.now += 2
    assert await cache.resolve("+12125550100") is None
    assert len(backend.calls) == 2


async def test_stale_answer_when_backend_down_then_background_refresh(
    cache: CachingDirectory,
    backend: TableBackend,
    clock: Clock,
    results: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = await cache.resolve("+5511988880001")
    clock.now += 60
    backend.available = False
    with caplog.at_level(logging.WARNING, logger="tenants.cache"):
        stale = await cache.resolve("+5511988880001")
    assert stale is before
    assert "using a cached answer 60 s old" in caplog.text
    assert results == ["miss", "stale"]
    # While the backend counts as down, stale answers come at once and one fetch probes it.
    backend.gate = asyncio.Event()
    calls = len(backend.calls)
    lookups = asyncio.gather(*(cache.resolve("+5511988880001") for _ in range(5)))
    answers = await asyncio.wait_for(lookups, 0.1)
    assert all(a is before for a in answers)
    assert len(backend.calls) == calls + 1
    # The store comes back with a change: the background refresh brings it in.
    backend.table = parse_tenants_yaml(TENANTS.replace("voice: alloy", "voice: verse"))
    backend.available = True
    backend.gate.set()
    for _ in range(50):
        await asyncio.sleep(0)
    fresh = await cache.resolve("+5511988880001")
    assert fresh is not None and fresh.voice == "verse"
    assert results[-1] == "hit"
    assert cache.statistics()["backend_down"] is False


async def test_unknown_key_and_backend_down_is_an_error(
    cache: CachingDirectory, backend: TableBackend, results: list[str]
) -> None:
    backend.available = False
    with pytest.raises(DirectoryUnavailable):
        await cache.resolve("+5511988880001")
    assert results == ["error"]


async def test_slow_backend_times_out_and_answer_still_lands(
    cache: CachingDirectory, backend: TableBackend, clock: Clock
) -> None:
    backend.gate = asyncio.Event()
    with pytest.raises(DirectoryUnavailable, match=r"no answer within 0\.2 s"):
        await cache.resolve("+5511988880001")
    backend.gate.set()
    await asyncio.sleep(0.01)
    # The fetch finished after its caller gave up; its answer is cached.
    found = await cache.resolve("+5511988880001")
    assert found is not None and backend.calls == ["+5511988880001"]


async def test_concurrent_lookups_share_one_fetch(cache: CachingDirectory, backend: TableBackend) -> None:
    backend.gate = asyncio.Event()
    lookups = [asyncio.create_task(cache.resolve("+5511988880150")) for _ in range(10)]
    await asyncio.sleep(0.01)
    backend.gate.set()
    answers = await asyncio.gather(*lookups)
    assert {a.slug for a in answers if a} == {"block"} and len(answers) == 10
    assert backend.calls == ["+5511988880150"]


async def test_lookup_does_not_block_the_loop(cache: CachingDirectory, backend: TableBackend) -> None:
    backend.gate = asyncio.Event()
    lookup = asyncio.create_task(cache.resolve("+5511988880001"))
    ticks = 0
    for _ in range(5):
        await asyncio.sleep(0)
        ticks += 1
    assert not lookup.done() and ticks == 5
    backend.gate.set()
    assert await lookup is not None


async def test_invalidate_expires_but_keeps_stale(cache: CachingDirectory, backend: TableBackend) -> None:
    await cache.resolve("+5511988880001")
    cache.invalidate()
    await cache.resolve("+5511988880001")
    assert len(backend.calls) == 2
    cache.invalidate()
    backend.available = False
    assert await cache.resolve("+5511988880001") is not None  # stale, not an error


async def test_fetch_started_before_invalidate_is_not_trusted(
    cache: CachingDirectory, backend: TableBackend
) -> None:
    backend.gate = asyncio.Event()
    lookup = asyncio.create_task(cache.resolve("+5511988880001"))
    await asyncio.sleep(0)
    cache.invalidate()  # a change notification arrives while the fetch is in flight
    backend.gate.set()
    assert await lookup is not None
    await cache.resolve("+5511988880001")
    assert len(backend.calls) == 2


async def test_invalid_record_serves_last_good_without_marking_store_down(
    cache: CachingDirectory, backend: TableBackend, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    good = await cache.resolve("+5511988880001")
    clock.now += 60
    backend.invalid_record = True
    with caplog.at_level(logging.ERROR, logger="tenants.cache"):
        assert await cache.resolve("+5511988880001") is good
    assert "is invalid: unknown key 'colour'" in caplog.text
    assert cache.statistics()["backend_down"] is False
    with pytest.raises(TenantError):
        await cache.tenant_by_slug("acme")


async def test_max_stale_bounds_stale_answers(backend: TableBackend, clock: Clock) -> None:
    cache = CachingDirectory(backend, ttl=30, max_stale=100, timeout=0.2, clock=clock)
    await cache.resolve("+5511988880001")
    backend.available = False
    clock.now += 101
    with pytest.raises(DirectoryUnavailable):
        await cache.resolve("+5511988880001")


async def test_prometheus_counter_as_observer(backend: TableBackend, clock: Clock) -> None:
    from prometheus_client import CollectorRegistry, Counter

    registry = CollectorRegistry()
    counter = Counter("callbridge_tenant_cache_total", "cache results", ["result"], registry=registry)
    cache = CachingDirectory(backend, ttl=30, observer=counter, clock=clock)
    await cache.resolve("+5511988880001")
    await cache.resolve("+5511988880001")
    assert registry.get_sample_value("callbridge_tenant_cache_total", {"result": "hit"}) == 1
    assert registry.get_sample_value("callbridge_tenant_cache_total", {"result": "miss"}) == 1


async def test_entries_are_bounded(backend: TableBackend, clock: Clock) -> None:
    cache = CachingDirectory(backend, ttl=30, max_entries=3, clock=clock)
    for n in range(10):
        await cache.resolve(f"+55119888800{n:02d}")
    assert cache.statistics()["entries"] == 3


async def test_close_cancels_inflight_fetches_and_closes_backend(
    cache: CachingDirectory, backend: TableBackend
) -> None:
    backend.gate = asyncio.Event()
    lookup = asyncio.create_task(cache.resolve("+5511988880001"))
    await asyncio.sleep(0)
    await cache.close()
    assert backend.closed
    with pytest.raises(DirectoryUnavailable):
        await lookup


async def test_background_probes_are_rate_limited_while_down(
    cache: CachingDirectory, backend: TableBackend, clock: Clock
) -> None:
    await cache.resolve("+5511988880001")
    clock.now += 60
    backend.available = False
    await cache.resolve("+5511988880001")  # fails, serves stale, marks the store down
    calls = len(backend.calls)
    for _ in range(20):
        assert await cache.resolve("+5511988880001") is not None
        await asyncio.sleep(0)
    assert len(backend.calls) == calls + 1  # one probe within the probe interval
    clock.now += 1.5
    await cache.resolve("+5511988880001")
    await asyncio.sleep(0)
    assert len(backend.calls) == calls + 2
