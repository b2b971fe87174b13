"""Simulated callers: a real-time paced conversation over one of the bridge's transports.

A caller sends one 20 ms frame per frame period on an absolute monotonic schedule
(``deadline = t0 + n * 20 ms``, a timer callback per frame, no sleeping loops) and timestamps every
frame it receives. What it says follows a small listening state machine, so that it takes turns
with the model whatever the bridge's latency:

    state    each frame                                  leaves when
    listen   line noise                                  the agent has gone quiet for ``pause`` s
                                                         after speaking (a normal turn), or has
                                                         spoken for ``barge_after`` s (a barge-in
                                                         turn), or nothing came for 8 s
    speak    the next frame of an utterance              the utterance's last frame is sent

The send time of each utterance's first frame (``onsets``) and last frame (``speech_ends``) and the
arrival time of every frame received (``voiced`` when any sample is non-zero: keep-alive silence is
all zeros) are returned for analysis. Transports differ only in how a call is set up, how a frame
goes out and how received audio is recognised.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
import uuid
from array import array
from dataclasses import dataclass, field
from typing import Any, cast

from bench.load.audio import FRAME_SECONDS, Utterance
from sip import audiosocket as aso
from tests.peers.asterisk import AsteriskCaller

# The agent counts as speaking while voiced frames arrive with gaps shorter than this (the
# simulator's greeting has pauses of up to 260 ms of digital silence).
AGENT_QUIET_SECONDS = 0.6
NO_ANSWER_SECONDS = 8.0
BARGE_IN_SHARE = 0.3
# No new utterance this close to the end of the call: its answer could not be heard.
LAST_TURN_MARGIN_SECONDS = 4.0


@dataclass(slots=True)
class CallerResult:
    index: int
    transport: str
    start: float  # when the call was placed (monotonic)
    media_at: float = 0.0  # first frame due
    end: float = 0.0
    ok: bool = False
    error: str | None = None
    status: str | None = None  # transport-level outcome (FastAGI CALLBRIDGE_STATUS, close code)
    onsets: list[float] = field(default_factory=list)
    barge_planned: list[bool] = field(default_factory=list)
    speech_ends: list[float] = field(default_factory=list)
    no_answer_turns: int = 0
    recv_t: array = field(default_factory=lambda: array("d"))  # type: ignore[type-arg]
    recv_voiced: bytearray = field(default_factory=bytearray)
    lateness: array = field(default_factory=lambda: array("f"))  # type: ignore[type-arg]
    closed_by_bridge: bool = False

    def to_wire(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]
        out["recv_t"] = self.recv_t.tobytes()
        out["lateness"] = self.lateness.tobytes()
        out["recv_voiced"] = bytes(self.recv_voiced)
        return out


class ScriptedCaller:
    """The conversation and the frame schedule; subclasses provide the transport."""

    transport = ""

    def __init__(self, index: int, utterances: list[Utterance], noise: list[bytes], duration: float,
                 seed: int) -> None:
        self.index = index
        self.utterances = utterances
        self.noise = noise
        self.duration = duration
        self.rng = random.Random(seed)
        self.result = CallerResult(index, self.transport, time.monotonic())
        self._handle: asyncio.TimerHandle | None = None
        self._done: asyncio.Future[None] | None = None
        self._t0 = 0.0
        self._n = 0
        # conversation state
        self._speaking: tuple[bytes, ...] | None = None
        self._pos = 0
        self._listen_since = 0.0
        self._agent_first = 0.0  # first voiced frame of the agent's current stretch
        self._agent_last = 0.0  # last voiced frame received
        self._barge = False
        self._barge_after = 0.0
        self._pause = 0.0

    # ------------------------------------------------------------------ transport hooks
    async def open(self) -> None:
        raise NotImplementedError

    def send_frame(self, payload: bytes) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ receiving
    def frame_received(self, at: float, voiced: bool) -> None:
        r = self.result
        r.recv_t.append(at)
        r.recv_voiced.append(voiced)
        if voiced:
            if at - self._agent_last > AGENT_QUIET_SECONDS:
                self._agent_first = at
            self._agent_last = at

    def media_closed(self) -> None:
        if self._done is not None and not self._done.done():
            self.result.closed_by_bridge = True
            self._done.set_result(None)

    # ------------------------------------------------------------------ the call
    async def run(self) -> CallerResult:
        r = self.result
        try:
            await self.open()
            loop = asyncio.get_running_loop()
            self._done = loop.create_future()
            self._t0 = r.media_at = time.monotonic()
            self._listen_since = self._t0
            self._plan_turn()
            self._tick()
            try:
                await asyncio.wait_for(asyncio.shield(self._done), self.duration)
            except TimeoutError:
                pass
            if self._handle is not None:
                self._handle.cancel()
            r.end = time.monotonic()
            r.ok = not r.closed_by_bridge
            if r.closed_by_bridge:
                r.error = "the bridge ended the call early"
        except Exception as exc:  # whatever stopped this caller is its result, not the run's end
            r.error = f"{type(exc).__name__}: {exc}"
            r.ok = False
        finally:
            if self._handle is not None:
                self._handle.cancel()
            try:
                await asyncio.wait_for(self.close(), 10)
            except Exception as exc:
                if r.error is None:
                    r.error = f"hangup: {type(exc).__name__}: {exc}"
                    r.ok = False
        return r

    def _plan_turn(self) -> None:
        rng = self.rng
        self._barge = rng.random() < BARGE_IN_SHARE
        self._barge_after = rng.uniform(0.6, 1.2)
        self._pause = rng.uniform(0.3, 0.9)

    def _tick(self) -> None:
        deadline = self._t0 + self._n * FRAME_SECONDS
        now = time.monotonic()
        r = self.result
        r.lateness.append(now - deadline)
        payload = self._next_payload(now)
        self.send_frame(payload)
        self._n += 1
        loop = asyncio.get_running_loop()
        self._handle = loop.call_at(loop.time() + (self._t0 + self._n * FRAME_SECONDS - time.monotonic()),
                                    self._tick)

    def _next_payload(self, now: float) -> bytes:
        r = self.result
        if self._speaking is not None:
            frames = self._speaking
            payload = frames[self._pos]
            self._pos += 1
            if self._pos == len(frames):
                r.speech_ends.append(now)
                self._speaking = None
                self._listen_since = now
                self._plan_turn()
            return payload
        if now - self._t0 < self.duration - LAST_TURN_MARGIN_SECONDS:
            heard = self._agent_last > self._listen_since
            talking = heard and now - self._agent_last < AGENT_QUIET_SECONDS
            start = False
            if self._barge and talking and self._agent_first > self._listen_since:
                start = now - self._agent_first >= self._barge_after
            elif heard and not talking:
                start = now - self._agent_last >= self._pause
            elif now - self._listen_since >= NO_ANSWER_SECONDS:
                start = True
                r.no_answer_turns += 1
            if start:
                utterance = self.utterances[self.rng.randrange(len(self.utterances))]
                self._speaking = utterance.frames
                self._pos = 1
                r.onsets.append(now)
                r.barge_planned.append(self._barge and talking)
                return utterance.frames[0]
        return self.noise[self._n % len(self.noise)]


class _AudioSocketMedia(asyncio.Protocol):
    def __init__(self, caller: AudioSocketCaller) -> None:
        self.caller = caller
        self.parser = aso.AudioSocketProtocol(aso.Side.CLIENT)
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        parser = self.parser
        parser.receive_data(data)
        caller = self.caller
        for event in parser.events_received():
            if isinstance(event, aso.Audio):
                payload = event.payload
                caller.frame_received(now, payload.count(0) != len(payload))
            elif isinstance(event, (aso.Hangup, aso.Closed, aso.ProtocolError)):
                caller.media_closed()

    def connection_lost(self, exc: Exception | None) -> None:
        self.caller.media_closed()
        if not self.closed.done():
            self.closed.set_result(None)


class AudioSocketCaller(ScriptedCaller):
    """Asterisk's part: FastAGI with the dialled number, then AudioSocket (8 kHz slin)."""

    transport = "audiosocket"
    _HEADER = bytes((aso.Kind.AUDIO,)) + (160 * 2).to_bytes(2, "big")

    def __init__(self, agi_port: int, dialled: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.signalling = AsteriskCaller(agi_port, dialled, caller_id=f"55119{self.index:08d}")
        self._media: _AudioSocketMedia | None = None

    async def open(self) -> None:
        sig = self.signalling
        await sig.dial()
        async with asyncio.timeout(10):
            await sig.audiosocket_requested.wait()
        assert sig.audiosocket_target is not None
        uid, addr = sig.audiosocket_target
        host, _, port = addr.rpartition(":")
        loop = asyncio.get_running_loop()
        _, media = await loop.create_connection(lambda: _AudioSocketMedia(self), host.strip("[]"), int(port))
        self._media = media
        assert media.transport is not None
        media.transport.write(bytes((aso.Kind.UUID, 0, 16)) + uuid.UUID(uid).bytes)

    def send_frame(self, payload: bytes) -> None:
        media = self._media
        if media is not None and media.transport is not None and not media.transport.is_closing():
            media.transport.write(self._HEADER + payload)

    async def close(self) -> None:
        sig = self.signalling
        media = self._media
        if media is not None and media.transport is not None:
            # Asterisk ends an AudioSocket call by closing the connection.
            media.transport.close()
            await media.closed
        sig.media_closed.set()
        await sig.hang_up()  # lets the FastAGI dialogue answer EXEC AudioSocket
        try:
            async with asyncio.timeout(5):
                await sig.agi_done.wait()
        finally:
            self.result.status = sig.agi.variables.get("CALLBRIDGE_STATUS")
            await sig.close()
