"""The PostgreSQL backend against a real server (tests/pg.py), including change notification and
the cache answering while the server is stopped."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tenants.cache import CachingDirectory
from tenants.config import TenantError
from tenants.directory import DirectoryUnavailable
from tenants.factory import open_directory
from tenants.file import FileDirectory, embedded_tenants_file, load_tenants_file
from tenants.postgres import (
    NOTIFY_CHANNEL,
    Migration,
    PostgresDirectory,
    bundled_migrations,
    import_tenants,
    migrate,
)
from tenants.routing import route
from tenants.settings import TenantSettings
from tests.pg import PostgresCluster
from tests.tenants.conftest import LOOKUPS, PIZZA_MEDIA_TOKEN

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def directory(pg_tenants: str) -> AsyncIterator[PostgresDirectory]:
    directory = await PostgresDirectory.open(pg_tenants, "BR", query_timeout=2.0)
    yield directory
    await directory.close()


async def test_migrate_creates_schema_once(pg_database: str) -> None:
    first = await migrate(pg_database)
    assert first.applied == [m.name for m in bundled_migrations()]
    assert first.applied[:2] == ["001_tenant_tables.sql", "002_change_notify.sql"]
    again = await migrate(pg_database)
    assert again.applied == [] and again.already == first.applied and again.changed == []
    conn = await asyncpg.connect(pg_database)
    try:
        versions = [
            r["version"] for r in await conn.fetch("SELECT version FROM callbridge_schema_migrations")
        ]
        assert versions == [m.version for m in bundled_migrations()]
        columns = {
            r["column_name"]
            for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'client_configurations'"
            )
        }
        assert {"voice", "temperature", "max_tokens", "instructions", "greeting", "settings",
                "media_token"} <= columns
    finally:
        await conn.close()
    edited = [Migration(m.version, m.name, m.sql + "\n-- edited\n") for m in bundled_migrations()]
    assert (await migrate(pg_database, edited)).changed == first.applied


async def test_migrate_a_failing_migration_is_rolled_back(pg_database: str) -> None:
    bad = [*bundled_migrations(), Migration(999, "999_bad.sql", "CREATE TABLE t_x (a int); SELECT 1/0;")]
    with pytest.raises(asyncpg.DivisionByZeroError):
        await migrate(pg_database, bad)
    conn = await asyncpg.connect(pg_database)
    try:
        assert await conn.fetchval("SELECT to_regclass('t_x')") is None
        newest = max(m.version for m in bundled_migrations())
        assert await conn.fetchval("SELECT max(version) FROM callbridge_schema_migrations") == newest
    finally:
        await conn.close()


async def test_migrate_completes_an_existing_deployment_schema(pg_database: str) -> None:
    """Tables as existing Supabase deployments created them: the migration keeps their rows."""
    conn = await asyncpg.connect(pg_database)
    try:
        await conn.execute("""
            CREATE TABLE clients (client_id uuid PRIMARY KEY, client_name text NOT NULL,
                                  active boolean DEFAULT true);
            CREATE TABLE client_sip_numbers (sip_number text PRIMARY KEY,
                                             client_id uuid REFERENCES clients(client_id),
                                             active boolean DEFAULT true);
            CREATE TABLE client_configurations (client_id uuid PRIMARY KEY REFERENCES clients(client_id),
                                                voice text, temperature float, max_tokens int,
                                                instructions text, speech_rate float, top_p float);
            INSERT INTO clients VALUES ('1b4e28ba-2fa1-11d2-883f-0016d3cca427', 'Ótica Boa Vista', true);
            INSERT INTO client_sip_numbers
                VALUES ('+5511988887777', '1b4e28ba-2fa1-11d2-883f-0016d3cca427', true);
            INSERT INTO client_configurations VALUES ('1b4e28ba-2fa1-11d2-883f-0016d3cca427',
                'en-US-Andrew:DragonHDLatestNeural', 0.7, 800, 'Você atende a ótica.', 1.1, 0.9);
        """)
    finally:
        await conn.close()
    report = await migrate(pg_database)
    assert len(report.applied) == len(bundled_migrations())
    directory = await PostgresDirectory.open(pg_database)
    try:
        tenant = await directory.resolve("(11) 98888-7777")
        assert tenant is not None
        assert tenant.slug == "otica-boa-vista" and tenant.name == "Ótica Boa Vista"
        assert tenant.tenant_id == "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
        assert tenant.voice == "en-US-Andrew:DragonHDLatestNeural"
        assert (tenant.temperature, tenant.max_output_tokens, tenant.speed) == (0.7, 800, 1.1)
        assert tenant.greeting is None and tenant.recording is True  # documented defaults
    finally:
        await directory.close()


@pytest.mark.parametrize(("dialled", "slug", "kind", "entry"), LOOKUPS)
async def test_lookups(
    directory: PostgresDirectory, dialled: str, slug: str | None, kind: str | None, entry: str | None
) -> None:
    found = await directory.explain(dialled)
    if slug is None:
        assert found is None
    else:
        assert found is not None
        assert (found.tenant.slug, found.match, found.pattern) == (slug, kind, entry)


async def test_rows_map_to_tenant_settings(
    directory: PostgresDirectory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="tenants.postgres"):
        demo = await directory.resolve("+5511999990001")
        await directory.resolve("+5511999990001")
    assert demo is not None
    assert demo.tenant_id == "6f1c9a52-1d8e-4a53-9a8b-0c2f4a3e0001"
    assert (demo.voice, demo.temperature, demo.max_output_tokens) == ("marin", 0.7, 800)
    assert demo.greeting == "Olá!" and demo.language == "pt"  # from the settings column
    assert demo.turn_detection.type == "server_vad" and demo.turn_detection.silence_duration_ms == 400
    assert demo.numbers == ("+5511999990001", "1001")
    # A column that is not a setting is reported, once.
    assert caplog.text.count("column client_configurations.top_p is not a tenant setting") == 1
    pizza = await directory.resolve("+5511999990002")
    assert pizza is not None and pizza.speed == 1.2 and pizza.voice == "cedar"
    assert pizza.max_output_tokens == "inf" and pizza.temperature == 0.6
    assert pizza.media_token == PIZZA_MEDIA_TOKEN and demo.media_token is None
    assert PIZZA_MEDIA_TOKEN not in repr(pizza)


async def test_invalid_record_is_an_error_naming_the_key(directory: PostgresDirectory) -> None:
    with pytest.raises(TenantError, match=r"client broken: unknown key 'colour'"):
        await directory.resolve("+5511999990004")


async def test_list_and_slug(directory: PostgresDirectory, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="tenants.postgres"):
        tenants = await directory.list_tenants()
    assert [t.slug for t in tenants] == ["closed", "demo", "pizzaria-bella-napoli", "plantao"]
    assert "unknown key 'colour'" in caplog.text  # the invalid one is reported, not listed
    closed = await directory.tenant_by_slug("closed")
    assert closed is not None and closed.active is False
    assert await directory.tenant_by_slug("nobody") is None


async def test_notify_makes_an_edit_visible_on_the_next_call(
    directory: PostgresDirectory, pg_tenants: str
) -> None:
    cache = CachingDirectory(directory, ttl=3600, negative_ttl=3600, timeout=2.0)
    changed = asyncio.Event()
    directory.add_change_listener(changed.set)
    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(cache.watch())
        await asyncio.wait_for(directory.listening.wait(), 10)
        before = await cache.resolve("+5511999990001")
        assert before is not None and before.voice == "marin"
        assert await cache.resolve("+5511999990077") is None  # cached "not found"
        conn = await asyncpg.connect(pg_tenants)
        try:
            changed.clear()
            await conn.execute(
                "UPDATE client_configurations SET voice = 'verse' WHERE client_id = $1", before.tenant_id
            )
            await asyncio.wait_for(changed.wait(), 10)
            after = await cache.resolve("+5511999990001")
            assert after is not None and after.voice == "verse"
            changed.clear()
            await conn.execute(
                "INSERT INTO client_sip_numbers (sip_number, client_id) VALUES ($1, $2)",
                "+5511999990077",
                before.tenant_id,
            )
            await asyncio.wait_for(changed.wait(), 10)
            added = await cache.explain("+5511999990077")
            assert added is not None and added.tenant.slug == "demo"
            changed.clear()
            await conn.execute("UPDATE clients SET active = false WHERE slug = 'demo'")
            await asyncio.wait_for(changed.wait(), 10)
            assert await cache.resolve("+5511999990001") is None
        finally:
            await conn.close()
        watcher.cancel()


async def test_payload_names_table_and_operation(pg_tenants: str) -> None:
    payloads: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(pg_tenants)
    writer = await asyncpg.connect(pg_tenants)
    try:
        await listener.add_listener(NOTIFY_CHANNEL, lambda *args: payloads.put_nowait(args[3]))
        await writer.execute("DELETE FROM client_sip_numbers WHERE sip_number = '1001'")
        payload = json.loads(await asyncio.wait_for(payloads.get(), 10))
        assert payload == {"table": "client_sip_numbers", "op": "DELETE"}
    finally:
        await writer.close()
        await listener.close()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_stale_answers_while_server_is_stopped(
    pg_cluster: PostgresCluster, directory: PostgresDirectory, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    results: list[str] = []
    cache = CachingDirectory(
        directory, ttl=30, timeout=2.0, retry_interval=5, observer=results.append, clock=clock
    )
    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(cache.watch(0.5))
        await asyncio.wait_for(directory.listening.wait(), 10)
        demo = await cache.resolve("+5511999990001")
        assert demo is not None and results == ["miss"]

        pg_cluster.stop()  # mid-test: the server goes away
        try:
            clock.now += 60  # the cached answer has expired
            with caplog.at_level(logging.WARNING, logger="tenants.cache"):
                stale = await cache.resolve("+5511999990001")
            assert stale == demo and results[-1] == "stale"
            assert (
                "tenant store unavailable" in caplog.text and "using a cached answer 60 s old" in caplog.text
            )
            # A number never looked up has nothing to fall back on.
            with pytest.raises(DirectoryUnavailable):
                await cache.resolve("+5511999990002")
            assert results[-1] == "error"
            # While the store counts as down, stale answers come without waiting for it.
            assert await asyncio.wait_for(cache.resolve("+5511999990001"), 0.5) == demo
            await asyncio.sleep(0.2)
            assert not directory.listening.is_set()  # the LISTEN connection noticed
        finally:
            pg_cluster.start()

        # Back up: the LISTEN connection returns, and lookups answer fresh again.
        await asyncio.wait_for(directory.listening.wait(), 15)
        clock.now += 10
        fresh = await cache.resolve("+5511999990002")
        assert fresh is not None and fresh.slug == "pizzaria-bella-napoli" and results[-1] == "miss"
        again = await cache.resolve("+5511999990001")
        assert again == demo and results[-1] in {"miss", "hit"}
        assert cache.statistics()["backend_down"] is False
        watcher.cancel()


async def test_import_yaml_answers_like_the_file(pg_database: str) -> None:
    await migrate(pg_database)
    table = load_tenants_file(embedded_tenants_file())
    report = await import_tenants(pg_database, table)
    assert report.created == [t.slug for t in table.tenants] and report.updated == []
    file_directory = await FileDirectory.open(embedded_tenants_file())
    db_directory = await PostgresDirectory.open(pg_database)
    try:
        for dialled in ("+5511999990001", "1001", "011 99999-0002", "+5511999990150", "+5511999990999"):
            from_file = await file_directory.explain(dialled)
            from_db = await db_directory.explain(dialled)
            if from_file is None:
                assert from_db is None
                continue
            assert from_db is not None
            assert (from_db.match, from_db.pattern) == (from_file.match, from_file.pattern)
            expected = from_file.tenant.model_dump(exclude={"tenant_id"})
            assert from_db.tenant.model_dump(exclude={"tenant_id"}) == expected
        # Importing again updates in place; a number moved between tenants is reported.
        moved = load_tenants_file(embedded_tenants_file()).tenants
        edited = type(table)(
            (
                moved[0].model_copy(update={"numbers": ("+5511999990001",)}),
                moved[1].model_copy(update={"numbers": ("+5511999990002", "1001")}),
                moved[2],
            ),
        )
        again = await import_tenants(pg_database, edited)
        assert again.created == [] and again.updated == [t.slug for t in table.tenants]
        assert again.numbers_moved == ["1001: demo -> pizzaria-bella"] and again.numbers_removed == []
        moved_to = await db_directory.resolve("1001")
        assert moved_to is not None and moved_to.slug == "pizzaria-bella"
    finally:
        await db_directory.close()


async def test_open_directory_from_settings(pg_tenants: str) -> None:
    settings = TenantSettings(
        backend="postgres", database_url=pg_tenants, unknown_number="default", default_tenant="plantao"
    )
    directory = await open_directory(settings)
    try:
        found = await route(directory, "+5511999990001", settings)
        assert found is not None and found.tenant.slug == "demo"
        fallback = await route(directory, "+5521999990001", settings)
        assert fallback is not None and fallback.tenant.slug == "plantao" and fallback.match == "default"
        assert await directory.reload() is True
    finally:
        await directory.close()


async def test_open_directory_without_tables_says_migrate(pg_database: str) -> None:
    with pytest.raises(TenantError, match="callbridge tenants migrate"):
        await open_directory(TenantSettings(backend="postgres", database_url=pg_database))


async def test_open_directory_with_server_down_still_opens(caplog: pytest.LogCaptureFixture) -> None:
    settings = TenantSettings(
        backend="postgres",
        database_url=f"postgresql://postgres@127.0.0.1:{_closed_port()}/x",
        lookup_timeout=0.5,
    )
    with caplog.at_level(logging.WARNING, logger="tenants.postgres"):
        directory = await open_directory(settings)
    try:
        assert "not reachable at start-up" in caplog.text
        with pytest.raises(DirectoryUnavailable):
            await directory.resolve("+5511999990001")
    finally:
        await directory.close()


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
