"""Outbound registration of the SIP trunk against a local registrar (SIPp in UAS mode): refused
once (503), then challenged (401) and accepted with digest credentials."""

from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import loopback_settings
from tests.peers.sipp import SIPP
from tests.peers.sipp.registrar import SippRegistrar, free_udp_port
from tests.servers import start_daemon, stop_daemon, until

pytestmark = [
    pytest.mark.realtime,
    pytest.mark.skipif(SIPP is None, reason="SIPp is not installed (Debian 'sip-tester'; .ci/system-deps installs it)"),
]


def _registered(app):
    return app.metrics.registry.get_sample_value("callbridge_sip_registered", {"registration": "0"})


async def test_registers_with_digest_and_retries_after_a_failure(tmp_path):
    port = free_udp_port()
    registrar = f"sip:127.0.0.1:{port}"
    out_of_service = SippRegistrar(tmp_path, port, "registrar_refuse")
    await out_of_service.start()
    settings = loopback_settings(tmp_path, sip={
        "enabled": True, "host": "127.0.0.1", "port": 0, "transports": ["udp"],
        "rtp_port": 41800, "rtp_port_range": 100,
        "registrations": [{"registrar": registrar, "username": "trunk", "password": "secret",
                           "domain": "callbridge.test", "expires": 60, "retry_interval": 5}]})
    app, stop, task = await start_daemon(settings)
    accepting = SippRegistrar(tmp_path, port, "registrar")
    try:
        # The registrar is out of service: the failure is reported, not fatal.
        refused = await out_of_service.wait()
        assert refused.returncode == 0, refused.output[-2000:]
        await until(lambda: "0" in app.sip.registrations, within=5)  # by position in sip.registrations
        state = app.sip.registrations["0"]
        assert (state["registrar"], state["registered"], state["code"]) == (registrar, False, 503), state
        assert _registered(app) == 0
        # It comes back: the trunk registers again after its retry interval, answering the
        # digest challenge.
        await accepting.start()
        await until(lambda: app.sip.registrations["0"]["registered"], within=15)
        state = app.sip.registrations["0"]
        assert (state["code"], state["expires"]) == (200, 60), state
        assert _registered(app) == 1
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{app.http.port}/ready") as resp:
            ready = await resp.json()
        assert ready["sip"]["registrations"][0]["registered"] is True, ready
        run = await accepting.wait()
        assert run.returncode == 0, run.output[-2000:]
        registers = [m for m in run.messages.split("REGISTER sip:")[1:]]
        assert len(registers) == 2, run.messages[-3000:]
        assert 'Authorization: Digest username="trunk"' in registers[1], registers[1]
        assert "sip:trunk@callbridge.test" in registers[1]  # the address of record
        assert "secret" not in run.messages  # the password never travels
    finally:
        await out_of_service.close()
        await accepting.close()
        await stop_daemon(stop, task)
