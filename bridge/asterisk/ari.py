"""ARI client: REST requests over HTTP and the events WebSocket, with reconnect.

The request and event models are sans-I/O (``sip.ari``); this module only moves them. The events
WebSocket (``GET /ari/events?app=<name>``) is also what registers the Stasis application: while it
is connected, ``Stasis(<name>)`` in the dialplan reaches this daemon; when Asterisk restarts the
socket closes, the application disappears with it, and reconnecting registers it again. Reconnects
back off exponentially (``reconnect_min`` doubling up to ``reconnect_max``) and reset once a
connection has been up.

Credentials travel in an ``Authorization: Basic`` header (ARI accepts it on REST and on the
WebSocket upgrade), never in a URL that could end up in a log line.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from bridge.settings import AriSettings
from sip import ari

log = logging.getLogger(__name__)

EventSink = Callable[[ari.Event], None]
ConnectedHook = Callable[[], Awaitable[None] | None]
# Sees every request with its answer and every raw event (for recording transcripts, debugging).
Trace = Callable[[str, dict[str, Any]], None]

# A WebSocket ping every this many seconds notices a half-open connection to a vanished Asterisk.
HEARTBEAT_SECONDS = 10.0


class AriError(Exception):
    """An ARI request failed."""


class AriUnavailable(AriError):
    """Asterisk could not be reached (connection refused, reset, timed out)."""


class AriHttpError(AriError):
    """Asterisk answered with an HTTP error; ``message`` is ARI's ``{"message": ...}`` text."""

    def __init__(self, status: int, message: str, request: ari.AriRequest) -> None:
        super().__init__(f"{request.method} {request.path}: HTTP {status} {message}")
        self.status = status
        self.message = message
        self.request = request


def ari_base_url(url: str) -> str:
    """``http://host:8088`` or ``http://host:8088/ari`` -> ``http://host:8088/ari``."""
    base = url.rstrip("/")
    return base if base.endswith("/ari") else base + "/ari"


def media_base_url(settings: AriSettings) -> str:
    """Base of chan_websocket's ``/media/<connection id>`` endpoint on Asterisk's HTTP server."""
    if settings.media_url:
        return settings.media_url.rstrip("/")
    parts = urlsplit(settings.url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, "", "", "")).rstrip("/")


class AriClient:
    """REST requests and the events stream of one ARI application."""

    def __init__(self, settings: AriSettings, *, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.base_url = ari_base_url(settings.url)
        password = settings.password.get_secret_value() if settings.password is not None else ""
        self._headers = {"Authorization": aiohttp.encode_basic_auth(settings.username, password)}
        self._session: aiohttp.ClientSession | None = None
        self._rng = rng or random.Random()
        self.connected = asyncio.Event()
        self.connections = 0  # events WebSocket connections made so far (1 + reconnects)
        self.trace: Trace | None = None

    @property
    def host(self) -> str:
        """Asterisk's host name or address as configured in the URL."""
        return urlsplit(self.settings.url).hostname or "127.0.0.1"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.settings.request_timeout)
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=timeout)
        return self._session

    async def close(self) -> None:
        self.connected.clear()
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    # ----------------------------------------------------------------- REST
    async def request(self, req: ari.AriRequest) -> Any:
        """Send one request; returns the decoded JSON body (None for 204). Raises AriError."""
        url = self.base_url + req.path
        sent = time.monotonic()
        try:
            async with self._http().request(req.method, url, params=req.query, json=req.body) as response:
                text = await response.text()
                if self.trace is not None:
                    self.trace("request", {"method": req.method, "path": req.path, "query": req.query,
                                           "body": req.body, "status": response.status, "response": text,
                                           "elapsed": round(time.monotonic() - sent, 4)})
                if response.status >= 400:
                    raise AriHttpError(response.status, _error_message(text), req)
                if response.status == 204 or not text:
                    return None
                try:
                    return await response.json(content_type=None)
                except ValueError:
                    raise AriError(f"{req.method} {req.path}: response is not JSON") from None
        except aiohttp.ClientError as exc:
            raise AriUnavailable(f"{req.method} {req.path}: {type(exc).__name__}: {exc}") from None
        except TimeoutError:
            raise AriUnavailable(f"{req.method} {req.path}: no answer in "
                                 f"{self.settings.request_timeout:.1f} s") from None

    # ----------------------------------------------------------------- events
    async def run_events(self, on_event: EventSink, on_connected: ConnectedHook | None = None) -> None:
        """Hold the events WebSocket open for ever, reconnecting with backoff. Cancel to stop."""
        delay = self.settings.reconnect_min
        while True:
            try:
                await self._events_once(on_event, on_connected)
                # A clean close (Asterisk shutting down) is retried like a failure.
                log.warning("ARI events connection closed; reconnecting")
                delay = self.settings.reconnect_min
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("ARI events connection to %s failed: %s; retrying in %.1f s",
                            self.base_url, _describe(exc), delay)
            except AriHttpError as exc:
                log.error("ARI refused the events connection: %s; retrying in %.1f s", exc, delay)
            finally:
                self.connected.clear()
            # Full jitter keeps many instances from reconnecting in step after an Asterisk restart.
            await asyncio.sleep(delay * (0.5 + self._rng.random() / 2))
            delay = min(delay * 2, self.settings.reconnect_max)

    async def _events_once(self, on_event: EventSink, on_connected: ConnectedHook | None) -> None:
        url = self.base_url + "/events"
        params = {"app": self.settings.app, "subscribeAll": "false"}
        session = self._http()
        try:
            ws = await session.ws_connect(url, params=params, heartbeat=HEARTBEAT_SECONDS,
                                          timeout=aiohttp.ClientWSTimeout(ws_close=2.0))
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                raise AriHttpError(exc.status, "check the ari.conf user and password",
                                   ari.AriRequest("GET", "/events", params)) from None
            raise
        async with ws:
            self.connections += 1
            self.connected.set()
            log.info("ARI application %r registered at %s", self.settings.app, self.base_url)
            if on_connected is not None:
                result = on_connected()
                if inspect.isawaitable(result):
                    await result
            async for message in ws:
                if message.type is aiohttp.WSMsgType.TEXT:
                    if self.trace is not None:
                        self.trace("event", {"text": message.data})
                    event = ari.parse_event(message.data)
                    if isinstance(event, ari.InvalidMessage):
                        log.warning("ignoring ARI message: %s", event.reason)
                        continue
                    on_event(event)
                elif message.type is aiohttp.WSMsgType.ERROR:
                    raise OSError(f"events WebSocket error: {ws.exception()}")


def _error_message(text: str) -> str:
    import json

    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:200]
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])[:200]
    return text.strip()[:200]


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
