"""Whole calls over /ws/freeswitch: peers playing mod_audio_fork (jambonz bidirectional streaming:
BINARY L16 both ways, killAudio, marks) and mod_audio_stream (BINARY L16 up, streamAudio JSON down),
bridged to the built-in realtime simulator."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from media.resample import StreamResampler
from sip import freeswitch as fs
from tests.conftest import load_wav, loopback_settings
from tests.peers.media_ws import FreeSwitchPeer, rms
from tests.servers import start_daemon, stop_daemon, until

pytestmark = pytest.mark.realtime

DEMO_NUMBER = "+5511999990001"


def _settings(tmp_path, **extra):
    # WebSocket media only: the AudioSocket and FastAGI listeners stay off.
    return loopback_settings(tmp_path, audiosocket={"enabled": False}, agi={"enabled": False}, **extra)


async def _start(tmp_path, **extra):
    app, stop, task = await start_daemon(_settings(tmp_path, **extra))
    return app, stop, task


def _url(app, query=""):
    return f"ws://127.0.0.1:{app.http.port}/ws/freeswitch{query}"


def _sample(app, name, labels):
    return app.metrics.registry.get_sample_value(name, labels) or 0.0


def _caller_audio(fixtures_dir, rate_hz):
    speech, rate = load_wav(fixtures_dir / "speech" / "real_cmu_16k.wav")
    assert rate == 16000
    speech = speech[: 16000 * 3]
    if rate_hz != 16000:
        speech = StreamResampler(16000, rate_hz).process(speech)
    silence = np.zeros(rate_hz * 4, dtype=np.int16)
    return np.concatenate([silence[: int(rate_hz * 1.2)], speech, silence]).astype(np.int16).tobytes()


def _metadata(rate_hz, to=DEMO_NUMBER):
    # What deploy/freeswitch/ passes as the metadata argument.
    return {"to": to, "from": "+5511988887777", "uuid": "5f0c3b0e-0000-4000-8000-000000000001",
            "sampleRate": rate_hz}


@pytest.mark.both_dialects
async def test_audio_fork_bidirectional_kill_audio_and_marks(tmp_path, fixtures_dir, host_stalls):
    app, stop, task = await _start(tmp_path)
    peer = FreeSwitchPeer(playout_delay=0.15)
    try:
        await peer.start(_url(app), _metadata(16000), fs.JAMBONZ_SUBPROTOCOL)
        assert peer.ws.subprotocol == fs.JAMBONZ_SUBPROTOCOL
        await peer.play_l16(_caller_audio(fixtures_dir, 16000), 16000)
        await peer.close()
        await until(lambda: app.switchboard.active_calls == 0)

        session = app.simulator.sessions[-1]
        assert session.speech_started_at, "the simulator never heard the caller"
        barge_at = session.speech_started_at[0]
        # Agent audio: BINARY L16 at the stream's 16 kHz, 20 ms per frame, one frame per 20 ms.
        binary = [(at, p) for at, p in peer.audio]
        assert binary and {len(p) for _, p in binary} == {640}
        greeting = [at for at, _ in binary if at < barge_at]
        assert len(greeting) > 40
        host_stalls.assert_no_gap(greeting)
        rate = (len(greeting) - 1) / (greeting[-1] - greeting[0])
        assert 47 <= rate <= 53, rate
        # Barge-in: killAudio within 60 ms of speech_started, then nothing of the greeting.
        assert peer.kills, "no killAudio on barge-in"
        kill_at = peer.kills[0]
        assert 0 <= kill_at - barge_at <= 0.060, kill_at - barge_at
        assert not [at for at, p in binary if kill_at < at < kill_at + 0.4 and rms(p) > 200]
        kinds = [type(c).__name__ for _, c in peer.commands]
        assert "MarkCommand" in kinds and "ClearMarks" in kinds
        assert not any(isinstance(c, fs.InvalidMessage | fs.Unknown) for _, c in peer.commands)
        # The truncation matches what the fork played, not what it was sent.
        heard_ms = peer.player.heard_seconds(until=kill_at) * 1000
        reported = session.truncates[0]["audio_end_ms"]
        assert abs(reported - heard_ms) <= 40, (reported, heard_ms)
        assert len([at for at, _ in binary if at > kill_at + 0.5]) > 50, "no answer after the caller's turn"
        outcome = {"transport": "freeswitch", "outcome": "caller_hangup"}
        assert _sample(app, "callbridge_calls_total", outcome) == 1
    finally:
        await peer.close()
        await stop_daemon(stop, task)


@pytest.mark.both_dialects
async def test_audio_stream_json_down_at_8k(tmp_path, fixtures_dir):
    app, stop, task = await _start(tmp_path)
    peer = FreeSwitchPeer()
    try:
        # mod_audio_stream offers no subprotocol.
        await peer.start(_url(app), _metadata(8000), None)
        assert peer.ws.subprotocol is None
        await peer.play_l16(_caller_audio(fixtures_dir, 8000), 8000)
        await peer.close()
        await until(lambda: app.switchboard.active_calls == 0)

        session = app.simulator.sessions[-1]
        barge_at = session.speech_started_at[0]
        stream = [(at, c) for at, c in peer.commands if isinstance(c, fs.StreamAudio)]
        assert len(stream) == len(peer.commands), "mod_audio_stream gets streamAudio and nothing else"
        assert {(c.data_type, c.sample_rate_hz, len(c.audio)) for _, c in stream} == {("raw", 8000, 320)}
        greeting = [at for at, _ in stream if at < barge_at]
        rate = (len(greeting) - 1) / (greeting[-1] - greeting[0])
        assert 47 <= rate <= 53, rate
        # No command drops mod_audio_stream's queue: the greeting simply stops at barge-in.
        after = [at for at, c in stream if barge_at < at < barge_at + 0.4 and rms(c.audio) > 200]
        assert not after or after[-1] - barge_at <= 0.060
        assert len([at for at, _ in stream if at > barge_at + 0.5]) > 50
    finally:
        await peer.close()
        await stop_daemon(stop, task)


async def test_query_parameters_stand_in_for_metadata(tmp_path):
    app, stop, task = await _start(tmp_path)
    peer = FreeSwitchPeer()
    try:
        # uuid_audio_stream started without metadata: the URL carries the number and the rate.
        await peer.start(_url(app, f"?to={DEMO_NUMBER.replace('+', '%2B')}&rate=16k"), None, None)
        await peer.play_l16(bytes(640 * 50), 16000)
        assert {len(c.audio) for _, c in peer.commands if isinstance(c, fs.StreamAudio)} == {640}
    finally:
        await peer.close()
        await stop_daemon(stop, task)


async def test_unknown_number_gets_4004(tmp_path):
    app, stop, task = await _start(tmp_path)
    try:
        peer = FreeSwitchPeer()
        await peer.start(_url(app), _metadata(8000, to="+15550000000"), fs.AUDIO_FORK_SUBPROTOCOL)
        assert await peer.close_code_within(5) == 4004
        await peer.close()
        assert app.simulator.sessions == []
    finally:
        await stop_daemon(stop, task)


async def test_unreachable_model_gets_1011(tmp_path):
    model = {"provider": "openai", "api_key": "sk-test", "websocket_base_url": "ws://127.0.0.1:9/v1",
             "connect_timeout": 3}
    app, stop, task = await _start(tmp_path, model=model)
    peer = FreeSwitchPeer()
    try:
        await peer.start(_url(app), _metadata(8000), fs.AUDIO_FORK_SUBPROTOCOL)
        playing = asyncio.create_task(peer.play_l16(bytes(320 * 100), 8000))
        assert await peer.close_code_within(8) == 1011
        await playing
    finally:
        await peer.close()
        await stop_daemon(stop, task)


@pytest.mark.parametrize(
    ("metadata", "audio", "code"),
    [
        ("{not json", None, 1008),
        (_metadata(8000), bytes(321), 1008),  # half an L16 sample
        ({**_metadata(8000), "sampleRate": 11025}, None, 1008),
        ({**_metadata(8000), "mixType": "mixed"}, None, 1008),
    ],
    ids=["bad-metadata", "odd-frame", "bad-rate", "mixed"],
)
async def test_malformed_stream_gets_1008(tmp_path, metadata, audio, code):
    app, stop, task = await _start(tmp_path)
    peer = FreeSwitchPeer()
    try:
        await peer.connect(_url(app), [fs.AUDIO_FORK_SUBPROTOCOL])
        await peer.send(metadata if isinstance(metadata, str) else fs.metadata_message(metadata))
        if audio is not None:
            await peer.play_l16(bytes(320 * 10), 8000)
            await peer.send(audio)
        assert await peer.close_code_within(5) == code
    finally:
        await peer.close()
        await stop_daemon(stop, task)
