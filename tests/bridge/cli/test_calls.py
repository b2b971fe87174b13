"""``callbridge calls list|show`` and ``callbridge recordings get`` against a live ops API."""

from __future__ import annotations

import asyncio
import json

import pytest

from bridge.cli import main
from tests.bridge.ops.test_ops_api import ACME, ADMIN, GLOBEX, ops_server, record_calls


async def run_cli(*argv: str) -> int:
    # The commands block (urllib); the server they talk to runs on this test's event loop.
    return await asyncio.to_thread(main, list(argv))


async def test_list_show_and_get(tmp_path, capsys):
    async with ops_server(tmp_path) as (archive, clock, http):
        acme1, globex, acme3 = await record_calls(archive, clock)
        url = str(http._base_url).rstrip("/")

        assert await run_cli("calls", "list", "--url", url, "--token", ADMIN) == 0
        out = capsys.readouterr().out
        lines = out.strip().splitlines()
        assert lines[0].split()[:3] == ["STARTED", "(UTC)", "TENANT"]
        assert [line.split()[-1] for line in lines[1:4]] == [acme3.call_id, globex.call_id, acme1.call_id]
        assert lines[-1] == "3 of 3 call(s)"

        assert await run_cli("calls", "list", "--url", url, "--token", ACME, "--outcome", "transferred",
                             "--json") == 0
        page = json.loads(capsys.readouterr().out)
        assert [c["call_id"] for c in page["calls"]] == [acme3.call_id]

        assert await run_cli("calls", "list", "--url", url, "--token", ADMIN, "--number",
                             globex.caller_id[-6:], "--since", "2025-06-15T15:00:00Z") == 0
        out = capsys.readouterr().out
        assert globex.call_id in out and acme1.call_id not in out

        assert await run_cli("calls", "show", acme1.call_id, "--url", url, "--token", ACME) == 0
        out = capsys.readouterr().out
        assert f"call       {acme1.call_id}" in out
        assert "outcome    normal" in out and "caller     5511988000001" in out
        assert "[0:00] caller: question 0" in out and "[0:01] agent: answer 0" in out

        target = tmp_path / "out" / "call.wav"
        target.parent.mkdir()
        assert await run_cli("recordings", "get", acme1.call_id, "-o", str(target), "--url", url,
                             "--token", ACME) == 0
        record = await archive.get(acme1.call_id)
        assert target.read_bytes() == (archive.layout.root / f"{record.path}.wav").read_bytes()
        assert "wrote" in capsys.readouterr().err


async def test_errors_are_one_line_and_an_exit_status(tmp_path, capsys, monkeypatch):
    async with ops_server(tmp_path) as (archive, clock, http):
        _, globex, _ = await record_calls(archive, clock)
        url = str(http._base_url).rstrip("/")
        assert await run_cli("calls", "list", "--url", url, "--token", "wrong") == 1
        assert capsys.readouterr().err.strip() == "callbridge: HTTP 401: invalid token"
        assert await run_cli("calls", "show", globex.call_id, "--url", url, "--token", ACME) == 1
        assert "HTTP 404" in capsys.readouterr().err
        assert await run_cli("calls", "list", "--url", url, "--token", GLOBEX, "--tenant", "acme") == 1
        assert "HTTP 403" in capsys.readouterr().err
        target = tmp_path / "nope.wav"
        assert await run_cli("recordings", "get", globex.call_id, "-o", str(target), "--url", url,
                             "--token", ACME) == 1
        assert not target.exists()
        # The token may come from the environment instead of the command line.
        monkeypatch.setenv("CALLBRIDGE_OPS_TOKEN", ADMIN)
        monkeypatch.setenv("CALLBRIDGE_OPS_URL", url)
        assert await run_cli("calls", "show", globex.call_id) == 0
        assert globex.call_id in capsys.readouterr().out
    # Nobody listening.
    assert await run_cli("calls", "list", "--url", url, "--token", ADMIN) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_help_without_action(capsys):
    with pytest.raises(SystemExit):
        main(["calls", "--help"])
    assert "list" in capsys.readouterr().out
    assert main(["recordings"]) == 2
