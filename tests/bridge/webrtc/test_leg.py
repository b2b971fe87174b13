from __future__ import annotations

import asyncio

import numpy as np
from av import AudioFrame
from prometheus_client import CollectorRegistry

from bridge.ops.metrics import Metrics
from bridge.webrtc.leg import FRAME_SAMPLES, RATE_HZ, SEND_QUEUE_FRAMES, AgentTrack, frame_pcm


def _pcm(value: int) -> bytes:
    return np.full(FRAME_SAMPLES, value, dtype=np.int16).tobytes()


async def test_agent_track_hands_frames_in_order_and_drops_the_oldest() -> None:
    metrics = Metrics(CollectorRegistry())
    track = AgentTrack(metrics)
    for i in range(SEND_QUEUE_FRAMES + 3):
        track.put(_pcm(i))
    frames = [await track.recv() for _ in range(SEND_QUEUE_FRAMES)]
    firsts = [int(f.to_ndarray().reshape(-1)[0]) for f in frames]
    assert firsts == list(range(3, SEND_QUEUE_FRAMES + 3))  # the three oldest were dropped
    assert [f.pts for f in frames] == [i * FRAME_SAMPLES for i in range(SEND_QUEUE_FRAMES)]
    assert {(f.sample_rate, f.samples, f.format.name, f.layout.name) for f in frames} == {
        (RATE_HZ, FRAME_SAMPLES, "s16", "mono")}
    assert metrics.registry.get_sample_value(
        "callbridge_frames_dropped_total", {"direction": "outbound", "reason": "send_queue_full"}) == 3
    # recv waits for the next frame; clear() drops what is queued (barge-in).
    waiting = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    track.put(_pcm(7))
    assert int((await waiting).to_ndarray().reshape(-1)[0]) == 7
    track.put(_pcm(8))
    track.clear()
    track.put(_pcm(9))
    assert int((await track.recv()).to_ndarray().reshape(-1)[0]) == 9


def test_decoded_stereo_frames_become_mono() -> None:
    left = np.full(FRAME_SAMPLES, 1000, dtype=np.int16)
    right = np.full(FRAME_SAMPLES, 3000, dtype=np.int16)
    packed = AudioFrame.from_ndarray(np.stack([left, right], axis=1).reshape(1, -1), format="s16", layout="stereo")
    assert np.all(np.frombuffer(frame_pcm(packed), dtype=np.int16) == 2000)
    planar = AudioFrame.from_ndarray(np.stack([left, right]), format="s16p", layout="stereo")
    assert np.all(np.frombuffer(frame_pcm(planar), dtype=np.int16) == 2000)
    mono = AudioFrame.from_ndarray(left.reshape(1, -1), format="s16", layout="mono")
    assert frame_pcm(mono) == left.tobytes()
