"""Who may place a call on the SIP trunk, against SIPp (an independent SIP stack): digest
authentication of INVITEs and the per-source rate of INVITEs."""

from __future__ import annotations

import pytest

from tests.conftest import loopback_settings
from tests.peers.sipp import SIPP, run_sipp
from tests.servers import start_daemon, stop_daemon, until

pytestmark = [
    pytest.mark.realtime,
    pytest.mark.skipif(SIPP is None, reason="SIPp is not installed (Debian 'sip-tester'; .ci/system-deps installs it)"),
]

DEMO = "5511999990001"
USER, PASSWORD = "pbx-east", "c0rrect-horse"


def _settings(tmp_path, **auth):
    # No source allow-list: digest is what keeps strangers out.
    return loopback_settings(tmp_path, sip={
        "enabled": True, "host": "127.0.0.1", "port": 0, "rtp_port": 42000, "rtp_port_range": 200,
        "allowed_sources": [],
        "auth": {"realm": "callbridge.test", "users": [{"username": USER, "password": PASSWORD}], **auth}})


def _value(app, name, labels=None):
    return app.metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def test_challenged_invite_with_credentials_is_answered(tmp_path, caplog):
    app, stop, task = await start_daemon(_settings(tmp_path))
    try:
        run = await run_sipp(tmp_path, app.sip.port, DEMO, scenario="digest", extra=("-au", USER, "-ap", PASSWORD))
        assert run.returncode == 0, run.output[-2000:]
        responses = run.responses()
        assert responses[0].startswith("SIP/2.0 100") or responses[0].startswith("SIP/2.0 401"), responses
        assert any(r.startswith("SIP/2.0 401") for r in responses)
        assert 'WWW-Authenticate: Digest realm="callbridge.test"' in run.messages
        assert 'qop="auth"' in run.messages and "algorithm=MD5" in run.messages
        assert any(r.startswith("SIP/2.0 200") for r in responses)
        assert _value(app, "callbridge_sip_auth_challenges_total") == 1
        await until(lambda: _value(app, "callbridge_calls_total",
                                   {"transport": "sip", "outcome": "caller_hangup"}) == 1, within=10)
        assert len(app.simulator.sessions) == 1
        # Neither the password nor the caller's digest response reaches the log.
        response = run.messages.split('response="', 1)[1].split('"', 1)[0]
        assert PASSWORD not in caplog.text and response not in caplog.text
    finally:
        await stop_daemon(stop, task)


async def test_wrong_password_gets_403_and_never_reaches_the_model(tmp_path, caplog):
    app, stop, task = await start_daemon(_settings(tmp_path))
    try:
        run = await run_sipp(tmp_path, app.sip.port, DEMO, scenario="digest", extra=("-au", USER, "-ap", "guess"))
        assert run.returncode == 0, run.output[-2000:]
        responses = run.responses()
        assert any(r.startswith("SIP/2.0 401") for r in responses)
        assert any(r.startswith("SIP/2.0 403") for r in responses), responses
        assert not any(r.startswith("SIP/2.0 200") for r in responses)
        assert _value(app, "callbridge_calls_refused_total", {"transport": "sip", "reason": "auth_failed"}) == 1
        assert not app.simulator.sessions
        assert app.switchboard.active_calls == 0
        assert "digest authentication failed (wrong response)" in caplog.text
        assert "guess" not in caplog.text
    finally:
        await stop_daemon(stop, task)


async def test_trusted_network_is_not_challenged(tmp_path):
    app, stop, task = await start_daemon(_settings(tmp_path, trusted_sources=["127.0.0.0/8"]))
    try:
        run = await run_sipp(tmp_path, app.sip.port, DEMO, scenario="uac", extra=("-d", "1000"))
        assert run.returncode == 0, run.output[-2000:]
        assert not any(r.startswith("SIP/2.0 401") for r in run.responses())
        assert _value(app, "callbridge_sip_auth_challenges_total") == 0
        await until(lambda: len(app.simulator.sessions) == 1, within=10)
    finally:
        await stop_daemon(stop, task)


async def test_invites_over_the_per_source_rate_get_503(tmp_path):
    settings = loopback_settings(tmp_path, limits={"setup_rate": 0.05, "setup_burst": 2}, sip={
        "enabled": True, "host": "127.0.0.1", "port": 0, "rtp_port": 42000, "rtp_port_range": 200,
        "retry_after": 9})
    app, stop, task = await start_daemon(settings)
    try:
        finals = []
        for _ in range(3):
            run = await run_sipp(tmp_path, app.sip.port, "5511000000000", scenario="refused")
            assert run.returncode == 0, run.output[-2000:]
            finals.append(next(r for r in run.responses() if not r.startswith(("SIP/2.0 100", "SIP/2.0 180"))))
        assert [f.split()[1] for f in finals] == ["404", "404", "503"], finals
        assert "Retry-After: 9" in run.messages
        assert _value(app, "callbridge_connections_refused_total", {"listener": "sip", "reason": "rate"}) == 1
    finally:
        await stop_daemon(stop, task)
