"""A recorded call end to end: FastAGI + AudioSocket -> callbridge -> the built-in simulator; then
the recording, transcript and metadata through the ops API, as ops staff would fetch them."""

from __future__ import annotations

import asyncio
import io
import time
import wave

import aiohttp
import numpy as np
import pytest

from tests.conftest import load_wav, loopback_settings
from tests.peers.asterisk import AsteriskCaller, ReceivedFrame
from tests.servers import start_daemon

pytestmark = pytest.mark.realtime

DEMO_NUMBER = "+5511999990001"
CALLER_ID = "5511988887777"
ADMIN = "e2e-admin-token"
DEMO = "e2e-demo-token"
PIZZA = "e2e-pizza-token"


def settings_for(tmp_path, **extra):
    return loopback_settings(
        tmp_path, record=True,
        ops={"admin_token": ADMIN, "tenant_tokens": {"demo": DEMO, "pizzaria-bella": PIZZA}},
        **extra,
    )


FRAME_SECONDS = 0.020


def best_alignment(recorded: np.ndarray, reference: np.ndarray) -> tuple[int, float]:
    """(lag, normalised correlation over the overlap) of ``reference`` against ``recorded``; a
    negative lag means the reference starts before the recording."""
    rec = recorded.astype(np.float64)
    ref = reference.astype(np.float64)
    n = 1 << int(np.ceil(np.log2(len(rec) + len(ref))))
    xcorr = np.fft.irfft(np.fft.rfft(rec, n) * np.conj(np.fft.rfft(ref, n)), n)
    k = int(np.argmax(xcorr))
    lag = k if k < len(rec) else k - n
    a = rec[max(lag, 0):lag + len(ref)]
    b = ref[max(-lag, 0):max(-lag, 0) + len(a)]
    score = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))
    return lag, score


def utterances(received: list[ReceivedFrame], quiet_frames: int = 10) -> list[tuple[float, np.ndarray]]:
    """What the caller heard, as (monotonic start, samples) pieces: cut at runs of silent frames,
    and also wherever a frame arrived late.

    A late frame (the daemon's loop held up for a moment) reaches the caller after a hole in the
    stream. Whether the far end plays that hole as silence or closes it up depends on its jitter
    buffer, and the recording may do either within its gap tolerance; each stretch that arrived
    unbroken is one piece, to be found whole on the recording at the time it was heard.
    """
    runs: list[list[ReceivedFrame]] = []
    current: list[ReceivedFrame] = []
    silent = 0
    for frame in received:
        late = bool(current) and frame.at - current[-1].at >= 2.5 * FRAME_SECONDS
        if late and current:
            runs.append(current[: len(current) - silent])
            current, silent = [], 0
        if np.any(np.frombuffer(frame.payload, dtype=np.int16)):
            current.append(frame)
            silent = 0
        elif current:
            current.append(frame)  # pauses inside an utterance belong to it
            silent += 1
            if silent >= quiet_frames:
                runs.append(current[:-silent])
                current, silent = [], 0
    if current:
        runs.append(current[: len(current) - silent])
    result = []
    for run in runs:
        if len(run) < 15:  # under 0.3 s: too short to locate unambiguously
            continue
        samples = np.concatenate([np.frombuffer(f.payload, dtype=np.int16) for f in run])
        result.append((run[0].at - len(run[0].payload) / 2 / 8000, samples))
    return result


def stereo(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as w:
        assert w.getnchannels() == 2 and w.getsampwidth() == 2
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
        return frames, w.getframerate()


async def test_recorded_call_through_the_ops_api(tmp_path, fixtures_dir):
    app, stop, task = await start_daemon(settings_for(tmp_path))
    try:
        speech, rate = load_wav(fixtures_dir / "speech" / "real_cmu_8k.wav")
        assert rate == 8000
        speech = speech[: 8000 * 3]
        silence = np.zeros(8000 * 4, dtype=np.int16)
        # Silence through the greeting, three seconds of speech, silence while it is echoed back.
        sent = np.concatenate([silence[: int(8000 * 2.5)], speech, silence])
        caller = AsteriskCaller(app.agi.port, DEMO_NUMBER, caller_id=CALLER_ID)
        await caller.dial()
        await caller.connect_media()
        t_send = time.monotonic()
        await caller.play(sent, start=t_send)
        await caller.hang_up()
        await asyncio.wait_for(caller.agi_done.wait(), 10)
        await asyncio.wait_for(app.archive.wait_idle(), 15)
        assert caller.received, "the caller heard nothing"
        heard = utterances(caller.received)
        assert len(heard) >= 2, "expected the greeting and the echo"
        assert sum(len(samples) for _, samples in heard) > 8000 * 3

        base = f"http://127.0.0.1:{app.http.port}"
        async with aiohttp.ClientSession(base_url=base) as http:
            async with http.get("/api/calls", headers={"Authorization": f"Bearer {DEMO}"}) as resp:
                assert resp.status == 200
                page = await resp.json()
            assert page["total"] == 1
            call = page["calls"][0]
            call_id = call["call_id"]
            assert call["tenant"] == "demo" and call["dialled"] == DEMO_NUMBER
            assert call["caller_id"] == CALLER_ID and call["transport"] == "audiosocket"
            assert call["outcome"] == "caller_hangup" and call["status"] == "complete"
            assert call["voice"] == "marin" and call["model"]
            assert call["answered_at"] and call["ended_at"]
            assert call["duration"] == pytest.approx(len(sent) / 8000, abs=1.5)
            assert call["recording"]["available"] and call["recording"]["sample_rate"] == 8000

            # The right token only.
            async with http.get("/api/calls", headers={"Authorization": f"Bearer {PIZZA}"}) as resp:
                assert (await resp.json())["total"] == 0
            for token, status in ((PIZZA, 404), ("nope", 401), (None, 401), (ADMIN, 200), (DEMO, 200)):
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                async with http.get(f"/api/calls/{call_id}/recording", headers=headers) as resp:
                    assert resp.status == status, token
                    body = await resp.read()
                    if status == 200:
                        wav_bytes = body
                    else:
                        assert not body.startswith(b"RIFF")

            # A Range request returns exactly those bytes.
            ranged = {"Authorization": f"Bearer {DEMO}", "Range": "bytes=4000-11999"}
            async with http.get(f"/api/calls/{call_id}/recording", headers=ranged) as resp:
                assert resp.status == 206
                assert resp.headers["Content-Range"] == f"bytes 4000-11999/{len(wav_bytes)}"
                assert await resp.read() == wav_bytes[4000:12000]

            async with http.get(f"/api/calls/{call_id}/transcript",
                                headers={"Authorization": f"Bearer {DEMO}"}) as resp:
                entries = (await resp.json())["entries"]

        frames, wav_rate = stereo(wav_bytes)
        assert wav_rate == 8000
        # Left: the caller as received. The sent audio is found whole, with the lag it was sent at.
        left_lag, left_score = best_alignment(frames[:, 0], sent)
        assert left_score > 0.99, left_score
        # Right: the agent as played to the caller. Each utterance the caller heard is found on
        # it, at the time it was heard: one timeline, so its distance from the caller's audio is
        # the time between sending and hearing it (the recorder places audio by its time, so a
        # pause in the daemon's sending is silence there, as it was on the line).
        for started, samples in heard:
            lag, score = best_alignment(frames[:, 1], samples)
            assert score > 0.99, (started - t_send, score)
            assert (lag - left_lag) / 8000 == pytest.approx(started - t_send, abs=0.1)
        # The simulator's echo of the caller's speech is on the agent track, after the caller's
        # turn (the speech's loud part is about 2.4 s; the turn ends after it, on silence).
        echo_lag, echo_score = best_alignment(frames[:, 1], speech)
        assert echo_score > 0.99
        assert echo_lag - (left_lag + int(2.5 * 8000)) > 2.0 * 8000

        roles = [e["role"] for e in entries]
        assert "caller" in roles and "agent" in roles
        caller_lines = [e for e in entries if e["role"] == "caller"]
        assert caller_lines[0]["text"].startswith("[caller speech")
        assert all(e["offset"] >= 0 for e in entries)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_refused_calls_are_findable(tmp_path):
    app, stop, task = await start_daemon(settings_for(tmp_path))
    try:
        caller = AsteriskCaller(app.agi.port, "+15550001234", caller_id="5511977776666")
        await caller.dial()
        await asyncio.wait_for(caller.agi_done.wait(), 10)
        assert caller.agi.variables.get("CALLBRIDGE_STATUS") == "UNKNOWN_NUMBER"
        base = f"http://127.0.0.1:{app.http.port}"
        async with aiohttp.ClientSession(base_url=base) as http:
            async with asyncio.timeout(5):
                while True:
                    async with http.get("/api/calls?outcome=refused&number=1555000",
                                        headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
                        calls = (await resp.json())["calls"]
                    if calls:
                        break
                    await asyncio.sleep(0.05)
            assert len(calls) == 1
            call = calls[0]
            assert (call["dialled"], call["caller_id"], call["transport"]) == (
                "+15550001234", "5511977776666", "audiosocket")
            assert call["status"] == "complete" and not call["recording"]["available"]
            # No tenant owns the number: tenant tokens do not see it.
            async with http.get("/api/calls", headers={"Authorization": f"Bearer {DEMO}"}) as resp:
                assert (await resp.json())["total"] == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
