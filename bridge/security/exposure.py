"""What each listener accepts and how its peers authenticate: for the start-up log, ``callbridge
check``, and the production rule that nothing is open to the world without authentication."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bridge.security.networks import describe, is_private

if TYPE_CHECKING:
    from bridge.settings import ListenerSettings, Settings


@dataclass(frozen=True, slots=True)
class Exposure:
    name: str  # the settings section: http, audiosocket, agi
    host: str
    port: int
    accepts: str  # the allow-list in words
    public: bool  # the allow-list reaches beyond loopback and the private ranges
    authentication: str  # how peers prove who they are, in words
    authenticated: bool  # every call this listener takes is authenticated

    def line(self) -> str:
        return (f"{self.name} on {self.host}:{self.port} accepts {self.accepts}"
                f"{' (open to the world)' if self.public else ''}; authentication: {self.authentication}")


def media_tokens_required(settings: Settings) -> bool:
    """Whether every tenant's WebSocket media calls must carry its media token (a valid Twilio
    signature counts as one)."""
    from bridge.settings import AppEnv, MediaTokenPolicy

    policy = settings.security.media_tokens
    if policy is MediaTokenPolicy.REQUIRED:
        return True
    if policy is MediaTokenPolicy.OPTIONAL:
        return False
    return settings.app_env is AppEnv.PRODUCTION and not is_private(settings.http.allow_from)


def _http_authentication(settings: Settings) -> tuple[str, bool]:
    parts = []
    ops = settings.ops
    if ops.enabled:
        parts.append("ops API tokens" if ops.admin_token or ops.tenant_tokens
                     else "ops API refuses all (no tokens)")
    required = media_tokens_required(settings)
    parts.append("media tokens on /ws/audio and /ws/freeswitch "
                 + ("required for every tenant" if required else "for tenants that set one"))
    if settings.security.twilio_auth_tokens:
        parts.append("X-Twilio-Signature on /ws/twilio (or the tenant's media token)")
    else:
        parts.append("/ws/twilio by media token " + ("only" if required else "where the tenant sets one"))
    return ", ".join(parts), required


def listeners(settings: Settings) -> list[Exposure]:
    out: list[Exposure] = []
    sections: list[tuple[str, ListenerSettings]] = [("http", settings.http)]
    if settings.audiosocket.enabled:
        sections += [("audiosocket", settings.audiosocket)]
        if settings.agi.enabled:
            sections += [("agi", settings.agi)]
    for name, listener in sections:
        if not listener.enabled:
            continue
        if name == "http":
            authentication, authenticated = _http_authentication(settings)
        else:
            # AudioSocket and FastAGI carry no credentials: binding and allow-list are all there is.
            authentication, authenticated = "none (the protocol carries no credentials)", False
        out.append(Exposure(name, listener.host, listener.port, describe(listener.allow_from),
                            not is_private(listener.allow_from), authentication, authenticated))
    return out


def production_problems(settings: Settings) -> list[str]:
    """Listeners open to the world without authentication, when APP_ENV=production."""
    from bridge.settings import AppEnv

    if settings.app_env is not AppEnv.PRODUCTION:
        return []
    problems = []
    for exposure in listeners(settings):
        listener: ListenerSettings = getattr(settings, exposure.name)
        if exposure.public and not exposure.authenticated and not listener.allow_public:
            problems.append(
                f"{exposure.name}.allow_from: in production the {exposure.name} listener accepts "
                f"{exposure.accepts}, beyond the private networks, without authentication; narrow "
                f"allow_from to the PBX network, or set {exposure.name}.allow_public=true if this is meant")
    return problems
