"""The pjsua2 caller (``tests/peers/pjsua_caller.py``) driven from a test: a subprocess whose JSON
events are collected as they come."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from bridge.simulator import greeting_samples

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


def _envelope(x: np.ndarray, frame: int) -> np.ndarray:
    x = x[: len(x) // frame * frame].astype(np.float64).reshape(-1, frame)
    return np.sqrt(np.mean(x**2, axis=1))


def heard_greeting(heard: np.ndarray, rate_hz: int, language: str) -> tuple[int, float, np.ndarray]:
    """Where the simulator's greeting starts in what a caller heard: (lag in 20 ms frames, the
    20 ms loudness-envelope correlation there, the greeting resampled to ``rate_hz``).

    The greeting starts when the model's first audio arrives, up to 2 s into the call on a loaded
    host: 5 s heard are searched for the greeting at any 20 ms lag below 2 s."""
    frame = rate_hz // 50
    reference = np.asarray(soxr.resample(greeting_samples(language), 24000, rate_hz), dtype=np.int16)
    got, want = _envelope(heard[: 5 * rate_hz], frame), _envelope(reference, frame)
    n = min(len(got) - 100, len(want))
    lag, best = max(((lag, float(np.corrcoef(got[lag : lag + n], want[:n])[0, 1])) for lag in range(100)),
                    key=lambda x: x[1])
    return lag, best, reference
