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
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, cast
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge.core.switchboard import Switchboard
from bridge.ops.metrics import Metrics
from bridge.security.exposure import listeners
from bridge.security.sources import gate_for, peer_host
from bridge.settings import HttpSettings

log = logging.getLogger(__name__)

RouteInstaller = Callable[[web.Application], None]
REACHABILITY_TTL = 30.0  # seconds a reachability answer is reused (monitors poll often)
REACHABILITY_TIMEOUT = 2.0


class Reachability:
    """Whether the model endpoint's host accepts a TCP connection, asked at most every
    ``REACHABILITY_TTL`` seconds: a health poll must not open (and pay for) a model session."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._answers: dict[str, tuple[float, bool]] = {}

    async def reachable(self, url: str) -> bool:
        now = self._clock()
        cached = self._answers.get(url)
        if cached is not None and now - cached[0] < REACHABILITY_TTL:
            return cached[1]
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
        try:
            async with asyncio.timeout(REACHABILITY_TIMEOUT):
                _, writer = await asyncio.open_connection(host, port)
            writer.close()
            ok = True
        except (OSError, TimeoutError):
            ok = False
        self._answers[url] = (now, ok)
        return ok


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
        # Sources outside the allow-list are refused before routing; set-ups are rate-limited
        # per source by the WebSocket media endpoints, which share this gate.
        self.gate = gate_for("http", settings, switchboard.settings, metrics, switchboard.clock)
        self.app = web.Application(client_max_size=1024 * 1024, middlewares=[self._allow_list, _body_deadline])
        self.app[BODY_TIMEOUT] = settings.body_timeout
        self.app.router.add_get("/health", self._health)
        self.app.router.add_get("/ready", self._ready)
        self.app.router.add_get("/metrics", self._metrics)
        self._runner: web.AppRunner | None = None
        # Parts that report their state in /ready (e.g. "sip": carrier registrations).
        self.ready_details: dict[str, Callable[[], Any]] = {}
        self._site: web.TCPSite | None = None
        self._reachability = Reachability()
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
        for exposure in listeners(self.switchboard.settings):
            if exposure.name == "http":
                log.info("%s", replace(exposure, port=self.port).line())

    @web.middleware
    async def _allow_list(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        if not self.gate.allows_peer(peer_host(peer)):
            return web.Response(status=403, text="forbidden\n")
        return await handler(request)

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
        # The fields monitors of Voice Live deployments read (status, env, worker_status,
        # voice_model), the model provider and whether its endpoint answers.
        switchboard = self.switchboard
        endpoint = switchboard.endpoint
        return web.json_response({
            "status": "ok",
            "service": "callbridge",  # how `callbridge check` recognises a running daemon
            "calls_active": switchboard.active_calls,
            "env": switchboard.settings.app_env.value,
            "worker_status": "draining" if switchboard.draining else "running",
            "voice_model": endpoint.model,
            "provider": endpoint.provider.value,
            "provider_reachable": await self._reachability.reachable(endpoint.where),
        })

    async def _ready(self, request: web.Request) -> web.Response:
        if self.switchboard.draining:
            return web.json_response({"ready": False, "reason": "draining"}, status=503)
        body: dict[str, Any] = {"ready": True}
        for name, detail in self.ready_details.items():
            body[name] = detail()
        return web.json_response(body)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
