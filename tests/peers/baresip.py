"""baresip (Debian's softphone) as an independent SIP caller, headless.

The phone runs from a configuration folder made per test: no sound card modules, ``aufile`` as the
microphone (a mono PCM16 WAV at the codec's rate), ``sndfile`` dumping what it sends and what it
decodes from the far end to WAV files, and ``ctrl_tcp`` to drive it (netstring-framed JSON commands
in; command responses and call events out). With no player module loaded baresip starts no player,
but the decode filters (``sndfile``) still see every frame that arrives.

baresip ends a call when its ``aufile`` source reaches the end of the file: callers pad the speech
with enough silence for the whole test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

BARESIP = shutil.which("baresip")
MODULE_DIR = Path("/usr/lib/baresip/modules")
START_TIMEOUT = 10.0


def write_wav(path: Path, samples: np.ndarray, rate_hz: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return data.reshape(-1, w.getnchannels())[:, 0].copy(), w.getframerate()


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Baresip:
    """One baresip process with its configuration in ``workdir``."""

    workdir: Path
    microphone: Path  # mono PCM16 WAV at the codec's rate
    codec: str = "PCMU"
    events: list[dict[str, Any]] = field(default_factory=list)
    _proc: asyncio.subprocess.Process | None = None
    _reader: asyncio.StreamReader | None = None
    _writer: asyncio.StreamWriter | None = None
    _listener: asyncio.Task[None] | None = None
    _responses: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def dumps(self) -> Path:
        return self.workdir / "dumps"

    def _configure(self, ctrl_port: int) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dumps.mkdir(exist_ok=True)
        modules = ["g711.so", "g722.so", "aufile.so", "sndfile.so", "ctrl_tcp.so"]
        config = [
            f"module_path {MODULE_DIR}",
            "poll_method epoll",
            "sip_listen 127.0.0.1:0",
            "call_local_timeout 120",
            f"audio_source aufile,{self.microphone}",
            "audio_buffer 20-160",
            "rtp_ports 42000-42999",
            "jitter_buffer_delay 1-5",
            f"snd_path {self.dumps}",
            f"ctrl_tcp_listen 127.0.0.1:{ctrl_port}",
            *(f"module {m}" for m in modules),
            "module_app account.so",
            "module_app menu.so",
            "",
        ]
        (self.workdir / "config").write_text("\n".join(config), encoding="ascii")
        # One account that registers nowhere: it only places calls.
        (self.workdir / "accounts").write_text(
            f"<sip:caller@127.0.0.1>;regint=0;audio_codecs={self.codec};answermode=manual\n", encoding="ascii")
        (self.workdir / "contacts").write_text("", encoding="ascii")

    async def start(self) -> None:
        assert BARESIP is not None
        ctrl_port = _free_tcp_port()
        self._configure(ctrl_port)
        log = self._open_log()
        self._proc = await asyncio.create_subprocess_exec(
            BARESIP, "-f", str(self.workdir), stdin=asyncio.subprocess.DEVNULL, stdout=log,
            stderr=asyncio.subprocess.STDOUT)
        log.close()
        async with asyncio.timeout(START_TIMEOUT):
            while True:
                try:
                    self._reader, self._writer = await asyncio.open_connection("127.0.0.1", ctrl_port)
                    break
                except OSError:
                    if self._proc.returncode is not None:
                        raise RuntimeError(f"baresip exited: {self.log()[-2000:]}") from None
                    await asyncio.sleep(0.05)
        self._listener = asyncio.create_task(self._listen())

    def _open_log(self) -> BinaryIO:
        return open(self.workdir / "baresip.log", "wb")

    def log(self) -> str:
        path = self.workdir / "baresip.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def _listen(self) -> None:
        assert self._reader is not None
        while True:
            try:
                head = await self._reader.readuntil(b":")
                body = await self._reader.readexactly(int(head[:-1]) + 1)  # payload and its ","
            except (asyncio.IncompleteReadError, ValueError, ConnectionError):
                return
            message = json.loads(body[:-1])
            if message.get("response"):
                self._responses.put_nowait(message)
            else:
                self.events.append(message)
                self._changed.set()

    async def command(self, name: str, params: str = "") -> dict[str, Any]:
        """Run one of baresip's long commands (``dial``, ``sndcode``, ``hangup``) and return its
        response."""
        assert self._writer is not None
        payload = json.dumps({"command": name, "params": params, "token": name}).encode()
        self._writer.write(str(len(payload)).encode() + b":" + payload + b",")
        await self._writer.drain()
        return await asyncio.wait_for(self._responses.get(), 5)

    async def wait_event(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if event.get("type") == kind:
                        return event
                self._changed.clear()
                await self._changed.wait()

    def dump(self, direction: str) -> tuple[np.ndarray, int]:
        """What the phone sent (``enc``) or decoded from the far end (``dec``)."""
        files = sorted(self.dumps.glob(f"dump-*-{direction}.wav"))
        if not files:
            raise FileNotFoundError(f"baresip wrote no {direction} dump; log: {self.log()[-2000:]}")
        return read_wav(files[-1])

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
