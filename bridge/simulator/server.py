"""The simulator's HTTP/WebSocket server and its timing log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import ssl
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from aiohttp import web

from bridge.simulator.audio import GREETINGS, greeting_samples
from bridge.simulator.connection import (
    _MAX_MESSAGE_BYTES,
    DEFAULT_MODEL,
    MAX_SESSION_SECONDS,
    REALTIME_PATHS,
    VOICE_LIVE_PATH,
    SimulatedConnection,
)
from bridge.simulator.conversation import SimulatedSession, random_tag
from media.codec import FRAME_MS
from sip.voicelive import API_VERSIONS

log = logging.getLogger(__name__)

Samples = npt.NDArray[np.int16]
Json = dict[str, Any]

class TimingLog:
    """The JSON-lines timing log (see the module docstring). Written from the event loop through a
    buffered file: a few lines per turn, flushed at close."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "w", encoding="utf-8", buffering=1 << 16)

    def write(self, event: str, session: str, at: float, /, **fields: Any) -> None:
        line = {"e": event, "s": session, "t": at, **fields}
        self._file.write(json.dumps(line, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._file.close()


# --------------------------------------------------------------------------- the server


class SimulatorServer:
    """The realtime-protocol server. ``await start()``, then point the SDK at ``url``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        pace: float = 1.0,
        api_key: str | None = None,
        delta_ms: int = 50,
        clock: Callable[[], float] = time.monotonic,
        max_session_seconds: float = MAX_SESSION_SECONDS,
        events_log: str | None = None,
        bearer_tokens: frozenset[str] | None = None,
        voicelive_models: frozenset[str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if pace <= 0:
            raise ValueError("pace must be positive")
        if delta_ms < FRAME_MS or delta_ms % 10:
            raise ValueError("delta_ms must be a multiple of 10 and at least 20")
        self.host = host
        self.port = port
        self.pace = pace
        self.delta_ms = delta_ms
        self.clock = clock
        self.max_session_seconds = max_session_seconds
        self._api_key = api_key
        self._ssl_context = ssl_context  # serve wss:// and https://
        # Microsoft Entra tokens accepted at the Voice Live path (None: any bearer token).
        self._bearer_tokens = bearer_tokens
        # Models the Voice Live path serves (None: any).
        self.voicelive_models = voicelive_models
        self.sessions: list[SimulatedSession] = []
        # Connections refused at the handshake or right after it, as (reason, path).
        self.rejections: list[tuple[str, str]] = []
        self._live: set[SimulatedConnection] = set()
        self._runner: web.AppRunner | None = None
        self._closed = False
        self._events_log = events_log
        self.timing_log: TimingLog | None = None

    @property
    def url(self) -> str:
        """The SDK's ``websocket_base_url`` for this server, e.g. ``ws://127.0.0.1:1234/v1``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "wss" if self._ssl_context is not None else "ws"
        return f"{scheme}://{host}:{self.port}/v1"

    @property
    def http_url(self) -> str:
        """The base URL for Voice Live's SDK (``AZURE_VOICELIVE_ENDPOINT``), e.g. ``http://127.0.0.1:1234``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        for language in GREETINGS:  # fail at start-up, not on a call, if the package data is missing
            greeting_samples(language)
        if self._events_log is not None:
            self.timing_log = TimingLog(self._events_log)
        app = web.Application()
        for path in REALTIME_PATHS:
            app.router.add_get(path, self._handle)
        app.router.add_get(VOICE_LIVE_PATH, self._handle_voice_live)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=self._ssl_context)
        await site.start()
        self._runner = runner
        address = runner.addresses[0]
        self.port = int(address[1])
        log.info("realtime simulator listening on %s", self.url)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._close_all(1001, "server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.timing_log is not None:
            self.timing_log.close()
            self.timing_log = None

    async def drop_all(self, code: int = 1011) -> None:
        """Close every live session with ``code`` (simulates the model service failing)."""
        await self._close_all(code, "The server had an error while processing your request.")

    async def _close_all(self, code: int, message: str) -> None:
        live = list(self._live)
        if live:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.gather(*(c.close(code, message) for c in live), return_exceptions=True)

    async def __aenter__(self) -> SimulatorServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _auth_error(self, request: web.Request) -> str | None:
        bearer = request.headers.get("Authorization", "")
        key = bearer[7:].strip() if bearer[:7].lower() == "bearer " else None
        api_key = request.headers.get("api-key")
        presented = [k for k in (key, api_key) if k]
        if not presented:
            return ("You didn't provide an API key. You need to provide your API key in an Authorization "
                    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
        if self._api_key is not None and not any(
            secrets.compare_digest(k.encode(), self._api_key.encode()) for k in presented
        ):
            return "Incorrect API key provided."
        return None

    def _voice_live_refusal(self, request: web.Request) -> tuple[int, str, str] | None:
        """Why Voice Live refuses this handshake: (HTTP status, code, message), or None."""
        key = request.headers.get("api-key") or request.query.get("api-key")
        bearer = request.headers.get("Authorization", "")
        token = bearer[7:].strip() if bearer[:7].lower() == "bearer " else None
        if not key and not token:
            return (401, "PermissionDenied", "Missing credentials: provide the 'api-key' header or an "
                                             "'Authorization: Bearer' Microsoft Entra token.")
        if key and self._api_key is not None and not secrets.compare_digest(key.encode(), self._api_key.encode()):
            return (401, "PermissionDenied", "Access denied due to invalid subscription key or wrong API "
                                             "endpoint. Make sure to provide a valid key for an active "
                                             "subscription and use a correct regional API endpoint for "
                                             "your resource.")
        if not key and self._bearer_tokens is not None and token not in self._bearer_tokens:
            return (401, "PermissionDenied", "The access token is invalid or has expired.")
        version = request.query.get("api-version")
        if not version:
            return (400, "MissingApiVersion", "The api-version query parameter is required.")
        if version not in API_VERSIONS:
            return (400, "UnsupportedApiVersion", f"The api-version '{version}' is not supported. "
                                                  f"Supported versions: {', '.join(API_VERSIONS)}.")
        model = request.query.get("model")
        agent = request.query.get("agent-name") or request.query.get("agent_id")
        if not model and not agent:
            return (400, "MissingModel", "The model query parameter is required.")
        if model and self.voicelive_models is not None and model not in self.voicelive_models:
            return (400, "ModelNotSupported", f"The model '{model}' is not supported by Voice Live. "
                                              f"Supported models: {', '.join(sorted(self.voicelive_models))}.")
        return None

    async def _handle_voice_live(self, request: web.Request) -> web.StreamResponse:
        refusal = self._voice_live_refusal(request)
        if refusal is not None:
            status, code, message = refusal
            self.rejections.append((code, request.path))
            return web.json_response({"error": {"code": code, "message": message}}, status=status)
        return await self._accept(request, voice_live=True)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        problem = self._auth_error(request)
        if problem is not None:
            self.rejections.append(("unauthorized", request.path))
            return web.json_response({"error": {"message": problem, "type": "invalid_request_error",
                                                "code": "invalid_api_key", "param": None}}, status=401)
        return await self._accept(request, voice_live=False)

    async def _accept(self, request: web.Request, *, voice_live: bool) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=_MAX_MESSAGE_BYTES, autoping=True)
        if not ws.can_prepare(request).ok:
            return web.json_response({"error": {"message": "Expected a WebSocket upgrade request.",
                                                "type": "invalid_request_error", "code": None,
                                                "param": None}}, status=426)
        try:
            await ws.prepare(request)
        except ConnectionResetError:
            # The client gave up during the handshake.
            self.rejections.append(("handshake_aborted", request.path))
            return ws
        if "realtime=v1" in request.headers.get("OpenAI-Beta", ""):
            self.rejections.append(("beta_api_shape_disabled", request.path))
            error = {"type": "invalid_request_error", "code": "beta_api_shape_disabled", "param": None,
                     "event_id": None,
                     "message": "The Realtime API beta shape is disabled; connect without the "
                                "'OpenAI-Beta: realtime=v1' header and use the GA event shapes."}
            await ws.send_str(json.dumps({"type": "error", "event_id": f"event_{random_tag()}",
                                          "error": error}))
            await ws.close(code=4000, message=b"beta_api_shape_disabled")
            return ws
        model = request.query.get("model") or request.query.get("deployment") or DEFAULT_MODEL
        record = SimulatedSession(id=f"sess_{random_tag(20)}", model=model, path=request.path,
                                  opened_at=self.clock())
        record.query = dict(request.query)
        record.header_names = tuple(sorted({h.lower() for h in request.headers}))
        if request.headers.get("api-key"):
            record.auth, record.credential = "api-key", request.headers["api-key"]
        elif request.headers.get("Authorization"):
            record.auth, record.credential = "bearer", request.headers["Authorization"][7:].strip()
        elif request.query.get("api-key"):
            record.auth, record.credential = "query", request.query["api-key"]
        self.sessions.append(record)
        conn = SimulatedConnection(self, ws, record, voice_live=voice_live)
        self._live.add(conn)
        if self.timing_log is not None:
            self.timing_log.write("open", record.id, record.opened_at)
        log.debug("simulated session %s opened (model %s)", record.id, model)
        try:
            await conn.run()
        except Exception:
            # The connection boundary: a bug in one session closes that session only.
            log.error("simulated session %s failed", record.id, exc_info=True)
            await ws.close(code=1011, message=b"internal error")
        finally:
            self._live.discard(conn)
            record.closed_at = self.clock()
            if self.timing_log is not None:
                self.timing_log.write("close", record.id, record.closed_at)
            if record.close_code is None:
                record.close_code = ws.close_code
            log.debug("simulated session %s closed (%s)", record.id, ws.close_code)
        return ws
