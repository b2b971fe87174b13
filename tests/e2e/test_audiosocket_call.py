"""A whole call over real loopback sockets: FastAGI + AudioSocket -> callbridge -> the built-in
realtime simulator through the real openai SDK."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from bridge.app import Application
from bridge.settings import load_settings
from tests.conftest import load_wav
from tests.peers.asterisk import AsteriskCaller

pytestmark = pytest.mark.realtime

DEMO_NUMBER = "+5511999990001"


def _settings(tmp_path, **extra):
    return load_settings(
        env_file=None,
        environ={},
        http={"host": "127.0.0.1", "port": 0},
        audiosocket={"host": "127.0.0.1", "port": 0},
        agi={"host": "127.0.0.1", "port": 0},
        recording={"enabled": False, "directory": str(tmp_path / "rec")},
        **extra,
    )


async def _start(tmp_path, **extra):
    app = Application(_settings(tmp_path, **extra))
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop.wait()))
    await asyncio.wait_for(app.wait_started(), 20)
    return app, stop, task


async def _stop(stop, task):
    stop.set()
    await asyncio.wait_for(task, 30)


def _speech(fixtures_dir):
    samples, rate = load_wav(fixtures_dir / "speech" / "real_cmu_8k.wav")
    assert rate == 8000
    return samples


async def test_call_greeting_barge_in_and_truncate(tmp_path, fixtures_dir):
    app, stop, task = await _start(tmp_path)
    try:
        assert app.agi is not None and app.simulator is not None
        caller = AsteriskCaller(app.agi.port, DEMO_NUMBER)
        await caller.dial()
        await caller.connect_media()
        t0 = time.monotonic()
        silence = np.zeros(8000 * 2, dtype=np.int16)
        # 1.2 s of silence while the greeting plays, then the caller talks over it.
        speech = _speech(fixtures_dir)[: 8000 * 6]
        audio = np.concatenate([silence[: int(8000 * 1.2)], speech, silence])
        await caller.play(audio, start=t0)
        await caller.hang_up()
        assert await asyncio.wait_for(caller.agi_done.wait(), 10) is True

        # The FastAGI dialogue: answer, then AudioSocket on the daemon's listener.
        assert any(c.startswith("ANSWER") for c in caller.agi.commands)
        assert caller.audiosocket_target is not None
        assert caller.agi.variables.get("CALLBRIDGE_STATUS") == "DONE"

        session = app.simulator.sessions[-1]
        # The tenant's configuration reached the model.
        assert session.session_config["audio"]["input"]["format"]["type"] == "audio/pcm"
        assert session.speech_started_at, "the simulator never heard the caller"
        barge_at = session.speech_started_at[0]

        frames = caller.received
        assert len(frames) > 100
        agent = caller.agent_frames()
        greeting = [f for f in agent if f.at < barge_at]
        assert len(greeting) > 10, "the greeting was not heard before the caller spoke"
        # Agent audio flows at 50 frames/s without gaps while the agent speaks.
        times = np.array([f.at for f in greeting])
        gaps = np.diff(times)
        assert gaps.max() < 0.045, f"gap of {gaps.max() * 1000:.0f} ms inside agent speech"
        rate = (len(greeting) - 1) / (times[-1] - times[0])
        assert 47 <= rate <= 53, rate

        # Barge-in: agent audio stops within 60 ms of speech_started.
        after = [f for f in frames if f.at >= barge_at]
        still_agent = [f for f in after if f.rms() > 200 and f.at < barge_at + 0.5]
        last_greeting_at = max([f.at for f in still_agent], default=barge_at)
        assert last_greeting_at - barge_at <= 0.060, (last_greeting_at - barge_at)

        # The truncate reported what the caller actually heard (20 ms per frame).
        assert session.truncates, "no conversation.item.truncate was sent"
        heard_ms = len(greeting) * 20 + sum(20 for f in still_agent)
        reported = session.truncates[0]["audio_end_ms"]
        assert abs(reported - heard_ms) <= 60, (reported, heard_ms)
    finally:
        await _stop(stop, task)


async def test_unknown_number_never_reaches_model(tmp_path):
    app, stop, task = await _start(tmp_path)
    try:
        caller = AsteriskCaller(app.agi.port, "+15550000000")
        await caller.dial()
        await asyncio.wait_for(caller.agi_done.wait(), 10)
        assert caller.agi.variables.get("CALLBRIDGE_STATUS") == "UNKNOWN_NUMBER"
        assert any(c.startswith("HANGUP") for c in caller.agi.commands)
        assert not caller.audiosocket_requested.is_set()
        assert app.simulator.sessions == []
    finally:
        await _stop(stop, task)


async def test_unregistered_uuid_is_refused(tmp_path):
    import uuid

    from sip import audiosocket as aso

    app, stop, task = await _start(tmp_path)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.audiosocket.port)
        proto = aso.AudioSocketProtocol(aso.Side.CLIENT)
        proto.send_uuid(uuid.uuid4())
        writer.write(b"".join(proto.data_to_send()))
        data = await asyncio.wait_for(reader.read(100), 5)
        proto.receive_data(data)
        events = proto.events_received()
        assert any(isinstance(e, aso.Hangup) for e in events)
        assert await asyncio.wait_for(reader.read(100), 5) == b""
        writer.close()
    finally:
        await _stop(stop, task)


async def test_malformed_frame_ends_only_that_call(tmp_path, fixtures_dir):
    app, stop, task = await _start(tmp_path)
    try:
        bad = AsteriskCaller(app.agi.port, DEMO_NUMBER)
        good = AsteriskCaller(app.agi.port, DEMO_NUMBER)
        await bad.dial()
        await bad.connect_media()
        await good.dial()
        await good.connect_media()
        playing = asyncio.create_task(good.play(np.zeros(8000 * 2, dtype=np.int16)))
        await asyncio.sleep(0.3)
        # An audio message with length 0 is invalid (Asterisk itself rejects it).
        bad._media_writer.write(bytes([0x10, 0x00, 0x00]))
        await asyncio.wait_for(bad.media_closed.wait(), 5)
        await playing
        assert not good.media_closed.is_set(), "a bad frame on one call ended another"
        assert len(good.received) > 50
        await good.hang_up()
        await bad.close()
        await good.close()
        resp = await _get(app.http.port, "/health")
        assert resp["status"] == "ok"
    finally:
        await _stop(stop, task)


async def _get(port, path):
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}") as r:
        return await r.json()
