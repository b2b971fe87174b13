"""The model leg on Azure Voice Live, through Microsoft's SDK for it (``azure-ai-voicelive``).

The SDK opens ``<endpoint>/voice-live/realtime?api-version=...&model=...`` over aiohttp and
authenticates with either credential it takes: an ``AzureKeyCredential`` (sent as the ``api-key``
header, nothing else) or a token credential, asked for a token of the Cognitive Services scope at
each connection (``DefaultAzureCredential``: managed identity, workload identity, environment
service principal, the Azure CLI's login ...). Events are sent as dicts and read as raw frames,
so unknown server events pass through and no typed model is built per audio frame; Voice Live's
beta-era event names are mapped onto the GA ones the call logic uses (``sip.realtime``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from sip import realtime as rt
from sip import voicelive as vl

if TYPE_CHECKING:
    from azure.ai.voicelive.aio import VoiceLiveConnection

    from bridge.core.realtime import ModelEndpoint

log = logging.getLogger(__name__)


class VoiceLiveCredential:
    """The credential of a Voice Live endpoint: the key when one is configured, otherwise
    ``DefaultAzureCredential`` (built once, shared by every call, so its token cache is)."""

    def __init__(self, api_key: str | None) -> None:
        self.api_key = api_key
        self._token_credential: Any = None

    @property
    def kind(self) -> str:
        return "api-key" if self.api_key else "entra-id"

    def get(self) -> Any:
        if self.api_key:
            from azure.core.credentials import AzureKeyCredential

            return AzureKeyCredential(self.api_key)
        if self._token_credential is None:
            from azure.identity.aio import DefaultAzureCredential

            self._token_credential = DefaultAzureCredential()
        return self._token_credential

    async def close(self) -> None:
        credential, self._token_credential = self._token_credential, None
        if credential is not None:
            await credential.close()


class VoiceLiveSession:
    """A connected Voice Live session; the same surface as ``RealtimeSession``."""

    dialect = rt.Dialect.BETA

    def __init__(self, manager: Any, connection: VoiceLiveConnection) -> None:
        self._manager = manager
        self._conn = connection
        self._closed = False

    @classmethod
    async def connect(cls, endpoint: ModelEndpoint) -> VoiceLiveSession:
        from azure.ai.voicelive.aio import WebsocketConnectionOptions, connect

        from bridge.core.realtime import ModelError

        assert endpoint.voicelive is not None and endpoint.credential is not None
        try:
            credential = endpoint.credential.get()
        except Exception as exc:
            raise ModelError(f"no Azure credential: {type(exc).__name__}: {exc}", "connect") from exc
        manager = connect(
            endpoint=endpoint.voicelive.url,
            credential=credential,
            model=endpoint.model,
            api_version=endpoint.api_version or vl.API_VERSIONS[1],
            credential_scopes=vl.COGNITIVE_SERVICES_SCOPE,
            connection_options=WebsocketConnectionOptions(heartbeat=30.0, max_msg_size=16 * 1024 * 1024),
        )
        try:
            async with asyncio.timeout(endpoint.connect_timeout):
                connection = await manager.__aenter__()
        except TimeoutError:
            raise ModelError("timed out connecting to Voice Live", "connect") from None
        except Exception as exc:  # the SDK's ConnectionError, azure-identity's auth errors, OSError
            raise ModelError(f"cannot connect to Voice Live: {_reason(exc)}", "connect") from exc
        return cls(manager, connection)

    def send_audio_now(self, audio: bytes | bytearray) -> bool:
        return False  # every append goes through the SDK's send, from the call's sender task

    async def send(self, event: dict[str, Any]) -> None:
        await self._send(event)

    async def send_raw(self, data: str) -> None:
        await self._send(json.loads(data))

    async def send_audio(self, audio: bytes | bytearray) -> None:
        await self._send({"type": "input_audio_buffer.append",
                          "audio": base64.b64encode(audio).decode("ascii")})

    async def _send(self, event: dict[str, Any]) -> None:
        from bridge.core.realtime import ModelError

        try:
            await self._conn.send(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise ModelError(f"Voice Live connection lost while sending: {type(exc).__name__}",
                             "closed") from exc

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Server events as dicts with GA type names; ends when the service closes normally."""
        from azure.ai.voicelive.aio import ConnectionClosed

        from bridge.core.realtime import ModelError, decode_event

        while True:
            try:
                raw = await self._conn.recv_bytes()
            except asyncio.CancelledError:
                raise
            except ConnectionClosed as exc:
                if self._closed or exc.code == 1000:
                    return
                raise ModelError(f"Voice Live closed the session: {exc.code} {exc.reason}".strip(),
                                 "closed") from exc
            except Exception as exc:
                if self._closed:
                    return
                raise ModelError(f"Voice Live connection failed: {type(exc).__name__}", "closed") from exc
            if not raw:
                continue
            yield decode_event(raw, "Voice Live", normalize=True)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            async with asyncio.timeout(2.0):
                await self._conn.close()
        except (TimeoutError, Exception) as exc:  # closing a dead socket: nothing more to do
            log.debug("voice live session close: %s", type(exc).__name__)


def _reason(exc: BaseException) -> str:
    """One line naming what failed; HTTP statuses kept (they tell auth from model problems)."""
    text = str(exc).replace("\n", " ")
    cause = exc.__cause__
    status = getattr(cause, "status", None)
    if isinstance(status, int):
        return f"HTTP {status} ({type(cause).__name__})"
    return f"{type(exc).__name__}: {text[:300]}"


async def explain_refusal(endpoint: ModelEndpoint, timeout: float = 5.0) -> str | None:
    """Why Voice Live refuses sessions on ``endpoint``, in one line naming the cause
    (authentication, api-version or model), from the body of the service's answer to a plain
    GET of the realtime URL with the same credentials; None when it gives no reason."""
    import aiohttp

    assert endpoint.voicelive is not None and endpoint.credential is not None
    url = endpoint.voicelive.realtime_url.replace("wss://", "https://", 1).replace("ws://", "http://", 1)
    params = {"api-version": endpoint.api_version or vl.API_VERSIONS[1], "model": endpoint.model}
    credential = endpoint.credential.get()
    if endpoint.credential.api_key:
        headers = {"api-key": endpoint.credential.api_key}
    else:
        try:
            token = await credential.get_token(vl.COGNITIVE_SERVICES_SCOPE)
        except Exception as exc:  # azure-identity: no credential source worked
            return f"authentication: no Microsoft Entra token: {str(exc).splitlines()[0][:200]}"
        headers = {"Authorization": f"Bearer {token.token}"}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http, \
                http.get(url, params=params, headers=headers) as response:
            status = response.status
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = None
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"unreachable: {type(exc).__name__}: {exc}"
    error = body.get("error") if isinstance(body, dict) else None
    code = str(error.get("code") or "") if isinstance(error, dict) else ""
    message = str(error.get("message") or "") if isinstance(error, dict) else ""
    message = " ".join(message.split())[:300]
    if status in (401, 403):
        how = "api-key" if endpoint.credential.api_key else "Microsoft Entra token"
        return f"authentication ({how}) refused, HTTP {status}: {message or code}"
    lowered = (code + " " + message).lower()
    if "version" in lowered:
        return f"api-version {params['api-version']!r} refused, HTTP {status}: {message or code}"
    if "model" in lowered or "deployment" in lowered:
        return f"model {endpoint.model!r} refused, HTTP {status}: {message or code}"
    if status == 404:
        return f"no Voice Live endpoint at {url} (HTTP 404): check AZURE_VOICELIVE_ENDPOINT"
    return None
