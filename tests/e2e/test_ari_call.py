"""ARI-driven calls end to end: the local ARI server plays Asterisk (REST, events, the caller and
the external media), callbridge runs its Stasis application, the built-in simulator is the model."""

from __future__ import annotations

import asyncio
import itertools
import time

import numpy as np
import pytest

from bridge.app import Application
from bridge.settings import load_settings
from sip import rtp
from tests.conftest import load_wav, simulator_model
from tests.peers.ari_server import AriServer
from tests.servers import start_daemon

pytestmark = pytest.mark.realtime

DEMO_NUMBER = "+5511999990001"
APP = "callbridge-test"
RTP_PORTS = {"rtp_port_min": 46000, "rtp_port_max": 46999}


def _settings(tmp_path, server: AriServer, **ari):
    return load_settings(
        env_file=None,
        environ={},
        http={"host": "127.0.0.1", "port": 0},
        audiosocket={"host": "127.0.0.1", "port": 0},
        agi={"host": "127.0.0.1", "port": 0},
        recording={"enabled": False, "directory": str(tmp_path / "rec")},
        model=simulator_model(),
        ari={"enabled": True, "url": server.url, "username": "callbridge", "password": "secret", "app": APP,
             "rtp_host": "127.0.0.1", "reconnect_min": 0.1, "reconnect_max": 0.5, **RTP_PORTS, **ari},
    )


class Harness:
    def __init__(self, app: Application, server: AriServer, stop: asyncio.Event, task: asyncio.Task) -> None:
        self.app = app
        self.server = server
        self.stop = stop
        self.task = task

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)
        await self.server.stop()


async def _start(tmp_path, server_kwargs=None, **ari) -> Harness:
    server = AriServer(**(server_kwargs or {}))
    await server.start()
    app, stop, task = await start_daemon(_settings(tmp_path, server, **ari))
    await asyncio.wait_for(server.app_registered.wait(), 5)
    return Harness(app, server, stop, task)


def _speech(fixtures_dir) -> np.ndarray:
    samples, rate = load_wav(fixtures_dir / "speech" / "real_cmu_8k.wav")
    assert rate == 8000
    return samples


async def _until(predicate, wait: float = 5.0) -> None:
    deadline = time.monotonic() + wait
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def _metric(app: Application, name: str, labels: dict[str, str] | None = None) -> float:
    value = app.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


@pytest.mark.both_dialects
async def test_rtp_call_set_up_talk_and_caller_hangup(tmp_path, fixtures_dir):
    h = await _start(tmp_path)
    try:
        server = h.server
        caller = await server.place_call(APP, DEMO_NUMBER, args=("inbound", DEMO_NUMBER))
        media = await caller.wait_bridged()
        t0 = time.monotonic()
        silence = np.zeros(int(8000 * 1.2), dtype=np.int16)
        speech = _speech(fixtures_dir)[: 8000 * 5]
        # Loss, duplicates and reordering on the way in.
        audio = np.concatenate([silence, speech, np.zeros(8000 * 2, dtype=np.int16)])
        await media.play(audio, start=t0, drop={70, 71, 150}, duplicate={90, 200}, swap={100, 220})
        await caller.hang_up()
        await _until(lambda: h.app.stasis.active == 0)

        # The ARI dialogue, in Asterisk's terms: answer, bridge, caller in, external media, the
        # external channel added only after its StasisStart, then teardown of what is left.
        lines = server.request_lines()
        assert lines[:5] == [
            "POST /channels/{caller}/answer -> 204",
            "POST /bridges/{bridge} -> 200",
            "POST /bridges/{bridge}/addChannel -> 204",
            "POST /channels/externalMedia -> 200",
            "POST /bridges/{bridge}/addChannel -> 204",
        ], lines
        assert lines[5:] == ["DELETE /channels/{media} -> 204", "DELETE /bridges/{bridge} -> 204"], lines
        em = next(r for r in server.requests if r.path == "/channels/externalMedia")
        assert em.query["encapsulation"] == "rtp" and em.query["format"] == "ulaw"
        assert em.query["app"] == APP and em.query["external_host"].startswith("127.0.0.1:")
        assert 46000 <= int(em.query["external_host"].rpartition(":")[2]) <= 46999
        media_start = next(e for e in server.events
                           if e["type"] == "StasisStart" and e["channel"]["id"] == em.query["channelId"])
        add_media = [r for r in server.requests if r.path.endswith("/addChannel")][1]
        assert add_media.query["channel"] == em.query["channelId"]

        # The model heard the caller and answered; the agent's audio came back as proper RTP.
        session = h.app.simulator.sessions[-1]
        assert session.speech_started_at, "the simulator never heard the caller"
        packets = media.packets
        assert len(packets) > 200
        assert {p.payload_type for p in packets} == {rtp.PayloadType.PCMU}
        assert len({p.ssrc for p in packets}) == 1
        assert packets[0].marker and not any(p.marker for p in packets[1:])
        for a, b in itertools.pairwise(packets):
            assert b.sequence_number == (a.sequence_number + 1) & 0xFFFF
            assert b.timestamp == (a.timestamp + 160) & 0xFFFFFFFF
            assert len(b.payload) == 160
        times = np.array([f.at for f in media.received])
        rate = (len(times) - 1) / (times[-1] - times[0])
        assert 47 <= rate <= 53, rate
        agent = [f for f in media.received if np.sqrt(np.mean(
            rtp_decode(f.payload).astype(np.float64) ** 2)) > 200]
        assert len(agent) > 50, "no agent speech came back"

        # Receive side: RFC 3550 statistics saw the impairments.
        stats = h.app.stasis.finished[-1].rtp_statistics
        assert stats is not None
        assert stats.jitter_buffer.duplicates == 2
        assert stats.jitter_buffer.lost == 3
        assert stats.reception.lost == 1  # RFC 3550 A.3: 3 lost minus 2 duplicates
        assert _metric(h.app, "callbridge_frames_dropped_total", {"direction": "inbound",
                                                                  "reason": "duplicate"}) == 2
        assert _metric(h.app, "callbridge_calls_total", {"transport": "rtp", "outcome": "caller_hangup"}) == 1
        assert media_start["type"] == "StasisStart"
    finally:
        await h.close()


def rtp_decode(payload: bytes) -> np.ndarray:
    from media import g711

    return g711.ulaw_decode(payload)


async def _hang_up_when(server: AriServer, caller, method: str, path: str, delay: float = 0.0):
    """Hang the caller up as the daemon sends ``method path`` (before Asterisk answers it)."""
    fired = asyncio.Event()

    async def hook(m: str, p: str) -> None:
        if not fired.is_set() and m == method and p.endswith(path):
            fired.set()
            if delay:
                server._spawn(_later(delay, caller.hang_up()))
            else:
                await caller.hang_up()

    server.on_request = hook
    return fired


async def _later(delay: float, coro):
    await asyncio.sleep(delay)
    await coro


@pytest.mark.parametrize("moment", ["answer", "externalMedia", "waiting_media"])
async def test_caller_hangs_up_during_set_up(tmp_path, moment):
    server_kwargs = {"media_stasis_delay": 0.6} if moment == "waiting_media" else None
    h = await _start(tmp_path, server_kwargs)
    try:
        server = h.server
        caller = await server.place_call(APP, DEMO_NUMBER)
        if moment == "answer":
            await _hang_up_when(server, caller, "POST", "/answer")
        elif moment == "externalMedia":
            await _hang_up_when(server, caller, "POST", "/externalMedia")
        else:
            # The external channel is slow to enter Stasis; the caller leaves meanwhile.
            await _hang_up_when(server, caller, "POST", "/externalMedia", delay=0.2)
        await asyncio.wait_for(caller.channel.gone.wait(), 5)
        await _until(lambda: h.app.stasis.active == 0)
        await asyncio.sleep(0.8)  # let a late StasisStart of the external channel arrive
        lines = server.request_lines()
        # Nothing is added to the bridge after the caller left, nothing reaches the model, and
        # whatever was created is removed exactly once.
        media_adds = [r for r in server.requests if r.path.endswith("/addChannel")
                      and "-media-" in r.query.get("channel", "")]
        assert media_adds == [], lines
        assert h.app.simulator.sessions == []
        assert not [line for line in lines if line.startswith("DELETE /channels/{caller}")], lines
        if moment == "answer":
            assert lines == ["POST /channels/{caller}/answer -> 404"], lines
        else:
            assert lines.count("DELETE /channels/{media} -> 204") == 1, lines
            assert lines.count("DELETE /bridges/{bridge} -> 204") == 1, lines
            assert all(not c.alive for c in server.channels.values())
            assert server.bridges == {}
    finally:
        await h.close()


@pytest.mark.parametrize("delay", [-1.0, 0.4])
async def test_external_channel_is_bridged_only_after_its_stasis_start(tmp_path, delay):
    # delay < 0: StasisStart is sent before the externalMedia response; 0.4: well after it.
    h = await _start(tmp_path, {"media_stasis_delay": delay})
    try:
        server = h.server
        caller = await server.place_call(APP, DEMO_NUMBER)
        media = await caller.wait_bridged()
        await media.play(np.zeros(8000, dtype=np.int16))
        em = next(r for r in server.requests if r.path == "/channels/externalMedia")
        started = next(e for e in server.events
                       if e["type"] == "StasisStart" and e["channel"]["id"] == em.query["channelId"])
        add_media = [r for r in server.requests if r.path.endswith("/addChannel")
                     and r.query["channel"] == em.query["channelId"]]
        assert [r.status for r in add_media] == [204]
        assert not [r for r in server.requests if r.status >= 400], server.request_lines()
        if delay > 0:
            assert add_media[0].at - em.at >= delay * 0.9
        assert started["channel"]["name"].startswith("UnicastRTP/")
        await _until(lambda: len(media.received) > 30)
        await caller.hang_up()
        await _until(lambda: h.app.stasis.active == 0)
    finally:
        await h.close()


async def test_unknown_number_continues_at_the_fallback_location(tmp_path):
    h = await _start(tmp_path, fallback_context="no-agent", fallback_extension="busy", fallback_priority=2)
    try:
        server = h.server
        caller = await server.place_call(APP, "+15550000000")
        await _until(lambda: caller.channel.continued_to is not None)
        assert caller.channel.continued_to == ("no-agent", "busy", 2)
        assert caller.channel.variables["CALLBRIDGE_STATUS"] == "UNKNOWN_NUMBER"
        assert caller.channel.alive and caller.channel.state == "Ring"  # never answered
        assert server.request_lines() == [
            "POST /channels/{caller}/variable -> 204",
            "POST /channels/{caller}/continue -> 204",
        ]
        assert h.app.simulator.sessions == []
        assert _metric(h.app, "callbridge_calls_refused_total",
                       {"transport": "rtp", "reason": "unknown_number"}) == 1
    finally:
        await h.close()


async def test_busy_instance_hands_the_caller_back_after_stasis(tmp_path):
    # No fallback location configured: the channel continues after its Stasis() line, where the
    # dialplan reads CALLBRIDGE_STATUS and tries another instance.
    h = await _start(tmp_path)
    try:
        h.app.switchboard.start_draining()
        caller = await h.server.place_call(APP, DEMO_NUMBER)
        await _until(lambda: caller.channel.continued_to is not None)
        cont = next(r for r in h.server.requests if r.path.endswith("/continue"))
        assert cont.query == {}, cont.query
        assert caller.channel.variables["CALLBRIDGE_STATUS"] == "UNAVAILABLE"
        assert h.app.simulator.sessions == []
    finally:
        await h.close()


async def test_dialled_number_from_the_dialplan_extension(tmp_path):
    h = await _start(tmp_path)
    try:
        server = h.server
        caller = await server.place_call(APP, DEMO_NUMBER, args=())
        media = await caller.wait_bridged()
        await media.play(np.zeros(8000, dtype=np.int16))
        assert h.app.simulator.sessions, "the call did not reach the model"
        call = next(iter(h.app.switchboard.calls()))
        assert call.info.dialled == DEMO_NUMBER and call.tenant.slug == "demo"
        assert call.info.caller_id == "+5511988887777"
        await caller.hang_up()
        await _until(lambda: h.app.stasis.active == 0)
    finally:
        await h.close()


async def test_press_zero_transfers_over_ari_with_announcement(tmp_path):
    h = await _start(tmp_path)
    try:
        server = h.server
        caller = await server.place_call(APP, DEMO_NUMBER)
        media = await caller.wait_bridged()
        playing = asyncio.create_task(media.play(np.zeros(8000 * 12, dtype=np.int16)))
        await asyncio.sleep(1.0)
        # The demo tenant: "press 0 for a human" -> first transfer target (extension 2000).
        await caller.press("0")
        await _until(lambda: caller.channel.continued_to is not None, wait=10)
        playing.cancel()
        assert caller.channel.continued_to == ("from-internal", "2000", 1)
        assert caller.channel.variables["CALLBRIDGE_STATUS"] == "TRANSFER"
        assert caller.channel.variables["CALLBRIDGE_TRANSFER_KIND"] == "extension"
        assert caller.channel.alive, "a transferred caller must not be hung up"
        await _until(lambda: h.app.stasis.active == 0)
        # The digit came from the ARI event; the bridge absorbed it, so Asterisk did not pass it
        # on to the UnicastRTP channel (which would have played it as in-band tones).
        add_caller = next(r for r in server.requests if r.path.endswith("/addChannel"))
        assert add_caller.query.get("absorbDTMF") == "true"
        assert media.presses == []
        assert _metric(h.app, "callbridge_dtmf_digits_total", {"transport": "rtp"}) == 1
        assert _metric(h.app, "callbridge_calls_total", {"transport": "rtp", "outcome": "transferred"}) == 1
        # The announcement was asked of the model before leaving, and played.
        session = h.app.simulator.sessions[-1]
        assert any("Um momento" in (r.get("instructions") or "") for r in session.response_requests)
        lines = server.request_lines()
        assert "DELETE /channels/{media} -> 204" in lines and "DELETE /bridges/{bridge} -> 204" in lines
        assert not [line for line in lines if line.startswith("DELETE /channels/{caller}")]
        stasis_call = h.app.stasis.finished[-1]
        assert stasis_call.transferred_to is not None and stasis_call.transferred_to.name == "recepcao"
    finally:
        await h.close()


async def test_events_connection_comes_back_after_asterisk_restarts(tmp_path):
    h = await _start(tmp_path)
    try:
        server = h.server
        assert server.connections == 1
        await server.restart(down_seconds=0.5)
        await asyncio.wait_for(server.app_registered.wait(), 10)
        assert server.connections == 2
        assert h.app.stasis.client.connections == 2
        # The application works again: a new call is set up.
        caller = await server.place_call(APP, DEMO_NUMBER)
        media = await caller.wait_bridged()
        await media.play(np.zeros(4000, dtype=np.int16))
        await caller.hang_up()
        await _until(lambda: h.app.stasis.active == 0)
    finally:
        await h.close()


async def test_agent_hangup_removes_everything(tmp_path):
    h = await _start(tmp_path)
    try:
        server = h.server
        caller = await server.place_call(APP, DEMO_NUMBER)
        media = await caller.wait_bridged()
        playing = asyncio.create_task(media.play(np.zeros(8000 * 5, dtype=np.int16)))
        await _until(lambda: bool(h.app.switchboard.calls()))
        call = h.app.switchboard.calls()[0]
        await asyncio.sleep(0.5)
        from bridge.core.call import Outcome

        call.end(Outcome.AGENT_HANGUP)
        await asyncio.wait_for(caller.channel.gone.wait(), 5)
        await _until(lambda: h.app.stasis.active == 0)
        playing.cancel()
        lines = server.request_lines()
        assert lines[-3:] == ["DELETE /channels/{caller} -> 204", "DELETE /channels/{media} -> 204",
                              "DELETE /bridges/{bridge} -> 204"], lines
        assert server.bridges == {} and all(not c.alive for c in server.channels.values())
    finally:
        await h.close()


@pytest.mark.both_dialects
async def test_websocket_call_flush_on_barge_in_and_exact_truncate(tmp_path, fixtures_dir):
    h = await _start(tmp_path, transport="websocket", format="slin16")
    try:
        server = h.server
        caller = await server.place_call(APP, DEMO_NUMBER)
        peer = await caller.wait_bridged()
        em = next(r for r in server.requests if r.path == "/channels/externalMedia")
        assert em.query["encapsulation"] == "none" and em.query["transport"] == "websocket"
        assert em.query["connection_type"] == "server" and "external_host" not in em.query
        from media.resample import StreamResampler

        speech = StreamResampler(8000, 16000).process(_speech(fixtures_dir)[: 8000 * 5])
        audio = np.concatenate([np.zeros(int(16000 * 1.5), dtype=np.int16), speech,
                                np.zeros(16000 * 2, dtype=np.int16)])
        await peer.play(audio)
        await caller.press("5")
        await asyncio.sleep(0.3)
        await caller.hang_up()
        await _until(lambda: h.app.stasis.active == 0)

        session = h.app.simulator.sessions[-1]
        assert session.speech_started_at and session.truncates
        # Barge-in flushed Asterisk's queue, and the truncate names exactly what had been played
        # (every frame played before the flush was greeting: nothing else is sent).
        assert peer.flushes >= 1
        first_flush = peer.flush_at[0]
        played_before = [f for f in peer.played if f.at < first_flush]
        heard_ms = 20 * len(played_before)
        reported = session.truncates[0]["audio_end_ms"]
        assert heard_ms > 500
        assert abs(reported - heard_ms) <= 20, (reported, heard_ms)
        # Marks were answered, the media format is what MEDIA_START said.
        assert any(c.name == "MARK_MEDIA" for c in peer.commands)
        assert peer.marks_processed
        assert all(len(f.payload) == 640 for f in peer.played)
        assert _metric(h.app, "callbridge_dtmf_digits_total", {"transport": "chan_websocket"}) == 1
        assert _metric(h.app, "callbridge_barge_ins_total", {"transport": "chan_websocket"}) >= 1
    finally:
        await h.close()


async def test_websocket_honours_xoff_and_xon(tmp_path):
    h = await _start(tmp_path, transport="websocket", format="ulaw")
    try:
        server = h.server
        caller = await server.place_call(APP, DEMO_NUMBER)
        peer = await caller.wait_bridged()
        peer.xoff_frames, peer.xon_frames, peer.max_frames = 10, 5, 40
        playing = asyncio.create_task(peer.play(np.zeros(8000 * 8, dtype=np.int16)))
        await _until(lambda: len(peer.played) > 5, wait=10)  # the greeting is playing
        peer.stalled = True  # Asterisk stops taking frames off its queue
        await _until(lambda: peer.xoff_sent >= 1)
        await asyncio.sleep(0.6)
        assert peer.received_during_xoff <= 2, "the daemon kept sending after MEDIA_XOFF"
        held = len(peer.played)
        peer.stalled = False
        await _until(lambda: peer.xon_sent >= 1)
        await _until(lambda: len(peer.played) > held + 40, wait=10)
        playing.cancel()
        connection_frames = h.app.stasis._calls[caller.channel.id].call.leg
        assert connection_frames.backlog_dropped == 0
        assert peer.dropped_full == 0, "frames were sent past Asterisk's hard limit"
        await caller.hang_up()
        await _until(lambda: h.app.stasis.active == 0)
    finally:
        await h.close()


@pytest.mark.both_dialects
async def test_audiosocket_transport_with_dtmf_from_ari_events(tmp_path, fixtures_dir):
    h = await _start(tmp_path, transport="audiosocket", format="slin16")
    try:
        server = h.server
        caller = await server.place_call(APP, DEMO_NUMBER)
        peer = await caller.wait_bridged()
        em = next(r for r in server.requests if r.path == "/channels/externalMedia")
        assert em.query["encapsulation"] == "audiosocket" and em.query["transport"] == "tcp"
        assert em.query["format"] == "slin16"
        assert em.query["external_host"] == f"127.0.0.1:{h.app.audiosocket.port}"
        # The daemon generated the UUID: the AudioSocket connection was matched to this call.
        call = next(c for c in h.app.switchboard.calls() if c.info.call_id == em.query["data"])
        assert call.leg.transport == "audiosocket" and call.caller_format.rate_hz == 16000
        add_caller = next(r for r in server.requests if r.path.endswith("/addChannel"))
        assert add_caller.query.get("absorbDTMF") == "true"
        playing = asyncio.create_task(peer.play(np.zeros(16000 * 4, dtype=np.int16)))
        await asyncio.sleep(1.0)
        await caller.press("7")
        await _until(lambda: _metric(h.app, "callbridge_dtmf_digits_total",
                                     {"transport": "audiosocket"}) == 1)
        await asyncio.sleep(0.5)
        await caller.hang_up()
        playing.cancel()
        await _until(lambda: h.app.stasis.active == 0)
        await _until(lambda: not h.app.switchboard.calls())
        assert len(peer.received) > 50
        assert all(len(f.payload) == 640 for f in peer.received)
        lines = server.request_lines()
        assert "DELETE /bridges/{bridge} -> 204" in lines, lines
        assert _metric(h.app, "callbridge_calls_total", {"transport": "audiosocket",
                                                         "outcome": "caller_hangup"}) == 1
    finally:
        await h.close()


async def test_audiosocket_transport_transfer(tmp_path):
    h = await _start(tmp_path, transport="audiosocket", format="ulaw")
    try:
        server = h.server
        caller = await server.place_call(APP, DEMO_NUMBER)
        peer = await caller.wait_bridged()
        em = next(r for r in server.requests if r.path == "/channels/externalMedia")
        assert em.query["format"] == "slin"  # AudioSocket carries signed linear only
        playing = asyncio.create_task(peer.play(np.zeros(8000 * 12, dtype=np.int16)))
        await asyncio.sleep(0.8)
        await caller.press("0")
        await _until(lambda: caller.channel.continued_to is not None, wait=12)
        playing.cancel()
        assert caller.channel.continued_to == ("from-internal", "2000", 1)
        assert caller.channel.alive
        await _until(lambda: h.app.stasis.active == 0)
        assert peer.hangup_received, "the AudioSocket leg was not ended with a HANGUP message"
    finally:
        await h.close()


async def test_external_channel_lost_mid_call_hangs_the_caller_up(tmp_path):
    h = await _start(tmp_path)
    try:
        server = h.server
        caller = await server.place_call(APP, DEMO_NUMBER)
        media = await caller.wait_bridged()
        playing = asyncio.create_task(media.play(np.zeros(8000 * 5, dtype=np.int16)))
        await _until(lambda: bool(h.app.switchboard.calls()))
        await asyncio.sleep(0.5)
        external = next(c for c in server.channels.values() if c.kind == "rtp")
        await server.hangup_channel(external, cause=38)  # network out of order
        await asyncio.wait_for(caller.channel.gone.wait(), 5)
        await _until(lambda: h.app.stasis.active == 0)
        playing.cancel()
        lines = server.request_lines()
        assert sorted(lines[-2:]) == ["DELETE /bridges/{bridge} -> 204", "DELETE /channels/{caller} -> 204"], lines
        assert "DELETE /channels/{media} -> 204" not in lines  # already gone: not asked twice
        assert _metric(h.app, "callbridge_calls_total", {"transport": "rtp", "outcome": "protocol_error"}) == 1
    finally:
        await h.close()
