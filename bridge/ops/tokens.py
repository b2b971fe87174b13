"""Bearer tokens of the ops API, the ops page and the browser phone (RFC 6750).

The admin token sees every tenant; a tenant token sees only its own tenant. Every configured token
is compared in constant time on every request, whatever matched first.
"""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass

from aiohttp import web

from bridge.settings import OpsSettings

log = logging.getLogger(__name__)

CHALLENGE = 'Bearer realm="callbridge"'
_JSON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str | None  # None: admin

    @property
    def admin(self) -> bool:
        return self.tenant is None

    def may_see(self, tenant_slug: str) -> bool:
        return self.tenant is None or self.tenant == tenant_slug


def unauthorized(message: str, error: str | None = None) -> web.HTTPException:
    challenge = CHALLENGE + (f', error="{error}"' if error else "")
    return web.HTTPUnauthorized(text=json.dumps({"error": message}), content_type="application/json",
                                headers={**_JSON_HEADERS, "WWW-Authenticate": challenge})


class BearerTokens:
    def __init__(self, settings: OpsSettings) -> None:
        self._tokens: list[tuple[bytes, str | None]] = []
        if settings.admin_token is not None:
            self._tokens.append((settings.admin_token.get_secret_value().encode(), None))
        for slug, token in settings.tenant_tokens.items():
            self._tokens.append((token.get_secret_value().encode(), slug))

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def authenticate(self, request: web.Request) -> Principal:
        """The principal of the request's bearer token; raises 401 (with its challenge) otherwise."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("bearer token required")
        given = token.encode()
        found: Principal | None = None
        for secret, tenant in self._tokens:
            if hmac.compare_digest(given, secret) and found is None:
                found = Principal(tenant)
        if found is None:
            raise unauthorized("invalid token", "invalid_token")
        return found
