"""The WebSocket media endpoints on the HTTP server, and the connections they hold."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from bridge.core.switchboard import Switchboard
from bridge.security.sources import SourceGate
from bridge.wsmedia.freeswitch import FreeSwitchEndpoint
from bridge.wsmedia.twilio import TwilioEndpoint
from bridge.wsmedia.ws_audio import WsAudioEndpoint

Endpoint = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WebSocketMediaServer:
    """Installs the WebSocket media endpoints on the HTTP server and tracks their connections."""

    def __init__(self, switchboard: Switchboard, gate: SourceGate | None = None) -> None:
        self.switchboard = switchboard
        self.ws_audio = WsAudioEndpoint(switchboard, gate)
        self.twilio = TwilioEndpoint(switchboard, gate)
        self.freeswitch = FreeSwitchEndpoint(switchboard, gate)
        self._connections: set[asyncio.Task[Any]] = set()

    def install(self, app: web.Application) -> None:
        app.router.add_get("/ws/audio/{sip_number}", self._tracked(self.ws_audio.serve))
        app.router.add_get("/ws/twilio", self._tracked(self.twilio.serve))
        app.router.add_get("/ws/freeswitch", self._tracked(self.freeswitch.serve))

    def _tracked(self, endpoint: Endpoint) -> Endpoint:
        async def serve(request: web.Request) -> web.StreamResponse:
            task = asyncio.current_task()
            assert task is not None
            self._connections.add(task)
            try:
                return await endpoint(request)
            finally:
                self._connections.discard(task)

        return serve

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def close(self) -> None:
        """Cancel connections still open (calls have been drained or ended by then)."""
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
