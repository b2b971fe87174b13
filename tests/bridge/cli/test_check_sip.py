"""The SIP trunk's line in ``callbridge check``: pjsua2 importable, the SIP and RTP ports free (or
held by a running callbridge, whose /ready then reports each carrier registration), the
registrations configured, and their passwords never printed."""

from __future__ import annotations

import json
import socket
import sys

import pytest

from bridge.cli.check import CheckFailed, Status, format_results, run_checks
from bridge.cli.check_sip import check_sip_trunk
from tests.conftest import loopback_settings
from tests.peers.sipp import SIPP
from tests.peers.sipp.registrar import SippRegistrar, free_udp_port
from tests.servers import start_daemon, stop_daemon, until

pytest.importorskip("pjsua2")

PASSWORD = "hunter2-sip-secret"


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _settings(tmp_path, *, port: int, http_port: int = 0, registrar: str = "sip:127.0.0.1:5999",
              password: str = PASSWORD, **sip):
    return loopback_settings(tmp_path, http={"host": "127.0.0.1", "port": http_port}, sip={
        "enabled": True, "host": "127.0.0.1", "port": port, "rtp_port": 42400, "rtp_port_range": 100,
        "registrations": [{"registrar": registrar, "username": "trunk", "password": password,
                           "expires": 60, "retry_interval": 5}], **sip})


async def test_disabled_is_skipped_and_enabled_reports_ports_and_registrations(tmp_path):
    by_name = {r.name: r for r in await run_checks(loopback_settings(tmp_path), 10, ports=False)}
    assert (by_name["SIP trunk"].status, by_name["SIP trunk"].detail) == (Status.SKIP, "disabled")

    port = _free_port(socket.SOCK_DGRAM)
    results = await run_checks(_settings(tmp_path, port=port), 10)
    sip = {r.name: r for r in results}["SIP trunk"]
    assert sip.status is Status.OK, format_results(results)
    assert sip.detail.startswith("pjsua2 2.15"), sip.detail
    assert f"free to listen on UDP 127.0.0.1:{port}, TCP 127.0.0.1:{port}, RTP 42400-42500" in sip.detail
    assert "registers trunk at sip:127.0.0.1:5999" in sip.detail
    assert PASSWORD not in json.dumps([r.detail for r in results])


@pytest.mark.parametrize("what", ["sip-udp", "sip-tcp", "rtp"])
async def test_a_port_held_by_another_program_fails(tmp_path, what):
    port = _free_port(socket.SOCK_STREAM if what == "sip-tcp" else socket.SOCK_DGRAM)
    kind = socket.SOCK_STREAM if what == "sip-tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as held:
        held.bind(("127.0.0.1", port))
        if kind == socket.SOCK_STREAM:
            held.listen()
        settings = (_settings(tmp_path, port=0, rtp_port=port) if what == "rtp"
                    else _settings(tmp_path, port=port))
        name = {"sip-udp": "SIP UDP", "sip-tcp": "SIP TCP", "rtp": "RTP"}[what]
        with pytest.raises(CheckFailed, match=f"{name} 127.0.0.1:{port} .*another program holds the port"):
            await check_sip_trunk(settings, 1.0)


async def test_pjsua2_missing_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pjsua2", None)  # what the import does where no wheel installed
    with pytest.raises(CheckFailed, match=r"pjsua2 does not import \(install callbridge\[sip\]"):
        await check_sip_trunk(_settings(tmp_path, port=0), 1.0, ports=False)


@pytest.mark.realtime
@pytest.mark.skipif(SIPP is None, reason="SIPp is not installed (Debian 'sip-tester'; .ci/system-deps installs it)")
async def test_next_to_a_running_daemon_its_registrations_are_reported(tmp_path):
    registrar_port = free_udp_port()
    registrar = f"sip:127.0.0.1:{registrar_port}"
    sip_port, http_port = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
    # The test registrar (SIPp) accepts user "trunk" with password "secret".
    settings = _settings(tmp_path, port=sip_port, http_port=http_port, registrar=registrar, password="secret",
                         transports=["udp"])
    out_of_service = SippRegistrar(tmp_path, registrar_port, "registrar_refuse")
    await out_of_service.start()
    app, stop, task = await start_daemon(settings)
    accepting = SippRegistrar(tmp_path, registrar_port, "registrar")
    try:
        await out_of_service.wait()
        await until(lambda: "0" in app.sip.registrations, within=5)
        with pytest.raises(CheckFailed) as failed:
            await check_sip_trunk(settings, 2.0)
        assert f"in use by the callbridge running at http://127.0.0.1:{http_port}" in str(failed.value)
        assert f"registration with {registrar} failing: 503" in str(failed.value)
        await accepting.start()
        await until(lambda: app.sip.registrations["0"]["registered"], within=15)
        detail = await check_sip_trunk(settings, 2.0)
        assert f"registered with {registrar} (expires 60 s)" in detail, detail
        assert "secret" not in detail
    finally:
        await accepting.close()
        await out_of_service.close()
        await stop_daemon(stop, task)


async def test_the_tls_port_is_checked_on_its_own_port(tmp_path):
    import trustme

    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "trunk.pem", tmp_path / "trunk.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    port, tls_port = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
    settings = _settings(tmp_path, port=port, transports=["udp", "tls"],
                         tls={"port": tls_port, "cert_file": str(cert), "key_file": str(key)},
                         srtp_requires_tls=False)
    detail = await check_sip_trunk(settings, 1.0)
    assert f"free to listen on UDP 127.0.0.1:{port}, TLS 127.0.0.1:{tls_port}," in detail
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", tls_port))
        held.listen()
        with pytest.raises(CheckFailed, match=f"SIP TLS 127.0.0.1:{tls_port} .*another program holds the port"):
            await check_sip_trunk(settings, 1.0)
