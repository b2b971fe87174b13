"""HTTP server (aiohttp): health, readiness, metrics, and the routes other parts add
(WebSocket media endpoints, the ops API and page).

Slow and idle clients: a connection must send a complete request head within
``http.idle_timeout`` seconds of opening, and again of its previous response (aiohttp's keep-alive
timer, which closes a connection whose next request has not been parsed when it fires); a request
body must arrive whole within ``http.body_timeout`` (408 otherwise). At most
``http.max_connections`` connections are open at once, WebSocket media included: past that a new
connection gets a bare 503 and is closed, and the refusal is counted
(``callbridge_connections_refused_total{listener="http",reason="limit"}``) and logged at most
once per ``REFUSAL_LOG_INTERVAL`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge.core.switchboard import Switchboard
from bridge.ops.metrics import Metrics
from bridge.settings import HttpSettings

log = logging.getLogger(__name__)

RouteInstaller = Callable[[web.Application], None]

REFUSAL_LOG_INTERVAL = 10.0
# How long the rest of an unread request body is read and discarded before the connection closes
# (aiohttp's lingering close; its default of 10 s would let a slow body hold the connection).
LINGERING_SECONDS = 1.0
_BUSY_RESPONSE = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class _Refused(asyncio.Protocol):
    """A connection over the limit: a 503 and the door."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)
        stream.write(_BUSY_RESPONSE)
        stream.close()


class _LimitedSite(web.TCPSite):
    """A TCP site whose connections come from ``factory`` (which applies the connection limit)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int,
                 factory: Callable[[], asyncio.BaseProtocol]) -> None:
        super().__init__(runner, host, port)
        self._factory = factory

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, self._host, self._port, backlog=self._backlog)


@web.middleware
async def _body_deadline(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """The whole request body must arrive within the body timeout, before the handler runs.

    A body of known size up to ``BUFFERED_BODY_BYTES`` is waited for in the request's stream
    buffer without being read, so the handler reads it however it likes; a larger or chunked one
    is read here (``request.read()`` then returns it)."""
    if request.body_exists and not request.headers.get("Upgrade"):
        timeout: float = request.app[BODY_TIMEOUT]
        length = request.content_length
        try:
            async with asyncio.timeout(timeout):
                if length is not None and length <= BUFFERED_BODY_BYTES:
                    await request.content.wait_eof()
                else:
                    await request.read()
        except TimeoutError:
            refusal = web.Response(status=408, text=f"request body not received within {timeout:g} s")
            refusal.force_close()  # the rest of the body is not wanted
            return refusal
    response: web.StreamResponse = await handler(request)
    return response


BODY_TIMEOUT = web.AppKey("body_timeout", float)
# Below aiohttp's stream buffer high-water mark (twice its 64 KiB read buffer), so a body this size
# arrives whole without the transport being paused for want of a reader.
BUFFERED_BODY_BYTES = 64 * 1024 + 1024


class HttpServer:
    def __init__(self, settings: HttpSettings, switchboard: Switchboard, metrics: Metrics) -> None:
        self.settings = settings
        self.switchboard = switchboard
        self.metrics = metrics
        self.app = web.Application(client_max_size=1024 * 1024, middlewares=[_body_deadline])
        self.app[BODY_TIMEOUT] = settings.body_timeout
        self.app.router.add_get("/health", self._health)
        self.app.router.add_get("/ready", self._ready)
        self.app.router.add_get("/metrics", self._metrics)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = 0
        self._last_refusal_log = -REFUSAL_LOG_INTERVAL
        self._refusals_unlogged = 0

    def install(self, installer: RouteInstaller) -> None:
        installer(self.app)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0, keepalive_timeout=self.settings.idle_timeout,
                                     lingering_time=LINGERING_SECONDS)
        await self._runner.setup()
        self._site = _LimitedSite(self._runner, self.settings.host, self.settings.port, self._protocol)
        await self._site.start()
        # An asyncio.Server or uvloop's equivalent (which does not subclass it): duck-typed.
        server = cast(asyncio.Server, self._site._server)
        self.port = int(server.sockets[0].getsockname()[1])
        log.info("HTTP listening on %s:%d", self.settings.host, self.port)

    def _protocol(self) -> asyncio.BaseProtocol:
        assert self._runner is not None and self._runner.server is not None
        server = self._runner.server
        if len(server.connections) < self.settings.max_connections:
            return server()
        self.metrics.connections_refused.labels("http", "limit").inc()
        now = asyncio.get_running_loop().time()
        if now - self._last_refusal_log >= REFUSAL_LOG_INTERVAL:
            log.warning("HTTP connection refused: %d connections open (http.max_connections)%s",
                        len(server.connections),
                        f"; {self._refusals_unlogged} more refused since the last report"
                        if self._refusals_unlogged else "")
            self._last_refusal_log = now
            self._refusals_unlogged = 0
        else:
            self._refusals_unlogged += 1
        return _Refused()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "calls_active": self.switchboard.active_calls})

    async def _ready(self, request: web.Request) -> web.Response:
        if self.switchboard.draining:
            return web.json_response({"ready": False, "reason": "draining"}, status=503)
        return web.json_response({"ready": True})

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
