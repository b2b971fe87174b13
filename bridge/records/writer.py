"""The recording writer thread: services every call's recorder off the event loop."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from bridge.records.callstore import CallRecord

if TYPE_CHECKING:
    from bridge.ops.metrics import Metrics

from bridge.records.layout import RecordingError
from bridge.records.recorder import CallRecorder

log = logging.getLogger(__name__)

Clock = Callable[[], float]

# The writer thread shares the interpreter lock (and, on a small host, the core) with the event
# loop: after this much work in a pass it pauses briefly, so the calls' pacers run between
# recordings instead of waiting out a whole pass (tens of milliseconds with a hundred calls).
WRITER_SLICE_SECONDS = 0.002
WRITER_PAUSE_SECONDS = 0.0005
# The writer's work is throughput, the loop's is a deadline every 20 ms: the writer thread runs at
# the lowest CPU priority (Linux nice 19), so that when both want the core the scheduler hands it
# to the loop at once. It still gets all the time the loop leaves idle; only a loop that keeps its
# core full would starve it, and then the bounded queues drop recording audio (counted), never
# live audio. At 200 AudioSocket calls on 2 cores this took the pacer's frames over 10 ms late
# from hundreds per run to none.
WRITER_NICE = 19

def _lower_thread_priority(nice: int) -> None:
    """Give the calling thread (only it) the nice value ``nice``, on Linux, where each thread is
    a task of its own for the scheduler. Elsewhere a thread id is no process id and is left alone."""
    if not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as exc:  # a sandbox that forbids it: the writer runs at the loop's priority
        log.debug("recording writer keeps its priority: %s", exc)


class RecordingWriter:
    """The one thread that writes every call's recording (see the module docstring)."""

    def __init__(self, *, flush_interval: float, clock: Clock, metrics: Metrics | None = None,
                 on_finished: Callable[[CallRecorder, CallRecord], None] | None = None) -> None:
        self.flush_interval = flush_interval
        self.clock = clock
        self.metrics = metrics
        self.on_finished = on_finished
        self._lock = threading.Lock()
        self._new: list[CallRecorder] = []
        self._active: list[CallRecorder] = []
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.passes = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="recording-writer", daemon=True)
            self._thread.start()

    def attach(self, recorder: CallRecorder) -> None:
        with self._lock:
            self._new.append(recorder)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._active) + len(self._new)

    def stop(self, timeout: float | None = None) -> None:
        """Finish every recorder still open and end the thread (blocking; call from a thread)."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        _lower_thread_priority(WRITER_NICE)
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            stopping = self._stop
            with self._lock:
                new, self._new = self._new, []
            for rec in new:
                try:
                    rec.begin()
                except (OSError, RecordingError) as exc:
                    rec._fail(exc)
                self._active.append(rec)
            now = self.clock()
            done: list[CallRecorder] = []
            slice_started = time.perf_counter()
            for rec in self._active:
                if rec.ended or stopping:
                    done.append(rec)
                    continue
                if time.perf_counter() - slice_started > WRITER_SLICE_SECONDS:
                    time.sleep(WRITER_PAUSE_SECONDS)
                    slice_started = time.perf_counter()
                try:
                    written = rec.service(now)
                except Exception as exc:  # a bug in one recording must not stop every other one
                    log.error("call %s: recording failed", rec.record.call_id, exc_info=True)
                    rec._fail(exc)
                    continue
                if written and self.metrics is not None:
                    self.metrics.recording_bytes.inc(written)
            for rec in done:
                if not rec.ended:
                    rec.end("shutdown")
                before = rec._wav.data_bytes if rec._wav is not None else 0
                try:
                    record = rec.finish(now)
                except Exception as exc:  # as above: the call is still reported finished
                    log.error("call %s: closing the recording failed", rec.record.call_id, exc_info=True)
                    rec._fail(exc)
                    rec.release_marker()
                    record = (rec.final or rec.record).evolve(
                        recorded=False, extra={**rec.record.extra, "recording_error": str(exc)})
                after = rec._wav.data_bytes if rec._wav is not None else 0
                if self.metrics is not None and after > before:
                    self.metrics.recording_bytes.inc(after - before)
                with self._lock:
                    self._active.remove(rec)
                if self.on_finished is not None:
                    self.on_finished(rec, record)
            self.passes += 1
            if stopping:
                with self._lock:
                    if not self._new:
                        return
