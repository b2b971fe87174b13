"""HTTP server (aiohttp): health, readiness, metrics, and the routes other parts add
(WebSocket media endpoints, the ops API and page)."""

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


class HttpServer:
    def __init__(self, settings: HttpSettings, switchboard: Switchboard, metrics: Metrics) -> None:
        self.settings = settings
        self.switchboard = switchboard
        self.metrics = metrics
        # Sources outside the allow-list are refused before routing; set-ups are rate-limited
        # per source by the WebSocket media endpoints, which share this gate.
        self.gate = gate_for("http", settings, switchboard.settings, metrics, switchboard.clock)
        self.app = web.Application(client_max_size=1024 * 1024, middlewares=[self._allow_list])
        self.app.router.add_get("/health", self._health)
        self.app.router.add_get("/ready", self._ready)
        self.app.router.add_get("/metrics", self._metrics)
        self._runner: web.AppRunner | None = None
        # Parts that report their state in /ready (e.g. "sip": carrier registrations).
        self.ready_details: dict[str, Callable[[], Any]] = {}
        self._site: web.TCPSite | None = None
        self._reachability = Reachability()
        self.port = 0

    def install(self, installer: RouteInstaller) -> None:
        installer(self.app)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
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
