"""A WebRTC caller built on aiortc, as a browser would call: offer, answer, Opus both ways.

It sends a fixed PCM16 signal (48 kHz mono) on a real-time 20 ms schedule and keeps every frame of
agent audio it receives with its arrival time, and the data channel's events.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from typing import Any

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

RATE_HZ = 48000
FRAME = RATE_HZ // 50


class SignalTrack(MediaStreamTrack):
    """Plays ``samples`` (then silence) at real time, one 20 ms frame per 20 ms."""

    kind = "audio"

    def __init__(self, samples: np.ndarray) -> None:
        super().__init__()
        self.samples = samples.astype(np.int16)
        self._n = 0
        self._t0: float | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        deadline = self._t0 + self._n * 0.020
        delay = deadline - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        start = self._n * FRAME
        chunk = self.samples[start : start + FRAME]
        if len(chunk) < FRAME:
            chunk = np.concatenate([chunk, np.zeros(FRAME - len(chunk), dtype=np.int16)])
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME)
        frame.planes[0].update(chunk.tobytes())
        frame.sample_rate = RATE_HZ
        frame.time_base = fractions.Fraction(1, RATE_HZ)
        frame.pts = self._n * FRAME
        self._n += 1
        return frame


class WebRtcCaller:
    def __init__(self, base_url: str, token: str, number: str, samples: np.ndarray) -> None:
        self.base_url = base_url
        self.token = token
        self.number = number
        self.pc = RTCPeerConnection()
        self.channel = self.pc.createDataChannel("events")
        self.events: list[dict[str, Any]] = []
        self.received: list[tuple[float, np.ndarray]] = []  # (arrival, mono int16 at 48 kHz)
        self.call_id: str | None = None
        self.status = 0
        self.error: str | None = None
        self._reader: asyncio.Task[None] | None = None
        self.track = SignalTrack(samples)
        self.pc.addTrack(self.track)
        self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)
        self.opened = asyncio.Event()
        self.channel.on("open", self.opened.set)

    def _on_message(self, data: str) -> None:
        self.events.append(json.loads(data))

    def _on_track(self, track: Any) -> None:
        if track.kind == "audio":
            self._reader = asyncio.ensure_future(self._read(track))

    async def _read(self, track: Any) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            data = frame.to_ndarray().reshape(-1)
            channels = len(frame.layout.channels)
            mono = data.reshape(-1, channels).mean(axis=1).astype(np.int16) if channels > 1 else data
            self.received.append((time.monotonic(), mono.astype(np.int16)))

    async def dial(self) -> bool:
        """Offer and answer; False (with ``status`` and ``error``) when the daemon refused."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"type": "offer", "sdp": self.pc.localDescription.sdp, "number": self.number}
        headers = {"Authorization": f"Bearer {self.token}"}
        async with aiohttp.ClientSession() as http, http.post(
            f"{self.base_url}/api/webrtc/offer", json=body, headers=headers
        ) as resp:
            self.status = resp.status
            data = await resp.json()
        if self.status != 200:
            self.error = data.get("error")
            await self.pc.close()
            return False
        self.call_id = data["call_id"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=data["sdp"], type="answer"))
        return True

    def press(self, digit: str) -> None:
        self.channel.send(json.dumps({"type": "dtmf", "digit": digit}))

    def hang_up(self) -> None:
        if self.channel.readyState == "open":
            self.channel.send(json.dumps({"type": "hangup"}))

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()

    def audio(self) -> np.ndarray:
        if not self.received:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([chunk for _, chunk in self.received])
