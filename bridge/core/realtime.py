"""The model leg: one realtime session per call, through the official ``openai`` SDK.

The SDK owns the WebSocket handshake, authentication and URL building (it honours
``OPENAI_BASE_URL`` and ``websocket_base_url``). Frames are sent and received raw
(``send_raw`` / ``recv_bytes``): the audio path runs 50 times a second per direction per call and
does not need a pydantic model per frame. Unknown server events pass through untouched.

Audio appends, 50 a second per call, are written to the SDK's underlying ``websockets`` connection
directly. The SDK's own ``send_raw`` first offers each frame to a queue that exists for its
reconnection feature; sessions here never reconnect (no ``on_reconnecting`` handler, so that queue
is always empty and the frame goes on to the same ``send``), and the detour cost as much CPU as
the send itself. When an SDK release no longer exposes the connection this way, ``send_raw`` is used.

An append the connection can take at once (``send_audio_now``) skips the ``websockets`` frame
machinery as well: ``media._native.masked_text_frame`` builds the whole masked frame from the audio
in one call, with a masking key cut from ``os.urandom`` drawn 4 kB at a time (RFC 6455 5.3 asks for
unpredictable keys, not for a system call per frame), and it goes to the transport directly. That
is only done while nothing of the library's own is waiting to be written and no extension was
negotiated (the SDK turns compression off), so the bytes on the wire are what the library would
have sent, in the same order.

One ``AsyncOpenAI`` client serves every call of an endpoint. Building one builds an HTTP client
and loads the CA bundle into a TLS context, 100-200 ms of CPU on the event loop: per call, that
stalled every other call's audio at each call set-up. The client holds no per-call state.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import anyio
from openai import AsyncOpenAI
from websockets.protocol import Side as _WsSide
from websockets.protocol import State as _WsState

from bridge.core.voicelive import VoiceLiveCredential, VoiceLiveSession
from bridge.settings import ModelProvider, Settings
from sip import realtime as rt
from sip import voicelive as vl

log = logging.getLogger(__name__)

_OPEN = _WsState.OPEN


def _native_frame_builder() -> Callable[[bytes, bytes | bytearray, bytes, bytes], bytes] | None:
    try:
        from media._native import masked_text_frame
    except ImportError:  # installed without a C compiler: the library frames each append
        return None
    return masked_text_frame


_MASKED_TEXT_FRAME = _native_frame_builder()
_KEY_POOL_BYTES = 4096


class MaskingKeys:
    """Four-byte WebSocket masking keys cut from ``os.urandom`` drawn in bulk."""

    __slots__ = ("_next", "_pool")

    def __init__(self) -> None:
        self._pool = b""
        self._next = 0

    def take(self) -> bytes:
        i = self._next
        if i + 4 > len(self._pool):
            self._pool = os.urandom(_KEY_POOL_BYTES)
            i = 0
        self._next = i + 4
        return self._pool[i : i + 4]


class ModelError(Exception):
    """The model session failed (connect, protocol or remote error)."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind  # small fixed set: connect, closed, session_limit, stalled, protocol, error


class _SharedClient:
    """The endpoint's ``AsyncOpenAI`` client, built on first use and shared by its model variants."""

    __slots__ = ("building", "client")

    def __init__(self) -> None:
        self.client: AsyncOpenAI | None = None
        self.building: asyncio.Future[AsyncOpenAI] | None = None


@dataclass(frozen=True, slots=True)
class ModelEndpoint:
    """Where and how to reach a realtime model (one per provider, shared by calls)."""

    provider: ModelProvider
    model: str
    api_key: str
    websocket_base_url: str | None = None
    base_url: str | None = None
    dialect: rt.Dialect = rt.Dialect.GA
    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    connect_timeout: float = 10.0
    _shared: _SharedClient = field(default_factory=_SharedClient, compare=False, repr=False)
    # Azure Voice Live (reached through its own SDK, not the OpenAI client).
    voicelive: vl.VoiceLiveEndpoint | None = None
    credential: VoiceLiveCredential | None = field(default=None, compare=False, repr=False)
    api_version: str | None = None

    def with_model(self, model: str | None) -> ModelEndpoint:
        if not model or model == self.model:
            return self
        return replace(self, model=model)

    @property
    def where(self) -> str:
        """Where sessions go, for messages (no secrets)."""
        if self.voicelive is not None:
            return self.voicelive.realtime_url
        return self.websocket_base_url or self.base_url or "wss://api.openai.com/v1"

    def with_query(self, **query: str) -> ModelEndpoint:
        """The same endpoint with more query parameters on the session URL."""
        return ModelEndpoint(
            self.provider, self.model, self.api_key, self.websocket_base_url, self.base_url,
            self.dialect, self.headers, {**self.query, **query}, self.connect_timeout, self._shared,
        )

    async def ready_client(self) -> AsyncOpenAI:
        """The shared client, built once in a worker thread: building it loads the TLS trust store
        (100-200 ms of CPU), which on the loop would stall the pacers of every call in progress."""
        shared = self._shared
        if shared.client is not None:
            return shared.client
        if shared.building is None:
            shared.building = asyncio.ensure_future(asyncio.to_thread(self._build))
        client = await asyncio.shield(shared.building)
        if shared.client is None:
            shared.client = client
        return shared.client

    async def warm_up(self) -> None:
        """Build the shared client and import what a realtime connection needs, in a worker
        thread, so that the first call's set-up does not stall the loop (about half a second of
        imports and TLS set-up on a cold process)."""
        if self.voicelive is not None:
            await asyncio.to_thread(_import_voicelive_modules)
            return
        client = await self.ready_client()
        await asyncio.to_thread(_import_connection_modules, client)
        # The SDK's send asks anyio for the current task, which imports anyio's backend for the
        # running loop the first time.
        anyio.get_current_task()

    def _build(self) -> AsyncOpenAI:
        return AsyncOpenAI(
            api_key=self.api_key,
            base_url=self.base_url,
            websocket_base_url=self.websocket_base_url,
            max_retries=0,
        )

    async def close(self) -> None:
        """Release the shared client (at shutdown, once no session uses it)."""
        client, self._shared.client = self._shared.client, None
        self._shared.building = None
        if client is not None:
            await client.close()
        if self.credential is not None:
            await self.credential.close()


def endpoint_from_settings(
    settings: Settings,
    simulator_url: str | None = None,
    provider: ModelProvider | None = None,
) -> ModelEndpoint:
    """The endpoint of ``provider`` (default: the deployment's provider) from the settings."""
    m = settings.model
    if provider is None or provider is ModelProvider.AUTO:
        provider = settings.resolved_provider
    timeout = m.connect_timeout
    if provider is ModelProvider.SIMULATOR:
        if simulator_url is None:
            raise ValueError("the simulator provider needs the simulator's URL")
        if m.simulator_dialect == "voicelive":
            # Its Voice Live endpoint, through the Voice Live SDK: ws://host:port/v1 -> http://host:port
            base = simulator_url.replace("ws://", "http://", 1).removesuffix("/v1")
            return ModelEndpoint(provider, m.voicelive_model, "", dialect=rt.Dialect.BETA,
                                 connect_timeout=timeout, voicelive=vl.parse_endpoint(base),
                                 credential=VoiceLiveCredential("simulator"),
                                 api_version=m.voicelive_api_version)
        return ModelEndpoint(provider, m.model, "simulator", websocket_base_url=simulator_url,
                             connect_timeout=timeout)
    if provider is ModelProvider.OPENAI:
        if m.api_key is None:
            raise ValueError("the openai provider needs model.api_key (OPENAI_API_KEY)")
        return ModelEndpoint(provider, m.model, m.api_key.get_secret_value(),
                             websocket_base_url=m.websocket_base_url, base_url=m.base_url,
                             connect_timeout=timeout)
    if provider is ModelProvider.AZURE_OPENAI:
        # Azure's v1 surface speaks the GA protocol: wss://<resource>.openai.azure.com/openai/v1
        if not m.azure_endpoint or m.azure_api_key is None:
            raise ValueError("azure_openai needs model.azure_endpoint and model.azure_api_key")
        base = m.azure_endpoint.rstrip("/").replace("https://", "wss://").replace("http://", "ws://")
        if not base.endswith("/openai/v1"):
            base += "/openai/v1"
        key = m.azure_api_key.get_secret_value()
        return ModelEndpoint(provider, m.azure_deployment or m.model, key, websocket_base_url=base,
                             headers={"api-key": key}, connect_timeout=timeout)
    # Azure Voice Live, through its SDK: <endpoint>/voice-live/realtime?api-version=...&model=...
    if not m.voicelive_endpoint:
        raise ValueError("azure_voicelive needs model.voicelive_endpoint (AZURE_VOICELIVE_ENDPOINT)")
    target = vl.parse_endpoint(m.voicelive_endpoint)
    vl_key = m.voicelive_api_key.get_secret_value() if m.voicelive_api_key is not None else None
    if vl_key is None and not target.entra_id:
        raise ValueError(f"the regional endpoint {target.url} takes an API key only "
                         "(AZURE_VOICELIVE_API_KEY); Microsoft Entra ID needs the resource's own "
                         "https://<resource>.cognitiveservices.azure.com endpoint")
    return ModelEndpoint(provider, m.voicelive_model, "", dialect=rt.Dialect.BETA,
                         connect_timeout=timeout, voicelive=target, credential=VoiceLiveCredential(vl_key),
                         api_version=m.voicelive_api_version)


class ModelSession(Protocol):
    """A connected model session, whichever SDK carries it."""

    dialect: rt.Dialect

    async def send(self, event: dict[str, Any]) -> None: ...

    async def send_raw(self, data: str) -> None: ...

    async def send_audio(self, audio: bytes | bytearray) -> None: ...

    def send_audio_now(self, audio: bytes | bytearray) -> bool: ...

    def events(self) -> AsyncIterator[dict[str, Any]]: ...

    async def close(self) -> None: ...


async def open_session(endpoint: ModelEndpoint) -> ModelSession:
    """Connect a model session on ``endpoint``: Voice Live through its SDK, the rest through
    the ``openai`` SDK. Raises ModelError."""
    if endpoint.voicelive is not None:
        return await VoiceLiveSession.connect(endpoint)
    return await RealtimeSession.connect(endpoint)


def _import_voicelive_modules() -> None:
    for module in ("azure.ai.voicelive.aio", "azure.core.credentials", "aiohttp"):
        importlib.import_module(module)


def _import_connection_modules(client: AsyncOpenAI) -> None:
    # What the SDK imports on its first connect.
    for module in ("websockets.asyncio.client", "websockets.exceptions", "openai.lib._websocket"):
        importlib.import_module(module)
    _ = client.realtime  # the SDK's realtime resource modules load on first access


def _socket(connection: Any) -> Any:
    """The ``websockets`` asyncio connection under an SDK realtime connection, when it is one whose
    ``send`` can be called directly and whose state can be read for the immediate send
    (``protocol``, ``send_data``, flow control); None otherwise."""
    socket = getattr(connection, "_connection", None)
    protocol = getattr(socket, "protocol", None)
    if (
        protocol is None
        or not asyncio.iscoroutinefunction(getattr(socket, "send", None))
        or not callable(getattr(protocol, "send_text", None))
        or not callable(getattr(socket, "send_data", None))
        or not hasattr(socket, "paused")
        or not hasattr(socket, "fragmented_send_waiter")
    ):
        return None
    return socket


def _frames_directly(socket: Any) -> bool:
    """Whether appends on ``socket`` can be framed here and written to its transport: the compiled
    builder is there, this is the client side, no extension was negotiated, and the library's
    pending writes and transport can be seen."""
    protocol = socket.protocol
    return (
        _MASKED_TEXT_FRAME is not None
        and getattr(protocol, "side", None) is _WsSide.CLIENT
        and getattr(protocol, "extensions", None) == []
        and isinstance(getattr(protocol, "writes", None), list)
        and getattr(protocol, "expect_continuation_frame", None) is False
        and callable(getattr(getattr(socket, "transport", None), "write", None))
    )


def _append_message(audio: bytes | bytearray) -> str:
    return rt.append_audio_json(base64.b64encode(audio).decode("ascii"))


class RealtimeSession:
    """A connected realtime-model session. Create with ``await RealtimeSession.connect(...)``."""

    def __init__(self, manager: Any, connection: Any, dialect: rt.Dialect) -> None:
        self._manager = manager
        self._conn = connection
        self.dialect = dialect
        self._closed = False
        self._socket = _socket(connection)
        self._keys = MaskingKeys() if self._socket is not None and _frames_directly(self._socket) else None
        self._send_text: Callable[[str], Awaitable[Any]] = (
            self._socket.send if self._socket is not None else connection.send_raw
        )

    @classmethod
    async def connect(cls, endpoint: ModelEndpoint) -> RealtimeSession:
        client = await endpoint.ready_client()
        manager = client.realtime.connect(
            model=endpoint.model,
            extra_headers=endpoint.headers,
            extra_query=endpoint.query,
        )
        try:
            async with asyncio.timeout(endpoint.connect_timeout):
                connection = await manager.__aenter__()
        except TimeoutError:
            raise ModelError("timed out connecting to the model", "connect") from None
        except Exception as exc:  # the SDK raises websockets/httpx/OSError variants
            raise ModelError(f"cannot connect to the model: {type(exc).__name__}: {exc}", "connect") from exc
        return cls(manager, connection, endpoint.dialect)

    async def send(self, event: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(event, separators=(",", ":")))

    async def send_audio(self, audio: bytes | bytearray) -> None:
        """Append audio, already in the session's input format, to the model's input buffer."""
        await self._send(self._send_text, _append_message(audio))

    def send_audio_now(self, audio: bytes | bytearray) -> bool:
        """Append audio without yielding, when the connection can take the frame at once: open, no
        fragmented message under way, the transport not paused by flow control. Returns False
        (nothing sent) otherwise; the caller then queues the audio for ``send_audio``, which waits.

        This is what ``send`` does before it would wait, minus the task switch and the context
        manager around it: 50 times a second per call, those cost more than the frame.
        """
        ws = self._socket
        if ws is None or ws.paused or ws.fragmented_send_waiter is not None:
            return False
        protocol = ws.protocol
        if protocol.state is not _OPEN:
            return False
        keys = self._keys
        try:
            if keys is not None and not protocol.writes and not protocol.expect_continuation_frame:
                assert _MASKED_TEXT_FRAME is not None
                ws.transport.write(_MASKED_TEXT_FRAME(rt.APPEND_HEAD, audio, rt.APPEND_TAIL, keys.take()))
            else:
                protocol.send_text(rt.append_audio_message(audio))
                ws.send_data()
        except Exception as exc:  # the transport failed under the write: end the connection
            log.debug("immediate send failed: %s", type(exc).__name__)
            ws.transport.abort()
        return True

    async def send_raw(self, data: str) -> None:
        await self._send(self._conn.send_raw, data)

    async def _send(self, send: Callable[[str], Awaitable[Any]], data: str) -> None:
        try:
            await send(data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if getattr(getattr(exc, "rcvd", None), "code", None) == 1001:
                # The provider's session limit, seen by a send before the receiver read the close.
                raise ModelError("model session closed by the provider (1001, session limit)",
                                 "session_limit") from exc
            raise ModelError(f"model connection lost while sending: {type(exc).__name__}", "closed") from exc

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Server events as dicts with GA type names; ends when the model closes normally."""
        while True:
            try:
                raw = await self._conn.recv_bytes()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closed:
                    return
                code = getattr(getattr(exc, "rcvd", None), "code", None)
                if code == 1000:
                    return
                if code == 1001:
                    # "Going away": how providers end a session at their duration limit
                    # ("Your session hit the maximum duration of 60 minutes.").
                    raise ModelError("model session closed by the provider (1001, session limit)",
                                     "session_limit") from exc
                raise ModelError(f"model connection closed: {type(exc).__name__} {code or ''}".strip(),
                                 "closed") from exc
            yield decode_event(raw, "model", normalize=self.dialect is rt.Dialect.BETA)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            async with asyncio.timeout(2.0):
                await self._conn.close()
        except (TimeoutError, Exception) as exc:  # closing a dead socket: nothing more to do
            log.debug("model session close: %s", type(exc).__name__)


def decode_event(raw: str | bytes, source: str, *, normalize: bool) -> dict[str, Any]:
    """One server event from its frame; ``normalize`` maps beta-era event names to the GA ones."""
    try:
        event = json.loads(raw)
    except ValueError:
        raise ModelError(f"{source} sent a frame that is not JSON", "protocol") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ModelError(f"{source} sent an event without a type", "protocol")
    if normalize:
        event["type"] = rt.normalize_event_type(event["type"])
    return event
