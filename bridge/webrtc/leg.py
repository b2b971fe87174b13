"""The WebRTC caller leg: Opus from and to a browser through aiortc, at 48 kHz.

Theory of operation
-------------------
aiortc decodes the browser's Opus to 48 kHz PCM16 (it decodes to stereo; the microphone is mono,
so both channels are averaged) and the reader hands each 20 ms frame to the call, which converts
it to the model's rate without a narrowband detour. Toward the browser, the call's pacer hands one
20 ms frame per 20 ms to ``send_audio``; ``AgentTrack.recv`` gives it to aiortc's RTP sender, which
encodes it to Opus and sends it at once. RTP wants a continuous stream, so the leg asks the pacer
for silence while the agent is quiet (``keepalive``). The hand-off is a short bounded queue: if
aiortc falls behind (a congested or stalled path), the oldest frames are dropped and counted, the
pacer never waits. On barge-in the queue is emptied.

The page learns what happens on the call over the data channel (``sip.webrtc``): transcripts, the
agent speaking or listening (taken from the audio actually sent, so it matches what is heard),
barge-ins, keypad digits and the end of the call.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from collections import deque
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from bridge.core.call import CallTap
from bridge.ops.metrics import Metrics
from media.codec import FRAME_MS, AudioFormat, Encoding
from sip import webrtc as wr
from tenants.config import TransferTarget

log = logging.getLogger(__name__)

TRANSPORT = "webrtc"
RATE_HZ = 48000
FRAME_SAMPLES = RATE_HZ * FRAME_MS // 1000
AUDIO_FORMAT = AudioFormat(Encoding.SLIN, RATE_HZ)
# Frames waiting for aiortc's sender: 100 ms. More means the path is stalled; older audio is
# the least useful then.
SEND_QUEUE_FRAMES = 5
# The agent is "listening" again after this much silence toward the page.
LISTENING_AFTER_FRAMES = 10
_TIME_BASE = fractions.Fraction(1, RATE_HZ)


class AgentTrack(MediaStreamTrack):
    """The agent's audio toward the browser: frames as the call's pacer hands them over."""

    kind = "audio"

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._frames: deque[bytes] = deque()
        self._ready: asyncio.Event = asyncio.Event()
        self._pts = 0
        self._dropped = metrics.frames_dropped.labels("outbound", "send_queue_full")

    def put(self, pcm: bytes) -> None:
        if len(self._frames) >= SEND_QUEUE_FRAMES:
            self._frames.popleft()
            self._dropped.inc()
        self._frames.append(pcm)
        self._ready.set()

    def clear(self) -> None:
        self._frames.clear()

    async def recv(self) -> AudioFrame:
        while not self._frames:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        pcm = self._frames.popleft()
        frame = AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
        frame.planes[0].update(pcm)
        frame.sample_rate = RATE_HZ
        frame.time_base = _TIME_BASE
        frame.pts = self._pts
        self._pts += frame.samples
        return frame

    def stop(self) -> None:
        super().stop()
        self._ready.set()


def frame_pcm(frame: AudioFrame) -> bytes:
    """A decoded inbound frame as mono PCM16 at its own rate."""
    samples = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        mono = samples.mean(axis=0) if channels > 1 else samples[0]
    else:
        flat = samples.reshape(-1)
        mono = flat.reshape(-1, channels).mean(axis=1) if channels > 1 else flat
    return np.asarray(mono, dtype=np.int16).tobytes()


class WebRtcLeg:
    """CallerLeg toward a browser, plus the page's event channel."""

    transport = TRANSPORT
    audio_format = AUDIO_FORMAT
    keepalive = True  # RTP flows continuously; the browser's jitter buffer expects it

    def __init__(self, track: AgentTrack, close: Any) -> None:
        self.track = track
        self._close = close  # coroutine function closing the peer connection
        self._channel: Any = None
        self._silence = AUDIO_FORMAT.silence()
        self._quiet_frames = LISTENING_AFTER_FRAMES
        self.speaking = False
        self.events_sent = 0

    def attach_channel(self, channel: Any) -> None:
        self._channel = channel

    def notify(self, kind: str, **fields: Any) -> None:
        channel = self._channel
        if channel is None or channel.readyState != "open":
            return
        try:
            channel.send(wr.event_message(kind, **fields))
            self.events_sent += 1
        except Exception as exc:  # a channel closing under us: the call ends by its own path
            log.debug("data channel send failed: %s", exc)

    # -- CallerLeg ---------------------------------------------------------------------------
    async def send_audio(self, payload: bytes) -> None:
        self.track.put(payload)
        if payload == self._silence:
            self._quiet_frames += 1
            if self.speaking and self._quiet_frames >= LISTENING_AFTER_FRAMES:
                self.speaking = False
                self.notify("agent", state="listening")
        else:
            self._quiet_frames = 0
            if not self.speaking:
                self.speaking = True
                self.notify("agent", state="speaking")

    async def clear_playback(self) -> None:
        self.track.clear()

    async def hangup(self) -> None:
        self.notify("ended", outcome="hangup")
        await self._close()

    async def transfer(self, target: TransferTarget) -> bool:
        return False  # a browser has no PBX to hand the caller to


class EventTap:
    """Passes what the call records on to its recorder and the page's events to the leg."""

    def __init__(self, inner: CallTap | None, leg: WebRtcLeg) -> None:
        self._inner = inner
        self._leg = leg

    def caller_audio(self, samples: np.ndarray, rate_hz: int) -> None:
        if self._inner is not None:
            self._inner.caller_audio(samples, rate_hz)

    def agent_audio(self, samples: np.ndarray, rate_hz: int) -> None:
        if self._inner is not None:
            self._inner.agent_audio(samples, rate_hz)

    def transcript(self, role: str, text: str, at: float) -> None:
        if self._inner is not None:
            self._inner.transcript(role, text, at)
        self._leg.notify("transcript", role=role, text=text)

    def event(self, name: str, **fields: Any) -> None:
        if self._inner is not None:
            self._inner.event(name, **fields)
        if name in ("barge_in", "dtmf"):
            self._leg.notify(name, **{k: v for k, v in fields.items() if isinstance(v, str | int | float)})
        elif name == "ended":
            self._leg.notify("ended", outcome=str(fields.get("outcome", "")))
