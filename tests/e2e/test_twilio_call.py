"""Whole calls over /ws/twilio: a peer playing Twilio's side of a bidirectional Media Stream
(connected, start with custom parameters, 20 ms mu-law media at real-time pace, marks echoed when
played, clear honoured, dtmf, stop), bridged to the built-in realtime simulator."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from media import g711
from sip import twilio as tw
from tests.conftest import load_wav, loopback_settings
from tests.peers.media_ws import TwilioPeer, rms
from tests.servers import start_daemon, stop_daemon, until

pytestmark = pytest.mark.realtime

DEMO_NUMBER = "+5511999990001"
PARAMS = {"to": DEMO_NUMBER, "from": "+5511988887777"}


def _settings(tmp_path, **extra):
    # WebSocket media only: the AudioSocket and FastAGI listeners stay off.
    return loopback_settings(tmp_path, audiosocket={"enabled": False}, agi={"enabled": False}, **extra)


async def _start(tmp_path, **extra):
    app, stop, task = await start_daemon(_settings(tmp_path, **extra))
    return app, stop, task


def _url(app):
    return f"ws://127.0.0.1:{app.http.port}/ws/twilio"


def _sample(app, name, labels):
    return app.metrics.registry.get_sample_value(name, labels) or 0.0


def _ulaw(samples):
    return g711.ulaw_encode(np.asarray(samples, dtype=np.int16))


@pytest.mark.both_dialects
async def test_call_marks_clear_and_truncate_at_what_was_heard(tmp_path, fixtures_dir, host_stalls):
    app, stop, task = await _start(tmp_path)
    # Twilio plays agent audio after its jitter buffer and the network: 200 ms here. What was sent
    # and what was heard differ by that much; the marks must close the gap.
    peer = TwilioPeer(playout_delay=0.2)
    try:
        await peer.start(_url(app), PARAMS)
        speech, rate = load_wav(fixtures_dir / "speech" / "real_cmu_8k.wav")
        assert rate == 8000
        silence = np.zeros(8000 * 4, dtype=np.int16)
        audio = np.concatenate([silence[: int(8000 * 1.2)], speech[: 8000 * 3], silence])
        await peer.play_ulaw(_ulaw(audio))
        await peer.send(peer.carrier.dtmf("5"))
        await asyncio.sleep(0.3)
        await peer.stop()
        assert await peer.close_code_within(5) == 1000

        session = app.simulator.sessions[-1]
        assert session.speech_started_at, "the simulator never heard the caller"
        barge_at = session.speech_started_at[0]
        # Outbound media: 20 ms of mu-law 8 kHz per message, 50 messages/s during the greeting.
        assert peer.media and {len(p) for _, p in peer.media} == {160}
        assert not any(isinstance(e, tw.InvalidMessage | tw.Unknown) for e in peer.app_events)
        greeting = [at for at, _ in peer.media if at < barge_at]
        assert len(greeting) > 40
        host_stalls.assert_no_gap(greeting)
        rate_fps = (len(greeting) - 1) / (greeting[-1] - greeting[0])
        assert 47 <= rate_fps <= 53, rate_fps
        # Marks went out with the audio and came back as Twilio played it.
        assert len(peer.marks) >= len(greeting) // 5 - 1
        assert any(not cleared for _, cleared in peer.echoed)
        # Barge-in: a clear within 60 ms of the model's speech_started, and no more greeting after.
        assert peer.clear_at, "no clear on barge-in"
        clear_at = peer.clear_at[0]
        assert 0 <= clear_at - barge_at <= 0.060, clear_at - barge_at
        loud_after = [at for at, p in peer.media
                      if clear_at < at < clear_at + 0.4 and rms(p, ulaw=True) > 200]
        assert loud_after == [], "greeting audio kept coming after the clear"
        # The truncation is what the caller heard (played by "Twilio"), not what was sent.
        heard_ms = peer.player.heard_seconds(until=clear_at) * 1000
        sent_ms = 20 * len([at for at, _ in peer.media if at <= clear_at])
        reported = session.truncates[0]["audio_end_ms"]
        assert abs(reported - heard_ms) <= 40, (reported, heard_ms, sent_ms)
        assert sent_ms - heard_ms >= 150, "the test's playout delay did not take effect"
        # The answer after the caller's turn was played too, and the digit reached the model.
        assert len([at for at, _ in peer.media if at > clear_at + 0.5]) > 50
        texts = [json.dumps(item) for item in session.items_created]
        assert any("telephone key 5" in t for t in texts), texts
        await until(lambda: app.switchboard.active_calls == 0)
        outcome = {"transport": "twilio", "outcome": "caller_hangup"}
        assert _sample(app, "callbridge_calls_total", outcome) == 1
        assert _sample(app, "callbridge_barge_ins_total", {"transport": "twilio"}) == 1
    finally:
        await peer.close()
        await stop_daemon(stop, task)


async def test_unknown_number_gets_4004(tmp_path):
    app, stop, task = await _start(tmp_path)
    try:
        for params in ({"to": "+15550000000"}, {"other": "x"}):
            peer = TwilioPeer()
            await peer.start(_url(app), params)
            assert await peer.close_code_within(5) == 4004
            await peer.close()
        assert app.simulator.sessions == []
    finally:
        await stop_daemon(stop, task)


async def test_model_failure_gets_1011(tmp_path):
    app, stop, task = await _start(tmp_path)
    peer = TwilioPeer()
    try:
        await peer.start(_url(app), PARAMS)
        playing = asyncio.create_task(peer.play_ulaw(_ulaw(np.zeros(8000 * 5, dtype=np.int16))))
        await until(lambda: len(peer.media) > 10)
        await app.simulator.drop_all(1011)
        assert await peer.close_code_within(5) == 1011
        await playing
        await until(lambda: _sample(app, "callbridge_calls_total",
                                     {"transport": "twilio", "outcome": "model_error"}) == 1)
    finally:
        await peer.close()
        await stop_daemon(stop, task)


@pytest.mark.parametrize(
    "message",
    ['{"event": "media", "media": {"payload": "not base64!"}}', "{not json", b"\x00\x01"],
    ids=["bad-base64", "bad-json", "binary"],
)
async def test_malformed_message_gets_1008(tmp_path, message):
    app, stop, task = await _start(tmp_path)
    peer = TwilioPeer()
    try:
        await peer.start(_url(app), PARAMS)
        await peer.play_ulaw(_ulaw(np.zeros(8000, dtype=np.int16)))
        await peer.send(message)
        assert await peer.close_code_within(5) == 1008
        await until(lambda: _sample(app, "callbridge_calls_total",
                                     {"transport": "twilio", "outcome": "protocol_error"}) == 1)
    finally:
        await peer.close()
        await stop_daemon(stop, task)
