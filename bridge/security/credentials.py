"""Credentials of the WebSocket media endpoints, and the browser ``Origin`` check.

* A tenant's media token (``TenantConfig.media_token``) is presented the way each client can:
  ``Authorization: Bearer <token>``; the WebSocket subprotocol ``callbridge.bearer.<token>``
  (browsers cannot set headers: offer it beside ``callbridge``, which the daemon selects); or
  ``?token=<token>`` in the URL. FreeSWITCH streams may also put ``token`` in their metadata and
  Twilio-format streams in a ``<Parameter name="token">``. Tokens are compared in constant time
  and only with the tenant the dialled number belongs to: another tenant's token is no token.
* Twilio-format streams may instead carry a valid ``X-Twilio-Signature`` (``sip.twilio_signature``).
* ``Origin``: a request without one is not from a browser and passes; one with an Origin passes
  only when it is listed in ``security.allowed_origins``.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import TYPE_CHECKING

from aiohttp import hdrs, web

from sip import twilio_signature
from tenants.config import TenantConfig

if TYPE_CHECKING:
    from bridge.settings import SecuritySettings

MEDIA_SUBPROTOCOL = "callbridge"
BEARER_SUBPROTOCOL_PREFIX = "callbridge.bearer."
TOKEN_PARAMETER = "token"
MAX_TOKEN_CHARS = 512


def presented_tokens(request: web.Request) -> list[str]:
    """Every media token the upgrade request carries (header, subprotocol, query)."""
    found: list[str] = []
    scheme, _, value = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        found.append(value.strip())
    for offered in request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, []):
        for proto in offered.split(","):
            proto = proto.strip()
            if proto.startswith(BEARER_SUBPROTOCOL_PREFIX) and len(proto) > len(BEARER_SUBPROTOCOL_PREFIX):
                found.append(proto[len(BEARER_SUBPROTOCOL_PREFIX):])
    query_token = request.query.get(TOKEN_PARAMETER, "").strip()
    if query_token:
        found.append(query_token)
    return [token[:MAX_TOKEN_CHARS] for token in found]


def token_matches(presented: Iterable[str], tenant: TenantConfig) -> bool:
    """Whether one of the presented tokens is the tenant's media token (constant-time)."""
    expected = tenant.media_token
    if not expected:
        return False
    want = expected.encode("utf-8")
    ok = False
    for token in presented:
        ok |= hmac.compare_digest(token.encode("utf-8"), want)
    return ok


def token_required(tenant: TenantConfig, required_for_all: bool) -> bool:
    return bool(tenant.media_token) or required_for_all


def origin_allowed(request: web.Request, allowed: Iterable[str]) -> bool:
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return True  # not a browser
    return origin.strip().rstrip("/").lower() in set(allowed)


def twilio_url(request: web.Request, public_url: str | None) -> str:
    """The URL Twilio signed: the configured public base, else wss:// and the Host header, then
    the path and query string exactly as requested."""
    if public_url:
        base = public_url.rstrip("/")
    else:
        base = f"wss://{request.headers.get(hdrs.HOST, request.host)}"
    return base + request.raw_path


def twilio_signed(request: web.Request, security: SecuritySettings) -> bool | None:
    """True for a valid X-Twilio-Signature, False for an invalid one, None when the request has
    none or no auth token is configured."""
    given = request.headers.get(twilio_signature.SIGNATURE_HEADER)
    if given is None or not security.twilio_auth_tokens:
        return None
    tokens = [token.get_secret_value() for token in security.twilio_auth_tokens]
    return twilio_signature.valid(tokens, twilio_url(request, security.twilio_public_url), given)
