"""Simulated callers over WebRTC (``POST /api/webrtc/offer``), with aiortc as the browser.

The scripted conversation hands one 8 kHz frame per 20 ms to ``send_frame``; it is upsampled to
48 kHz and queued for aiortc's sender, which encodes it to Opus and sends it at once. Agent audio
is decoded by aiortc and timestamped as each 20 ms frame comes out of the decoder. The daemon sends
silence while the agent is quiet (RTP flows continuously), so a received frame counts as voiced
when its level is above the decoder's noise floor.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from typing import Any

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from bench.load.callers import ScriptedCaller

RATE_HZ = 48000
FRAME = RATE_HZ // 50
UPSAMPLE = RATE_HZ // 8000
CONNECT_TIMEOUT = 15.0
# Opus decodes digital silence to (near) zero; speech is far above this peak.
VOICED_PEAK = 64
TOKEN = "bench-webrtc-token"
_TIME_BASE = fractions.Fraction(1, RATE_HZ)
_SILENCE = bytes(FRAME * 2)


class _CallerTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.frames: deque[bytes] = deque(maxlen=10)
        self.ready = asyncio.Event()
        self._pts = 0

    async def recv(self) -> AudioFrame:
        while not self.frames:
            if self.readyState != "live":
                raise MediaStreamError
            self.ready.clear()
            await self.ready.wait()
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME)
        frame.planes[0].update(self.frames.popleft())
        frame.sample_rate = RATE_HZ
        frame.time_base = _TIME_BASE
        frame.pts = self._pts
        self._pts += FRAME
        return frame


class WebRtcCaller(ScriptedCaller):
    transport = "webrtc"

    def __init__(self, http_port: int, dialled: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.http_port = http_port
        self.dialled = dialled
        self.pc = RTCPeerConnection()
        self.track = _CallerTrack()
        self.pc.addTrack(self.track)
        self.channel = self.pc.createDataChannel("events")
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            self._connected.set()
        elif state in ("failed", "closed"):
            self.media_closed()

    def _on_track(self, track: Any) -> None:
        self._reader = asyncio.ensure_future(self._read(track))

    async def _read(self, track: Any) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                self.media_closed()
                return
            samples = frame.to_ndarray()
            self.frame_received(time.monotonic(), int(np.abs(samples).max()) > VOICED_PEAK)

    async def open(self) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"type": "offer", "sdp": self.pc.localDescription.sdp, "number": self.dialled}
        url = f"http://127.0.0.1:{self.http_port}/api/webrtc/offer"
        async with aiohttp.ClientSession() as http, http.post(
            url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as resp:
            data = await resp.json()
            if resp.status != 200:
                raise ConnectionError(f"offer refused: HTTP {resp.status} {data.get('error')}")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=data["sdp"], type="answer"))
        await asyncio.wait_for(self._connected.wait(), CONNECT_TIMEOUT)

    def send_frame(self, payload: bytes) -> None:
        samples = np.frombuffer(payload, dtype=np.int16)
        self.track.frames.append(np.repeat(samples, UPSAMPLE).tobytes() if samples.any() else _SILENCE)
        self.track.ready.set()

    async def close(self) -> None:
        self.result.status = "normal"
        self.track.stop()
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
