"""The pjsua2 caller (``tests/peers/pjsua_caller.py``) driven from a test: a subprocess whose JSON
events are collected as they come."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class PjsuaCaller:
    """``tests/peers/pjsua_caller.py`` in a subprocess; its JSON events collected as they come."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(self, *args: str) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.peers.pjsua_caller", *args, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                self.events.append({"event": "output", "text": line.decode(errors="replace")})
            self._changed.set()

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]

    async def wait_for(self, name: str, timeout: float = 15.0) -> dict[str, Any]:
        try:
            async with asyncio.timeout(timeout):
                while not self.named(name):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"the caller reported no {name!r}: {self.events}") from None
        return self.named(name)[0]

    async def wait_closed(self, timeout: float = 30.0) -> int:
        assert self.proc is not None and self._reader is not None
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        return rc

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader
