"""The call index: one record per call (metadata, where its files are), searchable by tenant,
number, time and outcome.

The record's own JSON file beside the recording is the source of truth; the index is what makes
calls findable and can be rebuilt from those files. Two backends share one schema shape: SQLite
(the embedded default, run on a dedicated thread because sqlite3 blocks) and PostgreSQL through
asyncpg (chosen when the tenants live in PostgreSQL, so a deployment keeps one database).

Each row keeps the whole record as JSON plus the few columns searched on; numbers are searched as
digit strings so ``+55 11 9999-0001``, ``5511999990001`` and ``99990001`` all find the call.
"""

from __future__ import annotations

import asyncio
import enum
import json
import re
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

_NON_DIGITS = re.compile(r"\D+")
# Call ids come from transports (UUIDs, provider call ids); anything else is refused before it
# reaches a path or a query.
_CALL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class CallStoreError(Exception):
    """The index could not be read or written."""


class CallStatus(enum.StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETE = "complete"
    INTERRUPTED = "interrupted"  # the daemon died during the call; the recording was repaired


def digits(number: str) -> str:
    return _NON_DIGITS.sub("", number)


def valid_call_id(call_id: str) -> bool:
    return bool(_CALL_ID.match(call_id)) and ".." not in call_id


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    role: str  # "caller" | "agent"
    text: str
    at: float  # Unix seconds
    offset: float  # seconds since the call started
    interrupted: bool = False  # an agent turn the caller cut off (barge-in)


@dataclass(frozen=True, slots=True)
class CallRecord:
    call_id: str
    tenant: str  # slug
    tenant_id: str
    transport: str
    dialled: str
    caller_id: str
    started_at: float  # Unix seconds (wall clock, for records only)
    status: CallStatus = CallStatus.IN_PROGRESS
    answered_at: float | None = None
    ended_at: float | None = None
    outcome: str | None = None
    barge_ins: int = 0
    model: str = ""
    voice: str = ""
    transfer_target: str | None = None
    # Files: "<tenant>/<yyyy>/<mm>/<dd>/<call id>" relative to the recordings root, plus suffixes.
    path: str = ""
    recorded: bool = False  # a WAV exists for this call
    recording_bytes: int = 0
    recording_seconds: float = 0.0
    sample_rate: int = 0
    transcript_entries: int = 0
    object_key: str | None = None  # object-store key of the WAV once uploaded
    expires_at: float | None = None  # retention: deleted after this (None: kept)
    # Post-call evaluation: None (not evaluated), "pending", "complete" or "failed"; the whole
    # evaluation is in <stem>.evaluation.json.
    evaluation_status: str | None = None
    overall_score: int | None = None
    evaluation_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        return None if self.ended_at is None else max(0.0, self.ended_at - self.started_at)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = self.status.value
        out["duration"] = self.duration
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["status"] = CallStatus(values.get("status", CallStatus.IN_PROGRESS))
        return cls(**values)

    def evolve(self, **changes: Any) -> CallRecord:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class CallQuery:
    tenant: str | None = None  # slug
    number: str | None = None  # digits of the dialled or the caller number (substring)
    since: float | None = None  # started_at >= since
    until: float | None = None  # started_at < until
    outcome: str | None = None
    status: CallStatus | None = None
    min_score: float | None = None  # evaluated calls with overall_score >= min_score
    max_score: float | None = None  # ... <= max_score
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True, slots=True)
class CallPage:
    calls: list[CallRecord]
    total: int


class CallIndex(Protocol):
    async def open(self) -> None: ...

    async def put(self, record: CallRecord) -> None:
        """Insert or replace the record with this call id."""
        ...

    async def get(self, call_id: str) -> CallRecord | None: ...

    async def search(self, query: CallQuery) -> CallPage:
        """Newest first."""
        ...

    async def expired(self, now: float, limit: int = 100) -> list[CallRecord]: ...

    async def delete(self, call_id: str) -> None: ...

    async def close(self) -> None: ...


def _row_values(record: CallRecord) -> tuple[Any, ...]:
    return (
        record.call_id,
        record.tenant,
        record.started_at,
        record.outcome,
        record.status.value,
        digits(record.dialled),
        digits(record.caller_id),
        record.expires_at,
        json.dumps(record.to_json(), separators=(",", ":")),
        record.overall_score,
    )


def _where(query: CallQuery, placeholder: Callable[[int], str]) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return placeholder(len(args))

    if query.tenant is not None:
        clauses.append(f"tenant = {arg(query.tenant)}")
    if query.number:
        wanted = digits(query.number)
        if wanted:
            clauses.append(f"(strpos(dialled_digits, {arg(wanted)}) > 0"
                           f" OR strpos(caller_digits, {arg(wanted)}) > 0)")
        else:
            clauses.append("FALSE")
    if query.since is not None:
        clauses.append(f"started_at >= {arg(query.since)}")
    if query.until is not None:
        clauses.append(f"started_at < {arg(query.until)}")
    if query.outcome is not None:
        clauses.append(f"outcome = {arg(query.outcome)}")
    if query.status is not None:
        clauses.append(f"status = {arg(query.status.value)}")
    if query.min_score is not None:
        clauses.append(f"score >= {arg(query.min_score)}")
    if query.max_score is not None:
        clauses.append(f"score <= {arg(query.max_score)}")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


# ----------------------------------------------------------------------------- SQLite
_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    started_at REAL NOT NULL,
    outcome TEXT,
    status TEXT NOT NULL,
    dialled_digits TEXT NOT NULL,
    caller_digits TEXT NOT NULL,
    expires_at REAL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_started ON calls (started_at DESC);
CREATE INDEX IF NOT EXISTS calls_tenant_started ON calls (tenant, started_at DESC);
CREATE INDEX IF NOT EXISTS calls_expires ON calls (expires_at) WHERE expires_at IS NOT NULL;
"""
# Added after the first release: indexes created before it get the column on open.
_SQLITE_SCORE = "ALTER TABLE calls ADD COLUMN score REAL"


class SqliteCallIndex:
    """The index in one SQLite file; every statement runs on the index's own thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None or self._conn is None:
            raise CallStoreError("call index is not open")
        conn = self._conn

        def call() -> T:
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                raise CallStoreError(f"sqlite: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="callindex")

        def connect() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # WAL lets the CLI or a backup read while the daemon writes.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.create_function("strpos", 2, lambda hay, needle: (hay or "").find(needle) + 1,
                                 deterministic=True)
            conn.executescript(_SQLITE_SCHEMA)
            if "score" not in {row[1] for row in conn.execute("PRAGMA table_info(calls)")}:
                conn.execute(_SQLITE_SCORE)
            return conn

        try:
            self._conn = await asyncio.get_running_loop().run_in_executor(self._executor, connect)
        except sqlite3.Error as exc:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise CallStoreError(f"cannot open call index {self.path}: {exc}") from exc

    async def put(self, record: CallRecord) -> None:
        values = _row_values(record)
        await self._run(lambda c: c.execute(
            "INSERT INTO calls (call_id, tenant, started_at, outcome, status, dialled_digits,"
            " caller_digits, expires_at, record, score) VALUES (?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (call_id) DO UPDATE SET tenant=excluded.tenant,"
            " started_at=excluded.started_at, outcome=excluded.outcome, status=excluded.status,"
            " dialled_digits=excluded.dialled_digits, caller_digits=excluded.caller_digits,"
            " expires_at=excluded.expires_at, record=excluded.record, score=excluded.score",
            values,
        ))

    async def get(self, call_id: str) -> CallRecord | None:
        row = await self._run(
            lambda c: c.execute("SELECT record FROM calls WHERE call_id = ?", (call_id,)).fetchone()
        )
        return None if row is None else CallRecord.from_json(json.loads(row[0]))

    async def search(self, query: CallQuery) -> CallPage:
        where, args = _where(query, lambda _n: "?")

        def run(c: sqlite3.Connection) -> CallPage:
            total = c.execute(f"SELECT count(*) FROM calls{where}", args).fetchone()[0]
            rows = c.execute(
                f"SELECT record FROM calls{where} ORDER BY started_at DESC, call_id LIMIT ? OFFSET ?",
                [*args, query.limit, query.offset],
            ).fetchall()
            return CallPage([CallRecord.from_json(json.loads(r[0])) for r in rows], int(total))

        return await self._run(run)

    async def expired(self, now: float, limit: int = 100) -> list[CallRecord]:
        rows = await self._run(lambda c: c.execute(
            "SELECT record FROM calls WHERE expires_at IS NOT NULL AND expires_at < ?"
            " ORDER BY expires_at LIMIT ?", (now, limit)).fetchall())
        return [CallRecord.from_json(json.loads(r[0])) for r in rows]

    async def delete(self, call_id: str) -> None:
        await self._run(lambda c: c.execute("DELETE FROM calls WHERE call_id = ?", (call_id,)))

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        conn, self._conn = self._conn, None
        if executor is None:
            return
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        executor.shutdown(wait=False)


# ----------------------------------------------------------------------------- PostgreSQL
_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS callbridge_calls (
    call_id text PRIMARY KEY,
    tenant text NOT NULL,
    started_at double precision NOT NULL,
    outcome text,
    status text NOT NULL,
    dialled_digits text NOT NULL,
    caller_digits text NOT NULL,
    expires_at double precision,
    record jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS callbridge_calls_started ON callbridge_calls (started_at DESC);
CREATE INDEX IF NOT EXISTS callbridge_calls_tenant_started ON callbridge_calls (tenant, started_at DESC);
CREATE INDEX IF NOT EXISTS callbridge_calls_expires ON callbridge_calls (expires_at)
    WHERE expires_at IS NOT NULL;
ALTER TABLE callbridge_calls ADD COLUMN IF NOT EXISTS score double precision;
"""


class PostgresCallIndex:
    """The index in PostgreSQL (table ``callbridge_calls``), through an asyncpg pool."""

    def __init__(self, dsn: str, *, timeout: float = 10.0) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._pool: Any = None

    async def open(self) -> None:
        import asyncpg

        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=4,
                                                   command_timeout=self._timeout)
            async with self._pool.acquire() as conn:
                # Serialise concurrent first starts of several daemons on one database.
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(7261830514)")
                    await conn.execute(_PG_SCHEMA)
        except (OSError, asyncpg.PostgresError) as exc:
            if self._pool is not None:
                await self._pool.close()
                self._pool = None
            raise CallStoreError(f"cannot open the call index in PostgreSQL: {exc}") from exc

    def _require(self) -> Any:
        if self._pool is None:
            raise CallStoreError("call index is not open")
        return self._pool

    async def put(self, record: CallRecord) -> None:
        import asyncpg

        try:
            await self._require().execute(
                "INSERT INTO callbridge_calls (call_id, tenant, started_at, outcome, status,"
                " dialled_digits, caller_digits, expires_at, record, score)"
                " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9::jsonb,$10)"
                " ON CONFLICT (call_id) DO UPDATE SET tenant=excluded.tenant,"
                " started_at=excluded.started_at, outcome=excluded.outcome, status=excluded.status,"
                " dialled_digits=excluded.dialled_digits, caller_digits=excluded.caller_digits,"
                " expires_at=excluded.expires_at, record=excluded.record, score=excluded.score",
                *_row_values(record),
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise CallStoreError(f"postgres: {exc}") from exc

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        import asyncpg

        try:
            return list(await self._require().fetch(sql, *args))
        except (OSError, asyncpg.PostgresError) as exc:
            raise CallStoreError(f"postgres: {exc}") from exc

    async def get(self, call_id: str) -> CallRecord | None:
        rows = await self._fetch("SELECT record::text FROM callbridge_calls WHERE call_id = $1", call_id)
        return CallRecord.from_json(json.loads(rows[0][0])) if rows else None

    async def search(self, query: CallQuery) -> CallPage:
        where, args = _where(query, lambda n: f"${n}")
        n = len(args)
        rows = await self._fetch(
            f"SELECT record::text, count(*) OVER () FROM callbridge_calls{where}"
            f" ORDER BY started_at DESC, call_id LIMIT ${n + 1} OFFSET ${n + 2}",
            *args, query.limit, query.offset,
        )
        if rows:
            total = int(rows[0][1])
        elif query.offset:
            counted = await self._fetch(f"SELECT count(*) FROM callbridge_calls{where}", *args)
            total = int(counted[0][0])
        else:
            total = 0
        return CallPage([CallRecord.from_json(json.loads(r[0])) for r in rows], total)

    async def expired(self, now: float, limit: int = 100) -> list[CallRecord]:
        rows = await self._fetch(
            "SELECT record::text FROM callbridge_calls WHERE expires_at IS NOT NULL AND expires_at < $1"
            " ORDER BY expires_at LIMIT $2", now, limit)
        return [CallRecord.from_json(json.loads(r[0])) for r in rows]

    async def delete(self, call_id: str) -> None:
        await self._fetch("DELETE FROM callbridge_calls WHERE call_id = $1", call_id)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
