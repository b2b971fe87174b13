"""SIPp as a registrar (UAS mode) on 127.0.0.1: one scenario run per REGISTER transaction chain."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from tests.peers.sipp import SCENARIOS, SIPP, SippRun


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SippRegistrar:
    """``sipp -sf <scenario>.xml`` listening on ``127.0.0.1:port`` until one run of it ends."""

    def __init__(self, workdir: Path, port: int, scenario: str, timeout: float = 30.0) -> None:
        self.workdir = workdir
        self.port = port
        self.scenario = scenario
        self.timeout = timeout
        self.messages = workdir / f"{scenario}-messages.log"
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        assert SIPP is not None
        self.messages.unlink(missing_ok=True)
        self._proc = await asyncio.create_subprocess_exec(
            SIPP, "-sf", str(SCENARIOS / f"{self.scenario}.xml"), "-i", "127.0.0.1", "-p", str(self.port),
            "-m", "1", "-nostdin", "-timeout", str(int(self.timeout)), "-timeout_error", "-trace_msg",
            "-message_file", str(self.messages),
            cwd=self.workdir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )

    async def wait(self) -> SippRun:
        assert self._proc is not None
        out, _ = await asyncio.wait_for(self._proc.communicate(), self.timeout + 10)
        text = self.messages.read_text(errors="replace") if self.messages.exists() else ""
        return SippRun(self._proc.returncode or 0, text, out.decode(errors="replace"))

    async def close(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
