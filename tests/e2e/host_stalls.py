"""Time the host took away from the test process, so that real-time checks judge the daemon alone.

The end-to-end tests run the daemon and its callers on one event loop in one process, and they
time frame arrivals against a 20 ms grid. On a shared virtual machine the hypervisor now and then
stops a virtual CPU for tens of milliseconds (the guest's "steal" time); every frame in flight is
then late, through no fault of the daemon, and a 45 ms gap check fails on the host, not the code.

``HostStallWatch`` wakes every 5 ms. When a wake-up is late it records how much of that window the
process spent not running, bounded by the steal time the kernel reported for it. Time the process
spent running anything (a long callback, a garbage collection, another thread holding the GIL) is
CPU time and is never excused; neither is blocking I/O on the loop, which the host does not report
as steal. A gap is judged by what is left of it after the host's share.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_PERIOD = 0.005
_LATE = 0.005  # a wake-up later than this starts a record
_TICK = 1.0 / os.sysconf("SC_CLK_TCK")


def _steal_seconds() -> float:
    """Steal time of all CPUs since boot (``/proc/stat``), or 0 where the kernel does not say."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return 0.0
    return int(fields[8]) * _TICK if len(fields) > 8 else 0.0


@dataclass(frozen=True, slots=True)
class Stall:
    start: float  # monotonic
    end: float
    taken: float  # seconds of the window the host kept the process from running


class HostStallWatch:
    def __init__(self) -> None:
        self.stalls: list[Stall] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _watch(self) -> None:
        t0, cpu0, steal0 = time.monotonic(), time.process_time(), _steal_seconds()
        while True:
            await asyncio.sleep(_PERIOD)
            t1, cpu1, steal1 = time.monotonic(), time.process_time(), _steal_seconds()
            late = t1 - t0 - _PERIOD
            if late > _LATE:
                off_cpu = late - (cpu1 - cpu0)
                taken = min(off_cpu, steal1 - steal0)
                if taken > 0:
                    self.stalls.append(Stall(t0, t1, taken))
            t0, cpu0, steal0 = t1, cpu1, steal1

    def taken_within(self, a: float, b: float) -> float:
        """Seconds the host took between ``a`` and ``b`` (each record counted by its overlap)."""
        total = 0.0
        for s in self.stalls:
            overlap = min(b, s.end) - max(a, s.start)
            if overlap > 0:
                total += s.taken * min(1.0, overlap / (s.end - s.start))
        return total

    def assert_no_gap(self, times: Sequence[float], limit: float = 0.045) -> None:
        """No gap between consecutive arrivals reaches ``limit`` once the host's share is removed."""
        at = np.asarray(times, dtype=np.float64)
        gaps = np.diff(at)
        for i in np.flatnonzero(gaps >= limit):
            taken = self.taken_within(at[i], at[i + 1])
            assert gaps[i] - taken < limit, (
                f"gap of {gaps[i] * 1000:.0f} ms inside agent speech "
                f"(of which the host took {taken * 1000:.0f} ms)"
            )
