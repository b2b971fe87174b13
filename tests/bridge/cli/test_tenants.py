"""``callbridge tenants ...`` end to end: real files, a real PostgreSQL (tests/pg.py)."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import asyncpg
import pytest

from bridge.cli import tenants as tenant_commands
from tenants.file import embedded_tenants_file
from tests.pg import PostgresCluster, shared_cluster


def run(argv: list[str]) -> int:
    # The same shape as bridge.cli.build_parser, with only this module's commands.
    parser = argparse.ArgumentParser(prog="callbridge")
    parser.add_argument("-c", "--config", type=Path, default=None)
    tenant_commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No .env file, no deployment variables: each test's config file is all there is."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("CALLBRIDGE_", "SUPABASE_")) or name in {
            "DATABASE_URL",
            "APP_ENV",
            "PORT",
            "LOG_LEVEL",
        }:
            monkeypatch.delenv(name)


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "callbridge.yaml"
    path.write_text(text)
    return path


def test_validate_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["tenants", "validate", str(embedded_tenants_file())]) == 0
    out = capsys.readouterr().out
    assert "3 tenant(s), 4 number(s) and pattern(s): valid" in out
    assert "pizzaria-bella" in out and "+55119999901*" in out


def test_validate_reports_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "tenants.yaml"
    bad.write_text("tenants:\n  - slug: a\n    voise: x\n  - slug: b\n    numbers: ['+55 11 x']\n")
    assert run(["tenants", "validate", str(bad)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert any("tenants[0] (a): unknown key 'voise'" in line for line in err)
    assert any("tenants[1] (b): numbers:" in line for line in err)


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (
            "sip:+5511999990001@pbx.example.com;user=phone",
            ["normalised: +5511999990001", "tenant:     demo", "match:      exact +5511999990001"],
        ),
        (
            "(11) 99999-0150",
            ["normalised: +5511999990150", "tenant:     clinica-plantao", "match:      prefix +55119999901*"],
        ),
    ],
)
def test_show_explains_the_match(
    number: str, expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["tenants", "show", number]) == 0
    out = capsys.readouterr().out
    for line in expected:
        assert line in out


def test_show_unknown_number_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["tenants", "show", "+15550000000"]) == 1
    assert "none: the call is refused (unknown_number: refuse)" in capsys.readouterr().out


def test_show_default_tenant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config(tmp_path, "tenants:\n  unknown_number: default\n  default_tenant: demo\n")
    assert run(["-c", str(path), "tenants", "show", "+15550000000"]) == 0
    assert "match:      default *" in capsys.readouterr().out


def test_list_file_backend(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["tenants", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["SLUG", "ACTIVE", "VOICE", "NUMBERS", "NAME"]
    assert [line.split()[0] for line in lines[1:]] == ["demo", "pizzaria-bella", "clinica-plantao"]


def test_bad_settings_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config(tmp_path, "tenants:\n  default_country: ZZ\n")
    assert run(["-c", str(path), "tenants", "list"]) == 2
    assert "default_country" in capsys.readouterr().err


def test_migrate_without_database_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["tenants", "migrate"]) == 2
    assert "--database-url" in capsys.readouterr().err


@pytest.fixture
def database(tmp_path: Path) -> str:
    cluster: PostgresCluster = shared_cluster()
    cluster.start()
    name = cluster.new_database_name("cli")

    async def create() -> None:
        conn = await asyncpg.connect(cluster.dsn())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return cluster.dsn(name)


def test_migrate_import_then_show_from_postgres(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["tenants", "import", "--database-url", database, str(embedded_tenants_file())]) == 2
    assert "the tenant tables do not exist; run: callbridge tenants migrate" in capsys.readouterr().err
    assert run(["tenants", "migrate", "--database-url", database]) == 0
    assert "applied: 001_tenant_tables.sql" in capsys.readouterr().out
    assert run(["tenants", "migrate", "--database-url", database]) == 0
    assert "up to date" in capsys.readouterr().out

    path = config(tmp_path, f"tenants:\n  backend: postgres\n  database_url: '{database}'\n")
    assert run(["-c", str(path), "tenants", "import", str(embedded_tenants_file())]) == 0
    assert "created: demo, pizzaria-bella, clinica-plantao" in capsys.readouterr().out

    assert run(["-c", str(path), "tenants", "show", "011 99999-0002"]) == 0
    out = capsys.readouterr().out
    assert "tenant:     pizzaria-bella" in out and "match:      exact +5511999990002" in out
    assert run(["-c", str(path), "tenants", "list"]) == 0
    listed = capsys.readouterr().out
    assert "clinica-plantao" in listed and "+5511999990001 1001" in listed


def test_unreachable_database_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://postgres@127.0.0.1:{port}/x"
    assert run(["tenants", "migrate", "--database-url", url]) == 3
    assert "cannot reach the database" in capsys.readouterr().err
    path = config(
        tmp_path, f"tenants:\n  backend: postgres\n  database_url: '{url}'\n  lookup_timeout: 0.5\n"
    )
    assert run(["-c", str(path), "tenants", "show", "+5511999990001"]) == 3
    assert "tenant store unavailable" in capsys.readouterr().err
