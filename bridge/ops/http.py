"""HTTP server (aiohttp): health, readiness, metrics, and the routes other parts add
(WebSocket media endpoints, the ops API and page)."""

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


class HttpServer:
    def __init__(self, settings: HttpSettings, switchboard: Switchboard, metrics: Metrics) -> None:
        self.settings = settings
        self.switchboard = switchboard
        self.metrics = metrics
        self.app = web.Application(client_max_size=1024 * 1024)
        self.app.router.add_get("/health", self._health)
        self.app.router.add_get("/ready", self._ready)
        self.app.router.add_get("/metrics", self._metrics)
        self._runner: web.AppRunner | None = None
        # Parts that report their state in /ready (e.g. "sip": carrier registrations).
        self.ready_details: dict[str, Callable[[], Any]] = {}
        self._site: web.TCPSite | None = None
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

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "calls_active": self.switchboard.active_calls})

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
