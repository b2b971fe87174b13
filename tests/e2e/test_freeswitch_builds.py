"""Whole calls over /ws/freeswitch against each module build's behaviour (tests.peers.freeswitch_builds):
the caller hears the agent in the way each build can play it, barge-in stops what they hear, DTMF
reaches the call, and a build that cannot play the agent is named in the log and the metrics instead
of leaving the caller in silence."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pytest

from tests.conftest import load_wav, loopback_settings
from tests.peers.freeswitch_builds import ModulePeer, heard_level
from tests.servers import start_daemon, stop_daemon, until

pytestmark = pytest.mark.realtime

DEMO_NUMBER = "+5511999990001"
RATE_HZ = 16000


async def _start(tmp_path):
    # WebSocket media only: the AudioSocket and FastAGI listeners stay off.
    return await start_daemon(loopback_settings(tmp_path, audiosocket={"enabled": False}, agi={"enabled": False}))


def _url(app):
    return f"ws://127.0.0.1:{app.http.port}/ws/freeswitch"


def _sample(app, name, labels):
    return app.metrics.registry.get_sample_value(name, labels) or 0.0


def _unplayed(app, reason):
    return _sample(app, "callbridge_agent_audio_unplayed_total", {"transport": "freeswitch", "reason": reason})


def _metadata(playback=None):
    # What deploy/freeswitch/scripts/callbridge.lua sends (without "playback": a hand-typed command).
    meta = {"to": DEMO_NUMBER, "from": "+5511988887777", "uuid": "5f0c3b0e-0000-4000-8000-0000000000aa",
            "sampleRate": RATE_HZ}
    if playback is not None:
        meta["playback"] = playback
    return meta


def _caller_audio(fixtures_dir, lead_seconds, seconds=3.0, tail_seconds=4.0):
    speech, rate = load_wav(fixtures_dir / "speech" / "real_cmu_16k.wav")
    assert rate == RATE_HZ
    speech = speech[: int(RATE_HZ * seconds)]
    return np.concatenate([np.zeros(int(RATE_HZ * lead_seconds), np.int16), speech,
                           np.zeros(int(RATE_HZ * tail_seconds), np.int16)]).astype(np.int16).tobytes()


# build, the playback the script declares for it
SCRIPTED = [
    ("jambonz", "stream"),
    ("jambonz-files", "files"),
    ("drachtio", "files"),
    ("amigniter", "files"),
]


@pytest.mark.parametrize(("build", "playback"), SCRIPTED, ids=[b for b, _ in SCRIPTED])
async def test_caller_hears_the_agent_on_every_build(tmp_path, fixtures_dir, build, playback):
    app, stop, task = await _start(tmp_path)
    peer = ModulePeer(build, tmp_path, rate_hz=RATE_HZ, script=True)
    try:
        started = time.monotonic()
        await peer.start(_url(app), _metadata(playback))
        await peer.play_l16(_caller_audio(fixtures_dir, lead_seconds=2.0))
        peer.press("5")
        await asyncio.sleep(0.5)
        ended = time.monotonic()
        await peer.close()
        await until(lambda: app.switchboard.active_calls == 0)

        session = app.simulator.sessions[-1]
        barge_at = session.speech_started_at[0]
        heard = peer.heard
        # The greeting, heard before the caller spoke: loud and mostly voiced.
        level, active = heard_level(heard, started + 0.3, barge_at)
        assert level > 800 and active > 0.6, (level, active)
        # Over the whole call the caller heard the agent about as often as the agent spoke.
        _, overall = heard_level(heard, started, ended)
        assert overall > 0.25, overall
        # Barge-in: the greeting stops within 200 ms of speech_started (a file build stops the
        # file it is playing; jambonz empties its buffer)...
        assert not [at for at, s in heard if barge_at + 0.2 < at < barge_at + 0.8
                    and np.sqrt(np.mean(s.astype(np.float64) ** 2)) > 200]
        # ...and the truncation the model was told matches what was heard of the greeting.
        greeting = [at for at, s in heard if at < barge_at + 0.2 and len(s)]
        heard_ms = (greeting[-1] + 0.02 - greeting[0]) * 1000
        reported = session.truncates[0]["audio_end_ms"]
        assert abs(reported - heard_ms) <= 120, (reported, heard_ms)
        # The echo of the caller's turn is heard after it.
        _, answer = heard_level(heard, barge_at + 1.0, ended)
        assert answer > 0.15, answer
        # The caller's key press reached the call.
        assert _sample(app, "callbridge_dtmf_digits_total", {"transport": "freeswitch"}) == 1
        assert _unplayed(app, "binary_discarded") == _unplayed(app, "files_not_played") == 0
        if playback == "files":
            assert peer.files and not peer.discarded_binary
            assert peer.script is not None and peer.script.kills
        else:
            assert not peer.files
        assert not peer.unsupported
    finally:
        await peer.close()
        await stop_daemon(stop, task)


async def test_undeclared_drachtio_stream_falls_back_to_files(tmp_path, fixtures_dir, caplog):
    """drachtio's build started by hand (no "playback" in the metadata) with a script that plays
    files: the daemon's BINARY audio is discarded, no mark comes back, the daemon says so and
    sends files from then on, and the caller hears the rest of the call."""
    app, stop, task = await _start(tmp_path)
    peer = ModulePeer("drachtio", tmp_path, rate_hz=RATE_HZ, script=True)
    try:
        caplog.set_level(logging.WARNING, logger="bridge.wsmedia.freeswitch")
        started = time.monotonic()
        await peer.start(_url(app), _metadata())
        await peer.play_l16(_caller_audio(fixtures_dir, lead_seconds=4.0))
        ended = time.monotonic()
        await peer.close()
        await until(lambda: app.switchboard.active_calls == 0)

        assert peer.discarded_binary > 50  # about two seconds of greeting went nowhere
        assert "mark" in peer.unsupported
        assert _unplayed(app, "binary_discarded") == 1
        assert _unplayed(app, "files_not_played") == 0
        assert any("discards binary frames" in r.getMessage() for r in caplog.records)
        assert peer.files, "no playAudio after the fallback"
        level, _ = heard_level(peer.heard, started, started + 2.0)
        assert level < 50  # nothing heard while the daemon streamed BINARY
        _, active = heard_level(peer.heard, started + 2.6, started + 4.0)
        assert active > 0.3, active  # the rest of the greeting, as files
        _, answer = heard_level(peer.heard, started + 5.0, ended)
        assert answer > 0.15, answer
        outcome = {"transport": "freeswitch", "outcome": "caller_hangup"}
        assert _sample(app, "callbridge_calls_total", outcome) == 1
    finally:
        await peer.close()
        await stop_daemon(stop, task)


@pytest.mark.parametrize(
    ("build", "playback", "reasons"),
    [
        # a hand-typed command on drachtio's build, nothing playing files: BINARY first, then files
        ("drachtio", None, {"binary_discarded": 1, "files_not_played": 1}),
        # the script said it plays files, but the dialplan runs something else
        ("amigniter", "files", {"binary_discarded": 0, "files_not_played": 1}),
        # "stream" declared on a build that discards BINARY (jambonz started without its arguments)
        ("jambonz-files", "stream", {"binary_discarded": 1, "files_not_played": 0}),
    ],
    ids=["drachtio-undeclared", "amigniter-no-player", "declared-stream-discarded"],
)
async def test_unplayable_agent_audio_ends_the_call_with_the_reason(tmp_path, fixtures_dir, caplog, build,
                                                                     playback, reasons):
    app, stop, task = await _start(tmp_path)
    peer = ModulePeer(build, tmp_path, rate_hz=RATE_HZ, script=False)
    try:
        caplog.set_level(logging.ERROR, logger="bridge.wsmedia.freeswitch")
        await peer.start(_url(app), _metadata(playback))
        playing = asyncio.create_task(peer.play_l16(_caller_audio(fixtures_dir, lead_seconds=9.0)))
        code = await peer.close_code_within(12)
        await playing
        reason = "binary_discarded" if reasons["files_not_played"] == 0 else "files_not_played"
        assert (code, peer.close_reason) == (1008, f"agent audio not played ({reason})")
        assert {r: _unplayed(app, r) for r in reasons} == reasons
        assert any("ending the call" in r.getMessage() for r in caplog.records)
        await until(lambda: app.switchboard.active_calls == 0)
        outcome = {"transport": "freeswitch", "outcome": "protocol_error"}
        assert _sample(app, "callbridge_calls_total", outcome) == 1
    finally:
        await peer.close()
        await stop_daemon(stop, task)


async def test_undeclared_audio_stream_is_counted_unconfirmed(tmp_path):
    app, stop, task = await _start(tmp_path)
    peer = ModulePeer("amigniter", tmp_path, rate_hz=RATE_HZ, script=False)
    try:
        await peer.start(_url(app), _metadata())
        await peer.play_l16(bytes(640 * 50))
        assert _unplayed(app, "unconfirmed") == 1
        # 20 ms streamAudio messages, which amigniter's build turns into one file each.
        assert len(peer.files) > 20
        assert {p.stat().st_size for p in peer.files} == {640}
    finally:
        await peer.close()
        await stop_daemon(stop, task)


async def test_drachtio_joined_text_frames_carry_marks_and_dtmf(tmp_path, fixtures_dir):
    """drachtio's build sends text queued in one pass as one frame: a cleared mark and a key
    press sent together both reach the call."""
    app, stop, task = await _start(tmp_path)
    peer = ModulePeer("drachtio", tmp_path, rate_hz=RATE_HZ, script=True)
    try:
        await peer.start(_url(app), _metadata("files"))
        await peer.play_l16(bytes(640 * 75))  # let the greeting play for 1.5 s
        peer.press("7")
        peer.press("#")
        await peer.play_l16(bytes(640 * 25))
        joined = [t for t in peer.sent_text if t.count("{\"") > 1 and "}{" in t]
        assert joined, "the peer never joined two messages"
        await until(lambda: _sample(app, "callbridge_dtmf_digits_total", {"transport": "freeswitch"}) == 2)
        assert not peer.closed.is_set()
    finally:
        await peer.close()
        await stop_daemon(stop, task)
