"""PostgreSQL tenant backend (asyncpg), schema migrations, and YAML import.

Lookups send the normalised number's likely stored spellings and every prefix pattern that could
cover it in one query (``sip_number = ANY($1)``, an index scan on the primary key), then decide
among the returned rows in Python with the same rules as the other backends
(``tenants.schema.resolve_rows``). Rows are read with ``to_jsonb(row)`` so that whatever columns
a deployment's tables have, the mapping code sees them all.

``watch()`` holds one connection that LISTENs on ``callbridge_tenants`` (the triggers of migration
002 NOTIFY it on every change) and tells the change listeners, which expire the cache. The
connection is re-established with backoff when it drops; every (re)connect also counts as a change,
since notifications sent while nobody listened are lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import json
import logging
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from tenants.config import TenantConfig, TenantError
from tenants.directory import ChangeListener, DirectoryUnavailable, Resolution
from tenants.file import TenantTable
from tenants.numbers import NumberError, normalize_number
from tenants.schema import (
    CONFIGURATIONS,
    NoteReporter,
    Notes,
    NumberRow,
    TenantRecord,
    configuration_values,
    lookup_keys,
    resolve_rows,
    tenant_from_record,
)

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "callbridge_tenants"
MIGRATIONS_TABLE = "callbridge_schema_migrations"
# pg_advisory_lock key serialising concurrent "callbridge tenants migrate" runs.
_MIGRATION_LOCK = int.from_bytes(hashlib.sha256(b"callbridge migrations").digest()[:8], "big", signed=True)
LISTEN_KEEPALIVE_SECONDS = 30.0
RECONNECT_MIN_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 30.0
POOL_MAX_SIZE = 4

# asyncpg's own failures and the server's: all mean "the store could not answer".
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)

_LOOKUP_SQL = """
SELECT n.sip_number,
       n.active IS NOT FALSE AS active,
       to_jsonb(c) AS client,
       to_jsonb(cc) AS configuration,
       COALESCE((SELECT jsonb_agg(m.sip_number ORDER BY m.sip_number)
                   FROM client_sip_numbers m
                  WHERE m.client_id = c.client_id AND m.active IS NOT FALSE), '[]'::jsonb) AS numbers
  FROM client_sip_numbers n
  JOIN clients c ON c.client_id = n.client_id
  LEFT JOIN client_configurations cc ON cc.client_id = c.client_id
 WHERE n.sip_number = ANY($1::text[])
"""

_LIST_SQL = """
SELECT to_jsonb(c) AS client,
       to_jsonb(cc) AS configuration,
       COALESCE((SELECT jsonb_agg(m.sip_number ORDER BY m.sip_number)
                   FROM client_sip_numbers m
                  WHERE m.client_id = c.client_id AND m.active IS NOT FALSE), '[]'::jsonb) AS numbers
  FROM clients c
  LEFT JOIN client_configurations cc ON cc.client_id = c.client_id
"""


async def _init_connection(conn: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class PostgresDirectory:
    """TenantDirectory over the three tenant tables in PostgreSQL."""

    def __init__(
        self, pool: asyncpg.Pool, dsn: str, default_country: str = "BR", *, timeout: float = 2.0
    ) -> None:
        self._pool = pool
        self._dsn = dsn
        self.default_country = default_country
        self.timeout = timeout
        self._listeners: list[ChangeListener] = []
        self._reported = NoteReporter(log)
        self.listening = asyncio.Event()  # set while the LISTEN connection is up
        self._closed = False

    @classmethod
    async def open(
        cls,
        dsn: str,
        default_country: str = "BR",
        *,
        query_timeout: float = 2.0,
        max_size: int = POOL_MAX_SIZE,
    ) -> PostgresDirectory:
        """Create the connection pool. An unreachable server is logged, not fatal: lookups fail
        (and the cache answers what it can) until it is back. Missing tables are fatal."""
        pool = await asyncpg.create_pool(
            dsn, min_size=0, max_size=max_size, init=_init_connection, command_timeout=query_timeout
        )
        directory = cls(pool, dsn, default_country, timeout=query_timeout)
        try:
            async with pool.acquire(timeout=query_timeout) as conn:
                await conn.fetchval("SELECT count(*) FROM client_sip_numbers")
        except asyncpg.UndefinedTableError:
            await pool.close()
            raise TenantError("the tenant tables do not exist; run: callbridge tenants migrate") from None
        except _DB_ERRORS as exc:
            log.warning("tenant database not reachable at start-up (%s); will keep trying", _describe(exc))
        return directory

    def add_change_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        try:
            async with self._pool.acquire(timeout=self.timeout) as conn:
                rows: list[asyncpg.Record] = await conn.fetch(query, *args, timeout=self.timeout)
                return rows
        except _DB_ERRORS as exc:
            raise DirectoryUnavailable(f"tenant database: {_describe(exc)}") from exc

    async def explain(self, dialled: str) -> Resolution | None:
        try:
            number = normalize_number(dialled, self.default_country)
        except NumberError:
            return None
        rows = await self._fetch(_LOOKUP_SQL, lookup_keys(number, self.default_country))
        notes = Notes()
        candidates = [
            NumberRow(
                r["sip_number"],
                r["active"],
                TenantRecord(r["client"], r["configuration"], tuple(r["numbers"])),
            )
            for r in rows
        ]
        try:
            return resolve_rows(number, candidates, self.default_country, notes)
        finally:
            self._reported.report(notes)

    async def resolve(self, dialled: str) -> TenantConfig | None:
        found = await self.explain(dialled)
        return found.tenant if found else None

    async def list_tenants(self) -> list[TenantConfig]:
        """Every tenant whose record is valid; invalid ones are logged and left out."""
        rows = await self._fetch(_LIST_SQL)
        tenants: list[TenantConfig] = []
        notes = Notes()
        for r in rows:
            try:
                tenants.append(
                    tenant_from_record(
                        TenantRecord(r["client"], r["configuration"], tuple(r["numbers"])),
                        self.default_country,
                        notes,
                    )
                )
            except TenantError as exc:
                log.error("%s", exc)
        self._reported.report(notes)
        return sorted(tenants, key=lambda t: (t.slug, t.tenant_id))

    async def tenant_by_slug(self, slug: str) -> TenantConfig | None:
        return next((t for t in await self.list_tenants() if t.slug == slug), None)

    async def reload(self) -> bool:
        """Nothing to re-read: answers come from the database. Expire the cache."""
        self._changed()
        return True

    async def watch(self, interval: float | None = None) -> None:
        """LISTEN for change notifications until cancelled, reconnecting with backoff.

        ``interval`` is the keep-alive period: how often an idle LISTEN connection is checked.
        """
        keepalive = LISTEN_KEEPALIVE_SECONDS if interval is None else interval
        backoff = RECONNECT_MIN_SECONDS
        while True:
            try:
                conn = await asyncpg.connect(self._dsn, timeout=self.timeout)
            except _DB_ERRORS as exc:
                log.warning(
                    "cannot LISTEN for tenant changes (%s); retrying in %.1f s", _describe(exc), backoff
                )
            else:
                try:
                    if await self._listen(conn, keepalive):
                        backoff = RECONNECT_MIN_SECONDS
                finally:
                    self.listening.clear()
                    if not conn.is_closed():
                        conn.terminate()
                log.warning("tenant change notifications interrupted; reconnecting in %.1f s", backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_MAX_SECONDS)

    async def _listen(self, conn: asyncpg.Connection, keepalive: float) -> bool:
        """Listen on ``conn`` until it is lost; False if LISTEN could not even be set up."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())

        def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            log.debug("tenant change: %s", payload)
            self._changed()

        try:
            await conn.add_listener(NOTIFY_CHANNEL, on_notify)
        except _DB_ERRORS as exc:
            log.warning("LISTEN %s failed: %s", NOTIFY_CHANNEL, _describe(exc))
            return False
        self._changed()  # anything may have changed while nobody was listening
        self.listening.set()
        log.info("listening for tenant changes")
        while not lost.is_set():
            try:
                async with asyncio.timeout(keepalive):
                    await lost.wait()
            except TimeoutError:
                try:
                    await conn.fetchval("SELECT 1", timeout=self.timeout)
                except _DB_ERRORS:
                    break
        return True

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            async with asyncio.timeout(5):
                await self._pool.close()
        except TimeoutError:
            self._pool.terminate()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- migrations ----------------------------------------------------------------------------------

_MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def bundled_migrations() -> list[Migration]:
    """The SQL files in tenants/migrations, in version order."""
    found = []
    for resource in (importlib.resources.files("tenants") / "migrations").iterdir():
        match = _MIGRATION_NAME.match(resource.name)
        if match:
            found.append(Migration(int(match.group(1)), resource.name, resource.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in {versions}")
    return found


@dataclass(frozen=True, slots=True)
class MigrationReport:
    applied: list[str]
    already: list[str]
    changed: list[str]  # applied earlier from a file whose text has changed since


async def migrate(dsn: str, migrations: Iterable[Migration] | None = None) -> MigrationReport:
    """Apply the migrations not yet recorded in callbridge_schema_migrations, each in a transaction."""
    wanted = list(bundled_migrations() if migrations is None else migrations)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(f"""
                CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
                    version    integer PRIMARY KEY,
                    name       text NOT NULL,
                    checksum   text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )""")
            done = {
                r["version"]: r for r in await conn.fetch(f"SELECT version, checksum FROM {MIGRATIONS_TABLE}")
            }
            applied, already, changed = [], [], []
            for migration in wanted:
                record = done.get(migration.version)
                if record is not None:
                    already.append(migration.name)
                    if record["checksum"] != migration.checksum:
                        changed.append(migration.name)
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        f"INSERT INTO {MIGRATIONS_TABLE} (version, name, checksum) VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
                applied.append(migration.name)
                log.info("applied migration %s", migration.name)
            return MigrationReport(applied, already, changed)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    finally:
        await conn.close()


# -- import --------------------------------------------------------------------------------------


@dataclass(slots=True)
class ImportReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    numbers_moved: list[str] = field(default_factory=list)  # "number: from -> to"
    numbers_removed: list[str] = field(default_factory=list)
    untouched: int = 0  # tenants in the database that the file does not name


def _uuid_or_none(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


async def import_tenants(dsn: str, table: TenantTable) -> ImportReport:
    """Write the tenants of a validated YAML file into the database, in one transaction.

    A tenant is matched by slug (else by tenant_id, when that is a UUID) and created when absent;
    its configuration row is rewritten; its numbers become exactly those of the file (a number
    listed for another client moves). Tenants the file does not name are left as they are.
    """
    report = ImportReport()
    conn = await asyncpg.connect(dsn)
    try:
        await _init_connection(conn)
        available = {
            r["column_name"]
            for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = $1",
                CONFIGURATIONS,
            )
        }
        if not available:
            raise TenantError("the tenant tables do not exist; run: callbridge tenants migrate")
        async with conn.transaction():
            listed = {number: t.slug for t in table.tenants for number in t.numbers}
            owners = {
                r["sip_number"]: r["slug"] or str(r["client_id"])
                for r in await conn.fetch(
                    "SELECT n.sip_number, c.slug, c.client_id FROM client_sip_numbers n"
                    " JOIN clients c USING (client_id) WHERE n.sip_number = ANY($1::text[])",
                    list(listed),
                )
            }
            removed: list[tuple[str, str]] = []
            for tenant in table.tenants:
                removed.extend(await _import_one(conn, tenant, available, report))
            report.numbers_moved = [
                f"{number}: {owners[number]} -> {slug}"
                for number, slug in sorted(listed.items())
                if number in owners and owners[number] != slug
            ]
            report.numbers_removed = [
                f"{number} ({slug})" for number, slug in removed if number not in listed
            ]
            names = [t.slug for t in table.tenants]
            report.untouched = await conn.fetchval(
                "SELECT count(*) FROM clients WHERE slug IS NULL OR NOT slug = ANY($1::text[])", names
            )
    finally:
        await conn.close()
    return report


async def _import_one(
    conn: asyncpg.Connection, tenant: TenantConfig, available: set[str], report: ImportReport
) -> list[tuple[str, str]]:
    """Write one tenant; returns the (number, slug) pairs its client no longer lists."""
    client_id = await conn.fetchval("SELECT client_id FROM clients WHERE slug = $1", tenant.slug)
    wanted_id = _uuid_or_none(tenant.tenant_id)
    if client_id is None and wanted_id is not None:
        client_id = await conn.fetchval("SELECT client_id FROM clients WHERE client_id = $1", wanted_id)
    if client_id is None:
        client_id = await conn.fetchval(
            "INSERT INTO clients (client_id, client_name, active, slug)"
            " VALUES (COALESCE($1, gen_random_uuid()), $2, $3, $4) RETURNING client_id",
            wanted_id,
            tenant.name or tenant.slug,
            tenant.active,
            tenant.slug,
        )
        report.created.append(tenant.slug)
    else:
        await conn.execute(
            "UPDATE clients SET client_name = $2, active = $3, slug = $4, updated_at = now()"
            " WHERE client_id = $1",
            client_id,
            tenant.name or tenant.slug,
            tenant.active,
            tenant.slug,
        )
        report.updated.append(tenant.slug)

    columns, settings = configuration_values(tenant, available)
    if "settings" in available:
        columns["settings"] = settings
    elif settings:
        raise TenantError(f"{tenant.slug}: {CONFIGURATIONS} has no column for {', '.join(sorted(settings))}")
    names = list(columns)
    placeholders = ", ".join(f"${i}" for i in range(2, len(names) + 2))
    assignments = ", ".join(f"{_ident(n)} = EXCLUDED.{_ident(n)}" for n in names)
    await conn.execute(
        f"INSERT INTO {CONFIGURATIONS} (client_id, {', '.join(map(_ident, names))})"
        f" VALUES ($1, {placeholders}) ON CONFLICT (client_id) DO UPDATE SET {assignments}",
        client_id,
        *[columns[n] for n in names],
    )

    removed = await conn.fetch(
        "DELETE FROM client_sip_numbers WHERE client_id = $1 AND NOT sip_number = ANY($2::text[])"
        " RETURNING sip_number",
        client_id,
        list(tenant.numbers),
    )
    await conn.executemany(
        "INSERT INTO client_sip_numbers (sip_number, client_id, active) VALUES ($1, $2, true)"
        " ON CONFLICT (sip_number) DO UPDATE SET client_id = EXCLUDED.client_id, active = true",
        [(number, client_id) for number in tenant.numbers],
    )
    return [(r["sip_number"], tenant.slug) for r in removed]


_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")


def _ident(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"unexpected column name {name!r}")
    return f'"{name}"'
