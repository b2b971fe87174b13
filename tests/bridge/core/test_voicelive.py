"""The Voice Live model leg through Microsoft's SDK (azure-ai-voicelive) against the simulator's
Voice Live endpoint: endpoint forms, key and Microsoft Entra ID authentication, refusals."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from bridge.cli.check import CheckFailed, check_model
from bridge.core.realtime import ModelError, endpoint_from_settings, open_session
from bridge.settings import ModelProvider, load_settings
from bridge.simulator import SimulatorServer
from sip import realtime as rt
from sip import voicelive as vl
from tenants.config import parse_tenant

pytestmark = pytest.mark.timeout(60)

KEY = "vl-test-key"


@pytest.fixture
async def simulator() -> AsyncIterator[SimulatorServer]:
    models = frozenset({"gpt-realtime", "gpt-4o-mini-realtime-preview"})
    async with SimulatorServer(api_key=KEY, pace=8.0, voicelive_models=models) as sim:
        yield sim


def _settings(endpoint: str, key: str | None = KEY, **model: Any) -> Any:
    environ = {"AZURE_VOICELIVE_ENDPOINT": endpoint}
    if key is not None:
        environ["AZURE_VOICELIVE_API_KEY"] = key
    return load_settings(env_file=None, environ=environ, model=model) if model else \
        load_settings(env_file=None, environ=environ)


@pytest.mark.parametrize(("configured", "url", "realtime", "form", "entra"), [
    ("https://contoso.services.ai.azure.com", "https://contoso.services.ai.azure.com",
     "wss://contoso.services.ai.azure.com/voice-live/realtime", vl.EndpointForm.FOUNDRY, True),
    ("https://contoso.services.ai.azure.com/", "https://contoso.services.ai.azure.com",
     "wss://contoso.services.ai.azure.com/voice-live/realtime", vl.EndpointForm.FOUNDRY, True),
    ("https://swedencentral.api.cognitive.microsoft.com", "https://swedencentral.api.cognitive.microsoft.com",
     "wss://swedencentral.api.cognitive.microsoft.com/voice-live/realtime", vl.EndpointForm.REGIONAL, False),
    ("https://contoso.cognitiveservices.azure.com", "https://contoso.cognitiveservices.azure.com",
     "wss://contoso.cognitiveservices.azure.com/voice-live/realtime", vl.EndpointForm.COGNITIVE_SERVICES, True),
    # Existing .env files carry the Azure OpenAI host of the same resource.
    ("https://contoso.openai.azure.com/", "https://contoso.cognitiveservices.azure.com",
     "wss://contoso.cognitiveservices.azure.com/voice-live/realtime", vl.EndpointForm.AZURE_OPENAI, True),
    # A realtime URL pasted whole, and a bare host name.
    ("wss://contoso.services.ai.azure.com/voice-live/realtime", "https://contoso.services.ai.azure.com",
     "wss://contoso.services.ai.azure.com/voice-live/realtime", vl.EndpointForm.FOUNDRY, True),
    ("contoso.cognitiveservices.azure.com", "https://contoso.cognitiveservices.azure.com",
     "wss://contoso.cognitiveservices.azure.com/voice-live/realtime", vl.EndpointForm.COGNITIVE_SERVICES, True),
    ("http://127.0.0.1:8080/gateway", "http://127.0.0.1:8080/gateway",
     "ws://127.0.0.1:8080/gateway/voice-live/realtime", vl.EndpointForm.OTHER, True),
])
def test_endpoint_forms(configured, url, realtime, form, entra) -> None:
    endpoint = endpoint_from_settings(_settings(configured))
    assert endpoint.provider is ModelProvider.AZURE_VOICELIVE
    assert endpoint.voicelive is not None
    assert (endpoint.voicelive.url, endpoint.voicelive.realtime_url) == (url, realtime)
    assert endpoint.voicelive.form is form and endpoint.voicelive.entra_id is entra
    assert endpoint.dialect is rt.Dialect.BETA and endpoint.api_version == "2025-10-01"


def test_regional_endpoint_without_key_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match=r"regional endpoint .* API key only"):
        endpoint_from_settings(_settings("https://westus2.api.cognitive.microsoft.com", key=None))


def test_an_endpoint_without_key_is_voice_live_with_entra_id() -> None:
    settings = _settings("https://contoso.services.ai.azure.com", key=None)
    assert settings.resolved_provider is ModelProvider.AZURE_VOICELIVE
    endpoint = endpoint_from_settings(settings)
    assert endpoint.credential is not None and endpoint.credential.kind == "entra-id"


async def _configure(session: Any) -> dict[str, Any]:
    tenant = parse_tenant({"tenant_id": "t", "slug": "t", "voice": "pt-BR-FranciscaNeural"})
    await session.send(rt.session_update(tenant, model="gpt-realtime", dialect=session.dialect))
    async for event in session.events():
        if event["type"] in ("session.updated", "error"):
            return event
    raise AssertionError("session closed before session.updated")


async def test_key_auth_sends_the_api_key_header_and_nothing_else(simulator: SimulatorServer) -> None:
    endpoint = endpoint_from_settings(_settings(simulator.http_url))
    session = await open_session(endpoint)
    try:
        updated = await _configure(session)
    finally:
        await session.close()
        await endpoint.close()
    assert updated["type"] == "session.updated"
    assert updated["session"]["voice"] == {"type": "azure-standard", "name": "pt-BR-FranciscaNeural"}
    record = simulator.sessions[-1]
    assert record.path == "/voice-live/realtime"
    assert record.query["api-version"] == "2025-10-01" and record.query["model"] == "gpt-realtime"
    assert (record.auth, record.credential) == ("api-key", KEY)
    assert "authorization" not in record.header_names and "api-key" not in record.query


async def test_wrong_key_fails_the_connect_with_the_status(simulator: SimulatorServer) -> None:
    endpoint = endpoint_from_settings(_settings(simulator.http_url, key="wrong"))
    with pytest.raises(ModelError) as info:
        await open_session(endpoint)
    await endpoint.close()
    assert info.value.kind == "connect" and "HTTP 401" in str(info.value)
    assert "wrong" not in str(info.value)
    assert simulator.rejections[-1] == ("PermissionDenied", "/voice-live/realtime")


class TokenEndpoint:
    """A managed-identity token endpoint of the App Service kind (IDENTITY_ENDPOINT +
    IDENTITY_HEADER), the way azure-identity's ManagedIdentityCredential reads one."""

    def __init__(self, token: str, secret: str) -> None:
        self.token = token
        self.secret = secret
        self.requests: list[dict[str, str]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _issue(self, request: web.Request) -> web.Response:
        self.requests.append({**request.query, "header": request.headers.get("X-IDENTITY-HEADER", "")})
        if request.headers.get("X-IDENTITY-HEADER") != self.secret:
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({"access_token": self.token, "expires_on": str(int(time.time()) + 3600),
                                  "resource": request.query.get("resource"), "token_type": "Bearer"})

    async def __aenter__(self) -> TokenEndpoint:
        app = web.Application()
        app.router.add_get("/msi/token", self._issue)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/msi/token"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.fixture
def identity_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    # Only the managed identity may answer: no service principal, workload identity or CLI login.
    for name in ("AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_CLIENT_CERTIFICATE_PATH",
                 "AZURE_USERNAME", "AZURE_FEDERATED_TOKEN_FILE", "MSI_ENDPOINT", "MSI_SECRET",
                 "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


async def test_entra_id_token_from_the_managed_identity_endpoint(identity_env: pytest.MonkeyPatch) -> None:
    token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.test-entra-token."
    async with TokenEndpoint(token, "identity-secret") as issuer, \
            SimulatorServer(api_key=KEY, pace=8.0, bearer_tokens=frozenset({token})) as sim:
        identity_env.setenv("IDENTITY_ENDPOINT", issuer.url)
        identity_env.setenv("IDENTITY_HEADER", "identity-secret")
        endpoint = endpoint_from_settings(_settings(sim.http_url, key=None))
        session = await open_session(endpoint)
        try:
            updated = await _configure(session)
        finally:
            await session.close()
            await endpoint.close()
    assert updated["type"] == "session.updated"
    # The token was asked for the Cognitive Services resource, with the identity header.
    assert issuer.requests[0]["resource"] == "https://cognitiveservices.azure.com"
    assert issuer.requests[0]["header"] == "identity-secret"
    record = sim.sessions[-1]
    assert (record.auth, record.credential) == ("bearer", token)
    assert "api-key" not in record.header_names and "api-key" not in record.query


async def test_entra_token_the_service_refuses(identity_env: pytest.MonkeyPatch) -> None:
    async with TokenEndpoint("stale-token", "s") as issuer, \
            SimulatorServer(pace=8.0, bearer_tokens=frozenset({"another-token"})) as sim:
        identity_env.setenv("IDENTITY_ENDPOINT", issuer.url)
        identity_env.setenv("IDENTITY_HEADER", "s")
        settings = _settings(sim.http_url, key=None)
        with pytest.raises(CheckFailed) as info:
            await check_model(settings)
    line = str(info.value)
    assert "\n" not in line
    assert "authentication (Microsoft Entra token) refused, HTTP 401" in line
    assert "stale-token" not in line


async def test_check_reaches_voice_live_and_names_the_endpoint(simulator: SimulatorServer) -> None:
    detail = await check_model(_settings(simulator.http_url))
    assert detail.startswith("azure_voicelive: session opened with model 'gpt-realtime' at "
                             f"ws://127.0.0.1:{simulator.port}/voice-live/realtime (api-key, api-version 2025-10-01)")


@pytest.mark.parametrize(("model", "environ", "expected"), [
    ({}, {"AZURE_VOICELIVE_API_KEY": "nope"}, "authentication (api-key) refused, HTTP 401: Access denied"),
    ({"voicelive_api_version": "2099-01-01"}, {}, "api-version '2099-01-01' refused, HTTP 400: "
                                                   "The api-version '2099-01-01' is not supported"),
    ({"voicelive_model": "gpt-9-realtime"}, {}, "model 'gpt-9-realtime' refused, HTTP 400: "
                                                "The model 'gpt-9-realtime' is not supported"),
])
async def test_check_says_what_voice_live_refused_in_one_line(simulator, model, environ, expected) -> None:
    env = {"AZURE_VOICELIVE_ENDPOINT": simulator.http_url, "AZURE_VOICELIVE_API_KEY": KEY, **environ}
    settings = load_settings(env_file=None, environ=env, model=model) if model else \
        load_settings(env_file=None, environ=env)
    with pytest.raises(CheckFailed) as info:
        await check_model(settings)
    line = str(info.value)
    assert "\n" not in line and expected in line, line
    assert "nope" not in line
