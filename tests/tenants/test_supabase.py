"""The Supabase backend through the real ``supabase`` client, against a PostgREST-protocol server
(tests/postgrest_server.py) over the same real PostgreSQL and fixture data as the PostgreSQL
backend's tests."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from tenants.cache import CachingDirectory
from tenants.config import TenantError
from tenants.directory import DirectoryUnavailable
from tenants.factory import open_directory
from tenants.postgres import PostgresDirectory
from tenants.routing import route
from tenants.settings import TenantSettings
from tenants.supabase import SupabaseDirectory
from tests.pg import PostgresCluster
from tests.postgrest_server import PostgrestServer
from tests.tenants.conftest import LOOKUPS

pytestmark = pytest.mark.timeout(120)

SERVICE_KEY = "test-service-role-key"


@pytest.fixture
async def rest(pg_tenants: str) -> AsyncIterator[PostgrestServer]:
    async with PostgrestServer(pg_tenants, SERVICE_KEY) as server:
        yield server


@pytest.fixture
async def directory(rest: PostgrestServer) -> AsyncIterator[SupabaseDirectory]:
    directory = await SupabaseDirectory.open(rest.url, SERVICE_KEY, "BR", query_timeout=2.0)
    yield directory
    await directory.close()


@pytest.mark.parametrize(("dialled", "slug", "kind", "entry"), LOOKUPS)
async def test_lookups(
    directory: SupabaseDirectory, dialled: str, slug: str | None, kind: str | None, entry: str | None
) -> None:
    found = await directory.explain(dialled)
    if slug is None:
        assert found is None
    else:
        assert found is not None
        assert (found.tenant.slug, found.match, found.pattern) == (slug, kind, entry)


async def test_one_request_per_lookup_with_embedded_client(
    directory: SupabaseDirectory, rest: PostgrestServer
) -> None:
    await directory.explain("+5511999990001")
    assert len(rest.requests) == 1
    path = rest.requests[0]
    assert path.startswith("/rest/v1/client_sip_numbers?")
    assert (
        "select=sip_number,active,clients(*,client_configurations(*),client_sip_numbers(sip_number,active))"
        in path
    )
    assert "sip_number=in.(+5511999990001,5511999990001,11999990001,011999990001,+5511999990001*," in path


async def test_same_answers_as_postgres_backend(directory: SupabaseDirectory, pg_tenants: str) -> None:
    postgres = await PostgresDirectory.open(pg_tenants)
    try:
        for dialled, *_ in LOOKUPS:
            assert await directory.explain(dialled) == await postgres.explain(dialled), dialled
        assert await directory.list_tenants() == await postgres.list_tenants()
        assert await directory.tenant_by_slug("closed") == await postgres.tenant_by_slug("closed")
    finally:
        await postgres.close()
    demo = await directory.resolve("+5511999990001")
    assert demo is not None and demo.greeting == "Olá!" and demo.max_output_tokens == 800


async def test_list_pages_through_all_clients(directory: SupabaseDirectory, rest: PostgrestServer) -> None:
    directory.page_rows = 2
    tenants = await directory.list_tenants()
    assert [t.slug for t in tenants] == ["closed", "demo", "pizzaria-bella-napoli", "plantao"]
    assert len(rest.requests) == 3  # 5 clients (one invalid) in pages of 2
    assert "offset=4" in rest.requests[-1] and "limit=2" in rest.requests[-1]


async def test_invalid_record_is_an_error_naming_the_key(directory: SupabaseDirectory) -> None:
    with pytest.raises(TenantError, match=r"client broken: unknown key 'colour'"):
        await directory.resolve("+5511999990004")


async def test_wrong_key_is_unavailable(rest: PostgrestServer) -> None:
    directory = await SupabaseDirectory.open(rest.url, "not-the-key", "BR")
    try:
        with pytest.raises(DirectoryUnavailable):
            await directory.resolve("+5511999990001")
    finally:
        await directory.close()


async def test_missing_tables_are_unavailable(pg_database: str) -> None:
    async with PostgrestServer(pg_database, SERVICE_KEY) as server:
        directory = await SupabaseDirectory.open(server.url, SERVICE_KEY, "BR")
        try:
            with pytest.raises(DirectoryUnavailable, match="PGRST205"):
                await directory.resolve("+5511999990001")
        finally:
            await directory.close()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_stale_answers_while_database_or_api_is_down(
    pg_cluster: PostgresCluster, pg_tenants: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    results: list[str] = []
    server = PostgrestServer(pg_tenants, SERVICE_KEY)
    await server.start()
    directory = await SupabaseDirectory.open(server.url, SERVICE_KEY, "BR", query_timeout=2.0)
    cache = CachingDirectory(
        directory, ttl=30, timeout=3.0, retry_interval=5, observer=results.append, clock=clock
    )
    try:
        demo = await cache.resolve("+5511999990001")
        assert demo is not None and results == ["miss"]

        # The database behind the REST API stops: the API answers 503.
        pg_cluster.stop()
        try:
            clock.now += 60
            with caplog.at_level(logging.WARNING, logger="tenants.cache"):
                assert await cache.resolve("+5511999990001") == demo
            assert results[-1] == "stale" and "PGRST000" in caplog.text
            with pytest.raises(DirectoryUnavailable):
                await cache.resolve("+5511999990002")
        finally:
            pg_cluster.start()

        clock.now += 10  # past the retry interval: the store is asked again
        assert await cache.resolve("+5511999990001") == demo and results[-1] == "miss"

        # The REST API itself goes away: connection refused.
        port = server.port
        await server.close()
        clock.now += 60
        assert await cache.resolve("+5511999990001") == demo and results[-1] == "stale"
        server.port = port
        await server.start()
        clock.now += 10
        assert await cache.resolve("+5511999990001") == demo and results[-1] == "miss"
    finally:
        await cache.close()
        await server.close()


async def test_open_directory_from_settings(rest: PostgrestServer) -> None:
    settings = TenantSettings(backend="supabase", supabase_url=rest.url, supabase_key=SERVICE_KEY)
    directory = await open_directory(settings)
    try:
        found = await route(directory, "sip:011999990002@pbx", settings)
        assert found is not None and found.tenant.slug == "pizzaria-bella-napoli"
        assert await directory.watch() is None  # no change notification over REST: returns at once
    finally:
        await directory.close()
