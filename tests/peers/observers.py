"""What watches a call from outside: a webhook receiver that checks signatures, and live-event
subscribers over Server-Sent Events and WebSocket. Real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from bridge.records.webhook import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.servers import serve_app


@dataclass
class Delivery:
    event: str
    delivery_id: str
    payload: dict[str, Any]
    signed: bool


@dataclass
class WebhookReceiver:
    """Accepts POSTs; a delivery whose signature does not verify is answered 401 and not kept."""

    secret: str
    deliveries: list[Delivery] = field(default_factory=list)
    rejected: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _serving: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    port: int = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.port = int(await self._serving.enter_async_context(serve_app(app)))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        signature = request.headers.get(SIGNATURE_HEADER, "")
        timestamp = int(request.headers.get(TIMESTAMP_HEADER, "0"))
        if not verify(self.secret, timestamp, body, signature):
            self.rejected += 1
            return web.Response(status=401)
        self.deliveries.append(Delivery(request.headers[EVENT_HEADER], request.headers[DELIVERY_HEADER],
                                        json.loads(body), True))
        self.arrived.set()
        return web.Response(status=204)

    async def wait_for(self, event: str, timeout: float = 20.0) -> Delivery:
        async with asyncio.timeout(timeout):
            while True:
                for d in self.deliveries:
                    if d.event == event:
                        return d
                self.arrived.clear()
                await self.arrived.wait()

    async def close(self) -> None:
        await self._serving.aclose()


class LiveSubscriber:
    """Reads ``GET /api/calls/live`` as Server-Sent Events (``websocket=False``) or a WebSocket."""

    def __init__(self, base_url: str, token: str, *, websocket: bool = False) -> None:
        self.base_url = base_url
        self.token = token
        self.websocket = websocket
        self.events: list[dict[str, Any]] = []
        self.status: int | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._run())
        await self.wait_for(lambda e: e["type"] == "snapshot")

    async def _run(self) -> None:
        assert self._session is not None
        url = f"{self.base_url}/api/calls/live"
        headers = {"Authorization": f"Bearer {self.token}"}
        if self.websocket:
            async with self._session.ws_connect(url, headers=headers) as ws:
                async for message in ws:
                    if message.type is aiohttp.WSMsgType.TEXT:
                        self._add(json.loads(message.data))
            return
        async with self._session.get(url, headers={**headers, "Accept": "text/event-stream"}) as resp:
            self.status = resp.status
            data: list[str] = []
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif not line and data:
                    self._add(json.loads("\n".join(data)))
                    data = []

    def _add(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_for(self, predicate: Any, timeout: float = 20.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                self._changed.clear()
                await self._changed.wait()

    def of_call(self, call_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("call_id") == call_id]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._session is not None:
            await self._session.close()
