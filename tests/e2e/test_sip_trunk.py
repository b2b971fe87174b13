"""The SIP trunk against SIPp (Debian's sip-tester), an independent SIP implementation."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import loopback_settings
from tests.peers.sipp import SIPP, run_sipp
from tests.servers import start_daemon, stop_daemon, until

pytestmark = [
    pytest.mark.realtime,
    pytest.mark.skipif(SIPP is None, reason="SIPp is not installed (Debian 'sip-tester'; .ci/system-deps installs it)"),
]

DEMO = "5511999990001"  # national form: the trunk normalises it like every other transport


def _settings(tmp_path, **sip):
    return loopback_settings(
        tmp_path, record=True,
        sip={"enabled": True, "host": "127.0.0.1", "port": 0, "rtp_port": 41000, "rtp_port_range": 200, **sip},
    )


def _value(app, name, labels):
    return app.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_sipp_call_with_audio_and_dtmf(tmp_path):
    app, stop, task = await start_daemon(_settings(tmp_path))
    try:
        run = await run_sipp(tmp_path, app.sip.port, DEMO)
        assert run.returncode == 0, run.output[-2000:]
        responses = run.responses()
        assert any(r.startswith("SIP/2.0 180") for r in responses)
        assert any(r.startswith("SIP/2.0 200") for r in responses)
        # The pcap's caller audio reached the model, and its RFC 4733 digit the DTMF path.
        session = app.simulator.sessions[-1]
        assert session.input_audio_ms > 3000, session.input_audio_ms
        await until(lambda: _value(app, "callbridge_calls_total",
                                   {"transport": "sip", "outcome": "caller_hangup"}) == 1, within=10)
        assert _value(app, "callbridge_dtmf_digits_total", {"transport": "sip"}) == 1
        await asyncio.wait_for(app.archive.wait_idle(), 10)
        page = await app.archive.search(__import__("bridge.records.callstore", fromlist=["CallQuery"]).CallQuery())
        sip_calls = [c for c in page.calls if c.transport == "sip"]
        assert len(sip_calls) == 1 and sip_calls[0].dialled == "+5511999990001"
    finally:
        await stop_daemon(stop, task)


async def test_unknown_number_404_and_draining_503(tmp_path):
    app, stop, task = await start_daemon(_settings(tmp_path, retry_after=7))
    try:
        unknown = await run_sipp(tmp_path, app.sip.port, "5511000000000", scenario="refused")
        assert unknown.returncode == 0, unknown.output[-2000:]
        assert any(r.startswith("SIP/2.0 404") for r in unknown.responses())
        assert not app.simulator.sessions  # nothing reached the model
        app.switchboard.start_draining()
        busy = await run_sipp(tmp_path, app.sip.port, DEMO, scenario="refused")
        assert any(r.startswith("SIP/2.0 503") for r in busy.responses()), busy.messages[-2000:]
        assert "Retry-After: 7" in busy.messages
        assert _value(app, "callbridge_calls_refused_total", {"transport": "sip", "reason": "draining"}) == 1
        assert not app.simulator.sessions
    finally:
        await stop_daemon(stop, task)


async def test_source_outside_the_allow_list_gets_403(tmp_path):
    app, stop, task = await start_daemon(_settings(tmp_path, allowed_sources=["10.0.0.0/8"]))
    try:
        run = await run_sipp(tmp_path, app.sip.port, DEMO, scenario="refused")
        assert any(r.startswith("SIP/2.0 403") for r in run.responses()), run.messages[-2000:]
        assert _value(app, "callbridge_calls_refused_total",
                      {"transport": "sip", "reason": "source_not_allowed"}) == 1
        assert not app.simulator.sessions
    finally:
        await stop_daemon(stop, task)


async def test_cancel_before_answer_never_reaches_the_model(tmp_path):
    # The trunk rings for a second before answering, as a PBX administrator may ask for.
    app, stop, task = await start_daemon(_settings(tmp_path, answer_delay=1.0))
    try:
        run = await run_sipp(tmp_path, app.sip.port, DEMO, scenario="cancel")
        assert any(r.startswith("SIP/2.0 487") for r in run.responses()), run.messages[-2000:]
        await asyncio.sleep(0.5)
        assert app.switchboard.active_calls == 0
        assert not app.simulator.sessions
    finally:
        await stop_daemon(stop, task)


async def test_daemon_hangs_up_with_bye(tmp_path):
    settings = _settings(tmp_path)
    settings = settings.model_copy(update={"limits": settings.limits.model_copy(update={"max_call_duration": 3})})
    app, stop, task = await start_daemon(settings)
    try:
        run = await run_sipp(tmp_path, app.sip.port, DEMO, scenario="bye_from_daemon")
        assert run.returncode == 0, run.output[-2000:]
        assert "BYE sip:" in run.messages
        await until(lambda: _value(app, "callbridge_calls_total", {"transport": "sip", "outcome": "timeout"}) == 1,
                    within=10)
    finally:
        await stop_daemon(stop, task)
