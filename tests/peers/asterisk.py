"""Plays Asterisk's part in a FastAGI + AudioSocket call.

The FastAGI dialogue follows res_agi.c: the environment block, then one ``200 result=`` reply per
command; ``EXEC AudioSocket`` is answered only when the AudioSocket application returns. Media
follows app_audiosocket.c: the UUID message first, then 20 ms slin frames sent on a monotonic
schedule; audio from the daemon is timestamped on arrival.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from sip import audiosocket as aso

FRAME_SECONDS = 0.020


@dataclass
class ReceivedFrame:
    at: float  # monotonic arrival time
    payload: bytes

    def rms(self) -> float:
        samples = np.frombuffer(self.payload, dtype=np.int16).astype(np.float64)
        return float(np.sqrt(np.mean(samples**2))) if len(samples) else 0.0


@dataclass
class AgiTranscript:
    commands: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)


def _unquote(arg: str) -> str:
    if len(arg) >= 2 and arg[0] == '"' and arg[-1] == '"':
        return arg[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return arg


def _split_args(line: str) -> list[str]:
    return [_unquote(m) for m in re.findall(r'"(?:[^"\\]|\\.)*"|\S+', line)]


class AsteriskCaller:
    """One caller: dials through FastAGI, then talks over AudioSocket."""

    def __init__(self, agi_port: int, dialled: str, caller_id: str = "5511988887777",
                 host: str = "127.0.0.1", extension: str | None = None) -> None:
        self.agi_port = agi_port
        self.host = host
        self.dialled = dialled
        self.caller_id = caller_id
        self.extension = extension or dialled
        self.agi = AgiTranscript()
        self.received: list[ReceivedFrame] = []
        self.hangup_received = False
        self.media_closed = asyncio.Event()
        self.audiosocket_target: tuple[str, str] | None = None  # (uuid, host:port)
        self.sent_frames = 0
        self.max_send_lateness = 0.0
        self._agi_reader: asyncio.StreamReader | None = None
        self._agi_writer: asyncio.StreamWriter | None = None
        self._media_writer: asyncio.StreamWriter | None = None
        self._media_protocol = aso.AudioSocketProtocol(aso.Side.CLIENT)
        self._media_task: asyncio.Task[None] | None = None
        self._agi_task: asyncio.Task[None] | None = None
        self._exec_reply = asyncio.Event()
        self.audiosocket_requested = asyncio.Event()
        self.agi_done = asyncio.Event()

    # ------------------------------------------------------------------ FastAGI
    async def dial(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.agi_port)
        self._agi_reader, self._agi_writer = reader, writer
        env = {
            "agi_network": "yes",
            "agi_network_script": "",
            "agi_request": f"agi://{self.host}:{self.agi_port}",
            "agi_channel": "PJSIP/trunk-00000001",
            "agi_language": "en",
            "agi_type": "PJSIP",
            "agi_uniqueid": f"{time.time():.6f}",
            "agi_version": "22.6.0",
            "agi_callerid": self.caller_id,
            "agi_calleridname": "Test Caller",
            "agi_dnid": self.dialled,
            "agi_context": "callbridge-inbound",
            "agi_extension": self.extension,
            "agi_priority": "2",
            "agi_enhanced": "0.0",
            "agi_accountcode": "",
            "agi_threadid": "140000000000000",
            "agi_arg_1": self.dialled,
        }
        writer.write("".join(f"{k}: {v}\n" for k, v in env.items()).encode() + b"\n")
        await writer.drain()
        self._agi_task = asyncio.create_task(self._agi_dialogue())

    async def _agi_reply(self, text: str) -> None:
        assert self._agi_writer is not None
        self._agi_writer.write((text + "\n").encode())
        await self._agi_writer.drain()

    async def _agi_dialogue(self) -> None:
        assert self._agi_reader is not None
        try:
            while True:
                line = await self._agi_reader.readline()
                if not line:
                    break
                command = line.decode().rstrip("\n")
                self.agi.commands.append(command)
                parts = _split_args(command)
                upper = " ".join(parts[:2]).upper()
                if upper == "EXEC AUDIOSOCKET":
                    uid, _, addr = parts[2].partition(",")
                    self.audiosocket_target = (uid, addr)
                    self.audiosocket_requested.set()
                    await self._exec_reply.wait()
                    await self._agi_reply("200 result=0")
                elif upper.startswith("SET VARIABLE"):
                    self.agi.variables[parts[2]] = parts[3] if len(parts) > 3 else ""
                    await self._agi_reply("200 result=1")
                elif upper.startswith("HANGUP"):
                    await self._agi_reply("200 result=1")
                else:
                    await self._agi_reply("200 result=0")
        finally:
            self.agi_done.set()
            if self._agi_writer is not None:
                self._agi_writer.close()

    # ------------------------------------------------------------------ AudioSocket
    async def connect_media(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            await self.audiosocket_requested.wait()
        assert self.audiosocket_target is not None
        uid, addr = self.audiosocket_target
        host, _, port = addr.rpartition(":")
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        self._media_writer = writer
        self._media_protocol.send_uuid(uuid.UUID(uid))
        writer.write(b"".join(self._media_protocol.data_to_send()))
        await writer.drain()
        self._media_task = asyncio.create_task(self._read_media(reader))

    async def _read_media(self, reader: asyncio.StreamReader) -> None:
        protocol = self._media_protocol
        try:
            while True:
                data = await reader.read(65536)
                now = time.monotonic()
                if not data:
                    protocol.receive_eof()
                else:
                    protocol.receive_data(data)
                for event in protocol.events_received():
                    if isinstance(event, aso.Audio):
                        self.received.append(ReceivedFrame(now, event.payload))
                    elif isinstance(event, aso.Hangup):
                        self.hangup_received = True
                    elif isinstance(event, (aso.Closed, aso.ProtocolError)):
                        return
                if not data:
                    return
        finally:
            self.media_closed.set()
            self._exec_reply.set()

    async def play(self, samples: np.ndarray, start: float | None = None) -> None:
        """Send 8 kHz int16 audio as 20 ms frames on an absolute monotonic schedule."""
        assert self._media_writer is not None
        frame = 160
        t0 = time.monotonic() if start is None else start
        for n, offset in enumerate(range(0, len(samples) - frame + 1, frame)):
            if self.media_closed.is_set():
                return
            deadline = t0 + n * FRAME_SECONDS
            delay = deadline - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.max_send_lateness = max(self.max_send_lateness, time.monotonic() - deadline)
            self._media_protocol.send_audio(samples[offset:offset + frame].astype(np.int16).tobytes())
            self._media_writer.write(b"".join(self._media_protocol.data_to_send()))
            self.sent_frames += 1

    async def send_dtmf(self, digit: str) -> None:
        assert self._media_writer is not None
        self._media_protocol.send_dtmf(digit)
        self._media_writer.write(b"".join(self._media_protocol.data_to_send()))
        await self._media_writer.drain()

    async def hang_up(self) -> None:
        """The caller hangs up: Asterisk closes the AudioSocket connection."""
        if self._media_writer is not None and not self._media_writer.is_closing():
            self._media_writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self.media_closed.wait()
        self._exec_reply.set()

    async def close(self) -> None:
        await self.hang_up()
        for task in (self._media_task, self._agi_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # ------------------------------------------------------------------ analysis
    def agent_frames(self, threshold: float = 200.0) -> list[ReceivedFrame]:
        return [f for f in self.received if f.rms() > threshold]
