"""The AMI connection against a local manager server: login, actions, events, reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from bridge.asterisk.ami import AmiConnection, AmiError, AmiUnavailable
from bridge.settings import AmiSettings
from tests.peers.ami_server import AmiServer


async def _wait(predicate, wait: float = 5.0) -> None:
    async with asyncio.timeout(wait):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.fixture
async def server():
    s = AmiServer()
    await s.start()
    yield s
    await s.stop()


def _settings(server: AmiServer, **extra) -> AmiSettings:
    return AmiSettings(enabled=True, host="127.0.0.1", port=server.port, username="callbridge",
                       secret="ami-secret", reconnect_interval=1, **extra)


async def test_login_redirect_and_errors(server):
    server.channels.add("PJSIP/trunk-00000001")
    ami = AmiConnection(_settings(server))
    await ami.start()
    try:
        await ami.wait_logged_in(5)
        assert server.logins == 1
        login = server.actions[0]
        assert login["Action"] == "Login" and login["Username"] == "callbridge" and login["Events"] == "on"
        await ami.redirect("PJSIP/trunk-00000001", "from-internal", "2000", 1)
        redirect = server.actions[-1]
        assert {k: redirect[k] for k in ("Action", "Channel", "Context", "Exten", "Priority")} == {
            "Action": "Redirect", "Channel": "PJSIP/trunk-00000001", "Context": "from-internal",
            "Exten": "2000", "Priority": "1"}
        assert redirect["ActionID"]
        with pytest.raises(AmiError, match="No such channel"):
            await ami.redirect("PJSIP/gone-00000002", "from-internal", "2000")
        with pytest.raises(AmiError, match="Invalid/unknown command"):
            await ami.action({"Action": "NoSuchThing"})
    finally:
        await ami.close()


async def test_events_reach_callbacks(server):
    ami = AmiConnection(_settings(server))
    seen: list[dict[str, str]] = []
    ami.on_event("Hangup", lambda m: seen.append(dict(m.items())))
    await ami.start()
    try:
        await ami.wait_logged_in(5)
        server.emit(Event="Newchannel", Channel="PJSIP/a-1")
        server.emit(Event="Hangup", Channel="PJSIP/a-1", Cause="16", **{"Cause-txt": "Normal Clearing"})
        await _wait(lambda: bool(seen))
        await asyncio.sleep(0.1)
        # Only the pattern's events, with their headers.
        assert len(seen) == 1
        assert {k: seen[0][k] for k in ("Event", "Channel", "Cause", "Cause-txt")} == {
            "Event": "Hangup", "Channel": "PJSIP/a-1", "Cause": "16", "Cause-txt": "Normal Clearing"}
    finally:
        await ami.close()


async def test_refused_login_is_reported_and_no_actions_go_out(server):
    ami = AmiConnection(AmiSettings(enabled=True, host="127.0.0.1", port=server.port, username="callbridge",
                                    secret="wrong", reconnect_interval=1))
    await ami.start()
    try:
        await _wait(lambda: server.failed_logins >= 1)
        with pytest.raises(AmiUnavailable):
            await ami.wait_logged_in(0.3)
        with pytest.raises(AmiUnavailable):
            await ami.redirect("PJSIP/x", "c", "e")
        assert ami.login_failures >= 1
    finally:
        await ami.close()


async def test_reconnects_and_logs_in_again_after_asterisk_restarts(server):
    ami = AmiConnection(_settings(server))
    await ami.start()
    try:
        await ami.wait_logged_in(5)
        await server.restart(down_seconds=0.3)
        await _wait(lambda: not ami.logged_in.is_set())
        await ami.wait_logged_in(5)
        assert server.logins == 2 and ami.logins == 2
        server.channels.add("PJSIP/b-2")
        await ami.redirect("PJSIP/b-2", "from-internal", "support")
    finally:
        await ami.close()
    # Closed for good: no reconnect after close.
    await server.restart(down_seconds=0.1)
    await asyncio.sleep(1.5)
    assert server.logins == 2


async def test_connection_refused_at_start_is_retried(server):
    port = server.port
    await server.stop()
    ami = AmiConnection(AmiSettings(enabled=True, host="127.0.0.1", port=port, username="callbridge",
                                    secret="ami-secret", reconnect_interval=1))
    await ami.start()
    try:
        await asyncio.sleep(0.5)
        assert not ami.logged_in.is_set()
        await server.start(port)
        await ami.wait_logged_in(5)
    finally:
        await ami.close()


async def test_endless_message_closes_the_connection_and_it_comes_back(server, caplog):
    ami = AmiConnection(_settings(server))
    await ami.start()
    try:
        await ami.wait_logged_in(5)
        logins = server.logins
        connection = server.connections[-1]
        with caplog.at_level(logging.WARNING, logger="bridge.asterisk.ami"):
            for _ in range(400):  # 4 MB of one header that never ends its message
                if connection.writer.is_closing():
                    break
                connection.writer.write(b"X-Filler: " + b"f" * 10_000 + b"\r\n")
                with contextlib.suppress(ConnectionError):
                    await connection.writer.drain()
            await _wait(lambda: server.logins > logins)
        assert "AMI message over" in caplog.text
        server.emit(Event="Hangup", Channel="PJSIP/a-1")  # and the new connection works
        await ami.wait_logged_in(5)
    finally:
        await ami.close()


async def test_asterisk_restart_logs_a_warning_with_the_reconnect_not_an_error(server, caplog):
    ami = AmiConnection(_settings(server))
    await ami.start()
    try:
        await ami.wait_logged_in(5)
        caplog.clear()
        caplog.set_level("DEBUG")
        await server.restart(down_seconds=0.3)
        await _wait(lambda: not ami.logged_in.is_set())
        await ami.wait_logged_in(5)
    finally:
        await ami.close()
    errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert errors == [], [r.getMessage() for r in errors]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("AMI connection lost; reconnecting every 1 s" in m for m in warnings), warnings
    # panoramisk's own line is still there for debugging.
    assert any(r.name == "panoramisk" and r.getMessage() == "Connection lost" and r.levelname == "DEBUG"
               for r in caplog.records)
