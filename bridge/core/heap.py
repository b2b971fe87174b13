"""Garbage collection in a process whose every call must be served every 20 ms.

CPython frees most objects by reference counting; the cyclic collector runs on top of it, and a
full (generation 2) pass walks every tracked object while holding the interpreter lock. In a
daemon whose heap is mostly start-up state (imported modules, the SDK, pydantic models, the tenant
table) such a pass costs tens of milliseconds, sometimes hundreds, and stops every pacer for that
long: a gap the caller hears.

Three measures:

* ``settle()`` once start-up is done: one full collection, then ``gc.freeze()`` moves everything
  still alive into the permanent generation, which later collections do not walk. Full passes then
  cost in proportion to what the calls themselves keep, not to the size of the program: about
  0.07-0.1 ms per call in progress on a current x86 core, because the walk chases pointers through
  objects scattered over the heap (a cache miss each), twice that on a slower one.
* ``CollectionSchedule`` while the daemon serves: full passes once a minute, from the event loop,
  instead of when the interpreter's allocation counts say. With CPython's default thresholds
  (700, 10, 10) the young generation's count crosses 700 several times a second at 100 calls just
  from the frames, futures and timer handles in flight, and every eleventh young pass that finds
  enough survivors promoted starts a full one: a 10-15 ms pause every 10 s at 100-150 calls, which
  the pacers of every call feel at once. The young threshold is raised above that in-flight
  churn (``YOUNG_THRESHOLD``), automatic full passes are switched off, and the schedule runs one
  every ``FULL_COLLECTION_SECONDS``, so cyclic garbage (an ended call's tasks and closures) lives
  at most about that long. Uninstalling restores the interpreter's thresholds.
* ``PauseWatch`` times every collection (``gc.callbacks``) into
  ``callbridge_gc_pause_seconds{generation}`` so that operators see pauses next to event-loop lag.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from typing import Any

from prometheus_client import Histogram

log = logging.getLogger(__name__)


def settle() -> int:
    """Collect garbage left by start-up and freeze what survives; returns how many objects were
    frozen. Objects created afterwards (calls, sessions) are collected as usual."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("heap settled: %d objects frozen", frozen)
    return frozen


# Above the number of container objects a busy daemon has in flight at any moment (frames queued,
# futures, timer handles: a few thousand at 150 calls), so that young passes follow real growth.
YOUNG_THRESHOLD = 10_000
FULL_COLLECTION_SECONDS = 60.0
_NEVER = 2**31 - 1  # a count of young-generation passes that is never reached


class CollectionSchedule:
    """Full collections on a clock instead of on allocation counts (see the module docstring).

    ``install()`` sets the thresholds and ``uninstall()`` restores the ones it found; ``run()``
    makes a full pass every ``period`` seconds on the running loop until cancelled.
    """

    def __init__(self, period: float = FULL_COLLECTION_SECONDS, young: int = YOUNG_THRESHOLD) -> None:
        if period <= 0 or young <= 0:
            raise ValueError("the period and the young threshold must be positive")
        self.period = period
        self.young = young
        self._saved: tuple[int, ...] | None = None

    def install(self) -> None:
        if self._saved is None:
            self._saved = gc.get_threshold()
            gc.set_threshold(self.young, self._saved[1], _NEVER)

    def uninstall(self) -> None:
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            found = gc.collect()
            log.debug("scheduled full collection: %d unreachable objects", found)


class PauseWatch:
    """Observes the duration of each garbage collection into a histogram labelled by generation.

    Collections run in whichever thread allocated last (the event loop or the recording writer),
    so the start time is kept per thread.
    """

    def __init__(self, histogram: Histogram) -> None:
        self._children = [histogram.labels(str(g)) for g in range(3)]
        self._local = threading.local()
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._callback)
            self._installed = False

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._local.started = time.perf_counter()
            return
        started = getattr(self._local, "started", None)
        if started is None:
            return
        self._local.started = None
        generation = info.get("generation", 2)
        if 0 <= generation <= 2:
            self._children[generation].observe(time.perf_counter() - started)
