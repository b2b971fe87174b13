"""Listeners that cannot accept: file descriptors exhausted, made visible.

When ``accept()`` fails with EMFILE/ENFILE (or ENOBUFS/ENOMEM) asyncio stops accepting on that
socket for a second and reports the failure to the loop's exception handler, whose default prints
a traceback without saying which listener it was. ``AcceptFailureWatch`` takes those reports: each
is counted (``callbridge_connections_refused_total{listener=...,reason="descriptors"}``) and a
log line naming the listener goes out at most once per ``LOG_INTERVAL`` seconds per listener.
Every other report goes on to the handler that was there before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from bridge.ops.metrics import Metrics

log = logging.getLogger(__name__)

LOG_INTERVAL = 10.0
_ACCEPT_FAILURE = "socket.accept() out of system resource"  # asyncio.selector_events

Listeners = Callable[[], dict[int, str]]  # local port -> listener name


class AcceptFailureWatch:
    def __init__(self, metrics: Metrics, listeners: Listeners) -> None:
        self.metrics = metrics
        self.listeners = listeners
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None
        self._logged_at: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self._handle)

    def uninstall(self) -> None:
        if self._loop is not None:
            self._loop.set_exception_handler(self._previous)
            self._loop = None

    def _listener(self, context: dict[str, Any]) -> str:
        sock = context.get("socket")
        try:
            port = int(sock.getsockname()[1]) if sock is not None else -1
        except (OSError, IndexError, TypeError, ValueError):
            port = -1
        return self.listeners().get(port, "other")

    def _handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != _ACCEPT_FAILURE:
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        listener = self._listener(context)
        self.metrics.connections_refused.labels(listener, "descriptors").inc()
        now = loop.time()
        if now - self._logged_at.get(listener, -LOG_INTERVAL) < LOG_INTERVAL:
            self._unlogged[listener] = self._unlogged.get(listener, 0) + 1
            return
        self._logged_at[listener] = now
        unlogged = self._unlogged.pop(listener, 0)
        exc = context.get("exception")
        log.error("%s listener cannot accept connections (%s): file descriptors exhausted? "
                  "Accepting again in a second%s", listener,
                  exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__,
                  f"; {unlogged} more such failure(s) since the last report" if unlogged else "")
