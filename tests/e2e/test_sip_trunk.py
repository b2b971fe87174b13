"""The SIP trunk against SIPp (Debian's sip-tester), an independent SIP implementation."""

from __future__ import annotations

import asyncio
import datetime
import re
import time
import wave

import numpy as np
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


def _calls(app, transport: str) -> float:
    """Calls of ``transport`` counted under any outcome."""
    return sum(sample.value for family in app.metrics.registry.collect() if family.name == "callbridge_calls"
               for sample in family.samples
               if sample.name == "callbridge_calls_total" and sample.labels.get("transport") == transport)


def _answers(run, method: str) -> dict[int, str]:
    """The final responses SIPp received to its ``method`` requests, by CSeq number, with the
    time each arrived (SIPp's wall clock) in front."""
    answers: dict[int, str] = {}
    for block in run.messages.split("-----------------------------------------------")[1:]:
        stamp, _, rest = block.partition("\n")
        if "message received" not in rest:
            continue
        message = rest.split("\n\n", 1)[-1]
        cseq = re.search(rf"^CSeq:\s*(\d+) {method}", message, re.M)
        if message.startswith("SIP/2.0 2") and cseq:
            answers[int(cseq.group(1))] = stamp.strip() + "\n" + message
    return answers


def _sdp_direction(message: str) -> str:
    found = re.search(r"^a=(sendrecv|sendonly|recvonly|inactive)\s*$", message, re.M)
    return found.group(1) if found else "sendrecv"  # RFC 4566: sendrecv when none is given


@pytest.mark.parametrize("hold", ["sendonly", "inactive"])
async def test_hold_unhold_and_codec_change_keep_one_call_with_audio(tmp_path, hold):
    # PJSIP re-creates the call's stream (a new conference slot) on each of these re-INVITEs;
    # the trunk must re-join its media port each time or the caller goes silent for the agent.
    app, stop, task = await start_daemon(_settings(tmp_path))
    try:
        wall_minus_monotonic = time.time() - time.monotonic()
        run = await run_sipp(tmp_path, app.sip.port, DEMO, scenario="hold", extra=("-set", "hold", hold))
        assert run.returncode == 0, run.output[-2000:] + run.messages[-3000:]
        assert "CSeq: 2 INVITE" in run.messages and f"a={hold}" in run.messages  # the hold offer went out
        answers = _answers(run, "INVITE")
        assert sorted(answers) == [1, 2, 3, 4]
        assert re.search(r"^m=audio \d+ RTP/AVP 0\b", answers[1], re.M)
        assert _sdp_direction(answers[1]) == "sendrecv"
        # On hold: the answer to sendonly is recvonly (RFC 3264 section 6.1), to inactive inactive.
        assert _sdp_direction(answers[2]) == {"sendonly": "recvonly", "inactive": "inactive"}[hold]
        assert _sdp_direction(answers[3]) == "sendrecv"  # unhold
        assert re.search(r"^m=audio \d+ RTP/AVP 8\b", answers[4], re.M)  # moved to PCMA
        assert _sdp_direction(answers[4]) == "sendrecv"
        codec_changed = datetime.datetime.strptime(answers[4].split("\n", 1)[0], "%Y-%m-%d %H:%M:%S.%f").timestamp()
        # One call, one model session, ended by the caller's BYE.
        await until(lambda: _value(app, "callbridge_calls_total",
                                   {"transport": "sip", "outcome": "caller_hangup"}) == 1, within=10)
        assert _calls(app, "sip") == 1
        assert len(app.simulator.sessions) == 1
        session = app.simulator.sessions[0]
        # SIPp sends RTP only after the codec change (the PCMA pcap): the model heard it.
        assert session.speech_started_at, "the caller's speech after the codec change never reached the model"
        assert session.speech_started_at[0] + wall_minus_monotonic > codec_changed
        # And the recording's caller channel has it too, after a quiet start.
        await asyncio.wait_for(app.archive.wait_idle(), 10)
        (wav,) = (tmp_path / "rec").rglob("*.wav")
        caller = _channel_rms(wav, 0)
        assert max(caller[:4]) < 100, caller
        assert max(caller[-8:]) > 500, caller
    finally:
        await stop_daemon(stop, task)


def _channel_rms(path, channel: int) -> list[float]:
    """RMS of one channel of a stereo 16-bit WAV, per second."""
    with wave.open(str(path)) as w:
        rate = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)[:, channel]
    return [float(np.sqrt(np.mean(samples[i:i + rate].astype(np.float64) ** 2)))
            for i in range(0, len(samples) - rate + 1, rate)]


async def test_options_keepalive_and_session_timer_refreshes(tmp_path):
    app, stop, task = await start_daemon(_settings(tmp_path))
    try:
        ping = await run_sipp(tmp_path, app.sip.port, DEMO, scenario="options")
        assert ping.returncode == 0, ping.output[-2000:] + ping.messages[-2000:]
        (answer,) = _answers(ping, "OPTIONS").values()
        assert "INVITE" in re.search(r"^Allow:(.*)$", answer, re.M).group(1)  # type: ignore[union-attr]
        assert not app.simulator.sessions and _calls(app, "sip") == 0  # a keep-alive is no call
        run = await run_sipp(tmp_path, app.sip.port, DEMO, scenario="session_timer")
        assert run.returncode == 0, run.output[-2000:] + run.messages[-3000:]
        invites, updates = _answers(run, "INVITE"), _answers(run, "UPDATE")
        assert sorted(invites) == [1, 3] and sorted(updates) == [2]
        for answer in (invites[1], updates[2], invites[3]):
            assert re.search(r"^Session-Expires:\s*90;refresher=uac\s*$", answer, re.M), answer
            assert re.search(r"^Require:.*\btimer\b", answer, re.M), answer  # RFC 4028 section 9
        await until(lambda: _value(app, "callbridge_calls_total",
                                   {"transport": "sip", "outcome": "caller_hangup"}) == 1, within=10)
        assert _calls(app, "sip") == 1 and len(app.simulator.sessions) == 1
    finally:
        await stop_daemon(stop, task)


async def test_model_unreachable_before_answer_is_503_with_retry_after(tmp_path):
    # A model endpoint where nothing listens: the INVITE is never answered 200; the PBX gets a
    # 503 with Retry-After and tries its next route.
    settings = _settings(tmp_path, retry_after=9).model_copy(update={"model": loopback_settings(
        tmp_path, model={"provider": "openai", "api_key": "sk-test", "websocket_base_url": "ws://127.0.0.1:9/v1",
                         "connect_timeout": 2}).model})
    app, stop, task = await start_daemon(settings)
    try:
        run = await run_sipp(tmp_path, app.sip.port, DEMO, scenario="refused")
        assert run.returncode == 0, run.output[-2000:] + run.messages[-2000:]
        responses = run.responses()
        assert any(r.startswith("SIP/2.0 180") for r in responses), responses  # ringing while it tried
        assert any(r.startswith("SIP/2.0 503") for r in responses), responses
        assert not any(r.startswith("SIP/2.0 200") for r in responses), responses
        assert "Retry-After: 9" in run.messages
        assert _value(app, "callbridge_calls_refused_total",
                      {"transport": "sip", "reason": "model_unavailable"}) == 1
        assert _value(app, "callbridge_calls_total", {"transport": "sip", "outcome": "refused"}) == 1
        assert app.switchboard.active_calls == 0
    finally:
        await stop_daemon(stop, task)


async def test_cancel_while_the_model_session_opens_abandons_it(tmp_path):
    # A model endpoint that accepts the connection and never answers: the CANCEL that follows
    # the 180 is answered at once (487), the half-open session is dropped, nothing is refused.
    connections: list[asyncio.Event] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        closed = asyncio.Event()
        connections.append(closed)
        await reader.read()  # until callbridge lets go
        closed.set()
        writer.close()

    model = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = model.sockets[0].getsockname()[1]
    settings = _settings(tmp_path).model_copy(update={"model": loopback_settings(
        tmp_path, model={"provider": "openai", "api_key": "sk-test",
                         "websocket_base_url": f"ws://127.0.0.1:{port}/v1", "connect_timeout": 20}).model})
    app, stop, task = await start_daemon(settings)
    try:
        started = time.monotonic()
        run = await run_sipp(tmp_path, app.sip.port, DEMO, scenario="cancel_ringing")
        assert run.returncode == 0, run.output[-2000:] + run.messages[-2000:]
        assert time.monotonic() - started < 10  # not held until the model's connect timeout
        assert any(r.startswith("SIP/2.0 487") for r in run.responses()), run.responses()
        assert connections, "the model was never dialled"
        await asyncio.wait_for(connections[0].wait(), 5)  # the opening session was abandoned
        assert _value(app, "callbridge_calls_refused_total",
                      {"transport": "sip", "reason": "model_unavailable"}) == 0
        assert app.switchboard.active_calls == 0 and _calls(app, "sip") == 0
    finally:
        await stop_daemon(stop, task)
        model.close()


@pytest.mark.parametrize("hold", ["sendonly", "sendrecv"])
async def test_audio_during_hold_is_recorded_but_kept_from_the_model(tmp_path, hold):
    # The caller holds 1.5 s into the greeting, then sends 7 s of audio (a PBX's music on hold;
    # here speech). Held: the agent is cut where the caller stopped hearing it and the model hears
    # nothing of it. The same re-INVITE without the hold (sendrecv) lets the speech through.
    app, stop, task = await start_daemon(_settings(tmp_path))
    try:
        run = await run_sipp(tmp_path, app.sip.port, DEMO, scenario="hold_audio", extra=("-set", "hold", hold))
        assert run.returncode == 0, run.output[-2000:] + run.messages[-3000:]
        await until(lambda: _value(app, "callbridge_calls_total",
                                   {"transport": "sip", "outcome": "caller_hangup"}) == 1, within=10)
        (session,) = app.simulator.sessions
        await asyncio.wait_for(app.archive.wait_idle(), 10)
        (wav,) = (tmp_path / "rec").rglob("*.wav")
        caller = _channel_rms(wav, 0)
        assert max(caller) > 500, caller  # the audio is in the recording either way
        if hold == "sendonly":
            assert not session.speech_started_at, "audio sent during the hold reached the model"
            assert len(session.truncates) == 1  # the greeting, cut at the hold
            assert session.truncates[0]["audio_end_ms"] < 2500
            assert _value(app, "callbridge_barge_ins_total", {"transport": "sip"}) == 1
        else:
            assert session.speech_started_at
    finally:
        await stop_daemon(stop, task)
