"""The daemon is killed with SIGKILL in the middle of a call; after a restart the recording is
repaired, playable up to within a second of the kill, and the call is marked interrupted."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import signal
import socket
import sys
import time
import wave
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import yaml

from bridge.app import Application
from bridge.settings import load_settings
from tests.conftest import REPO_ROOT, load_wav
from tests.e2e.test_recording_call import best_alignment
from tests.peers.asterisk import AsteriskCaller

pytestmark = pytest.mark.realtime

DEMO_NUMBER = "+5511999990001"
ADMIN = "kill-test-admin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp_path: Path) -> Path:
    config = {
        "http": {"host": "127.0.0.1", "port": free_port()},
        "audiosocket": {"host": "127.0.0.1", "port": free_port()},
        "agi": {"host": "127.0.0.1", "port": free_port()},
        "recording": {"directory": str(tmp_path / "rec")},
        "ops": {"admin_token": ADMIN},
        "model": {"provider": "simulator"},
    }
    path = tmp_path / "callbridge.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def wait_ready(port: int, proc: asyncio.subprocess.Process, seconds: float = 60.0) -> None:
    async with aiohttp.ClientSession() as http, asyncio.timeout(seconds):
        while True:
            assert proc.returncode is None, "the daemon exited during start-up"
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/ready") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)


async def test_sigkill_mid_call_leaves_a_repaired_playable_recording(tmp_path, fixtures_dir):
    config = write_config(tmp_path)
    settings = load_settings(config, env_file=None, environ={})
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CALLBRIDGE_", "OPENAI_", "AZURE_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "-c", str(config), "serve", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    caller = None
    try:
        await wait_ready(settings.http.port, proc)
        speech, _ = load_wav(fixtures_dir / "speech" / "real_libri1_8k.wav")
        sent = np.concatenate([np.zeros(4000, dtype=np.int16), speech])[: 8000 * 8]
        caller = AsteriskCaller(settings.agi.port, DEMO_NUMBER)
        await caller.dial()
        await caller.connect_media()
        connected = time.monotonic()
        playing = asyncio.create_task(caller.play(sent, start=connected))
        # Kill once the call has run three seconds, in the middle of the caller's speech.
        async with asyncio.timeout(30):
            while time.monotonic() - connected < 3.0:
                await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await proc.wait()
        sent_by_kill = caller.sent_frames
        playing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await playing
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if caller is not None:
            await caller.close()
    assert proc.returncode == -signal.SIGKILL

    # What the kill left: a marker and a WAV whose header may lag behind its data.
    root = settings.recording.directory
    markers = list((root / ".unfinished").iterdir())
    assert len(markers) == 1
    call_id = markers[0].name

    app = Application(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop.wait()))
    await asyncio.wait_for(app.wait_started(), 30)
    try:
        assert [r.call_id for r in app.archive.recovered] == [call_id]
        assert not (root / ".unfinished" / call_id).exists()
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{app.http.port}") as http:
            async with http.get("/api/calls?status=interrupted", headers=headers) as resp:
                calls = (await resp.json())["calls"]
            assert [c["call_id"] for c in calls] == [call_id]
            call = calls[0]
            assert call["tenant"] == "demo" and call["dialled"] == DEMO_NUMBER
            assert call["ended_at"] is not None and call["recording"]["available"]
            async with http.get(f"/api/calls/{call_id}/recording", headers=headers) as resp:
                assert resp.status == 200
                data = await resp.read()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 8000, 2)
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    assert len(data) == 44 + frames.nbytes  # the header describes exactly the audio there
    recorded = len(frames) / 8000
    assert recorded >= (killed - connected) - 1.0, (recorded, killed - connected)
    # The caller's audio is there, sample for sample, up to the end of the recording.
    heard_until = min(sent_by_kill * 160, len(sent))
    lag, score = best_alignment(frames[:, 0], sent[:heard_until])
    assert score > 0.99, score
    tail = frames[:, 0][max(lag, 0):]
    np.testing.assert_array_equal(tail[: len(tail) - 800], sent[max(-lag, 0):][: len(tail) - 800])
    if shutil.which("soxi"):
        # An independent decoder agrees on the length.
        wav_path = tmp_path / "check.wav"
        wav_path.write_bytes(data)
        soxi = await asyncio.create_subprocess_exec("soxi", "-s", str(wav_path),
                                                    stdout=asyncio.subprocess.PIPE)
        out, _ = await soxi.communicate()
        assert soxi.returncode == 0 and int(out.strip()) == len(frames)
