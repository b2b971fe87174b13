"""A whole call over real loopback sockets: FastAGI + AudioSocket -> callbridge -> the built-in
realtime simulator through the real openai SDK."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from bridge.simulator import greeting_samples
from media.resample import StreamResampler
from tests.conftest import load_wav, loopback_settings
from tests.peers.asterisk import AsteriskCaller
from tests.servers import start_daemon, stop_daemon

pytestmark = pytest.mark.realtime

DEMO_NUMBER = "+5511999990001"


def _settings(tmp_path, **extra):
    return loopback_settings(tmp_path, **extra)


async def _start(tmp_path, **extra):
    app, stop, task = await start_daemon(_settings(tmp_path, **extra))
    return app, stop, task


def _speech(fixtures_dir):
    samples, rate = load_wav(fixtures_dir / "speech" / "real_cmu_8k.wav")
    assert rate == 8000
    return samples


@pytest.mark.both_dialects
async def test_call_greeting_barge_in_and_truncate(tmp_path, fixtures_dir, host_stalls):
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
        # While the agent speaks, frames arrive at 50 frames/s with no gaps, and the daemon never
        # ran out of agent audio mid-response (an underrun would be silence inside speech).
        window = [f for f in frames if greeting[0].at <= f.at < barge_at]
        times = np.array([f.at for f in window])
        host_stalls.assert_no_gap(times)
        rate = (len(window) - 1) / (times[-1] - times[0])
        assert 47 <= rate <= 53, rate
        underruns = app.metrics.registry.get_sample_value(
            "callbridge_playout_underruns_total", {"transport": "audiosocket"})
        assert underruns == 0

        # Barge-in: agent audio stops within 60 ms of speech_started.
        after = [f for f in frames if f.at >= barge_at]
        still_agent = [f for f in after if f.rms() > 200 and f.at < barge_at + 0.5]
        last_greeting_at = max([f.at for f in still_agent], default=barge_at)
        assert last_greeting_at - barge_at <= 0.060, (last_greeting_at - barge_at)

        # The truncate reported what the caller actually heard: locate the greeting in the
        # received audio by cross-correlation, then count the samples of it that arrived before
        # the daemon switched to silence.
        assert session.truncates, "no conversation.item.truncate was sent"
        received = np.concatenate([np.frombuffer(f.payload, dtype=np.int16) for f in frames]).astype(np.float64)
        # The embedded example tenants speak Portuguese (language: pt): so does the simulator.
        reference = StreamResampler(24000, 8000).process(greeting_samples("pt"))[:8000].astype(np.float64)
        n = 1 << int(np.ceil(np.log2(len(received) + len(reference))))
        xcorr = np.fft.irfft(np.fft.rfft(received, n) * np.conj(np.fft.rfft(reference, n)), n)
        start = int(np.argmax(xcorr[: len(received)]))
        barge_index = next(i for i, f in enumerate(frames) if f.at >= barge_at)
        end_frame = next(i for i in range(barge_index, len(frames))
                         if all(not np.any(np.frombuffer(g.payload, dtype=np.int16)) for g in frames[i:i + 10]))
        heard_ms = (end_frame * 160 - start) / 8
        reported = session.truncates[0]["audio_end_ms"]
        assert abs(reported - heard_ms) <= 40, (reported, heard_ms)
    finally:
        await stop_daemon(stop, task)


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
        await stop_daemon(stop, task)


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
        await stop_daemon(stop, task)


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
        await stop_daemon(stop, task)


async def _get(port, path):
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}") as r:
        return await r.json()
