"""Whole calls with the daemon on uvloop, the event loop ``callbridge serve`` runs on when it is
installed: uvloop's transports and servers are not subclasses of asyncio's, so code that checks
types, or relies on details of asyncio's own loop, shows up here. Recording is on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from bridge.app import Application
from tests.conftest import load_wav, loopback_settings
from tests.peers.asterisk import AsteriskCaller
from tests.peers.media_ws import WsPeer
from tests.servers import start_daemon

pytestmark = [
    pytest.mark.realtime,
    # The loop-factory hook that replaces the policy fixture applies to the whole suite at once.
    pytest.mark.filterwarnings("ignore:Overriding the \"event_loop_policy\" fixture is deprecated"),
]

uvloop = pytest.importorskip("uvloop")

DEMO_NUMBER = "+5511999990001"


@pytest.fixture(scope="module")
def event_loop_policy() -> object:
    return uvloop.EventLoopPolicy()


async def _start(tmp_path: Path) -> tuple[Application, asyncio.Event, asyncio.Task[None]]:
    settings = loopback_settings(tmp_path, record=True)
    app, stop, task = await start_daemon(settings)
    return app, stop, task


def _speech(fixtures_dir: Path, seconds: float) -> np.ndarray:
    samples, rate = load_wav(fixtures_dir / "speech" / "real_cmu_8k.wav")
    assert rate == 8000
    return samples[: int(rate * seconds)]


def _recordings(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "rec").rglob("*.wav"))


async def test_audiosocket_call_on_uvloop(tmp_path: Path, fixtures_dir: Path) -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    app, stop, task = await _start(tmp_path)
    try:
        assert app.agi is not None
        caller = AsteriskCaller(app.agi.port, DEMO_NUMBER)
        await caller.dial()
        await caller.connect_media()
        silence = np.zeros(8000, dtype=np.int16)
        # The greeting, then a sentence, then time to hear it echoed.
        audio = np.concatenate([silence[:4000], np.tile(silence, 4), _speech(fixtures_dir, 2.5),
                                np.tile(silence, 4)])
        await caller.play(audio, start=time.monotonic())
        await caller.hang_up()
        await asyncio.wait_for(caller.agi_done.wait(), 10)
        assert caller.agi.variables.get("CALLBRIDGE_STATUS") == "DONE"
        # Keep-alive and agent frames at 50 a second for the whole call.
        times = np.array([f.at for f in caller.received])
        assert len(times) > 0.9 * 50 * len(audio) / 8000
        assert np.diff(times).max() < 0.1
        agent = caller.agent_frames()
        greeting = [f for f in agent if f.at < times[0] + 4.0]
        echo = [f for f in agent if f.at > times[0] + 5.0]
        assert len(greeting) > 100 and len(echo) > 50, (len(greeting), len(echo))
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert len(_recordings(tmp_path)) == 1


async def test_websocket_call_on_uvloop(tmp_path: Path, fixtures_dir: Path) -> None:
    app, stop, task = await _start(tmp_path)
    client = WsPeer()
    try:
        assert app.http is not None
        await client.connect(f"ws://127.0.0.1:{app.http.port}/ws/audio/{DEMO_NUMBER}"
                             "?format=pcm16_8k&frames=binary")
        speech = _speech(fixtures_dir, 2.5).tobytes()
        silence = bytes(320) * 200  # 4 s
        pcm = silence[: 320 * 100] + speech + silence
        await client.send_paced([pcm[i:i + 320] for i in range(0, len(pcm), 320)], 0.020)
        await client.close()
        frames = [r for r in client.received if not r.is_text]
        assert len(frames) > 150  # the greeting (4.4 s) and the echo
        assert {len(r.data) for r in frames} == {320}
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert len(_recordings(tmp_path)) == 1
