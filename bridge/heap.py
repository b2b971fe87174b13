"""Garbage collection in a process whose every call must be served every 20 ms.

CPython frees most objects by reference counting; the cyclic collector runs on top of it, and a
full (generation 2) pass walks every tracked object while holding the interpreter lock. In a
daemon whose heap is mostly start-up state (imported modules, the SDK, pydantic models, the tenant
table) such a pass costs tens of milliseconds, sometimes hundreds, and stops every pacer for that
long: a gap the caller hears.

Two measures:

* ``settle()`` once start-up is done: one full collection, then ``gc.freeze()`` moves everything
  still alive into the permanent generation, which later collections do not walk. Full passes then
  cost in proportion to what the calls themselves keep, not to the size of the program.
* ``PauseWatch`` times every collection (``gc.callbacks``) into
  ``callbridge_gc_pause_seconds{generation}`` so that operators see pauses next to event-loop lag.
"""

from __future__ import annotations

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
