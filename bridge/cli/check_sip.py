"""The SIP trunk's line in ``callbridge check``.

What it reports when ``sip.enabled``: that pjsua2 (PJSIP) imports, that the SIP port (each
configured transport) and the first RTP port can be bound, and the configured carrier
registrations (registrar and username; never the password). When those ports are taken and a
callbridge answers on the HTTP port, the ports are that daemon's own and its ``/ready`` gives the
state of each registration instead; a registration it reports as failing fails the check.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import socket
from typing import Any

from bridge.cli.check import CheckFailed, _describe, _http_json, _is_callbridge, _local_http_url
from bridge.settings import Settings, SipSettings


def _pjsua2() -> str:
    """The PJSIP binding's version; raises CheckFailed when it does not import."""
    try:
        importlib.import_module("pjsua2")
    except ImportError as exc:
        raise CheckFailed("sip.enabled, but pjsua2 does not import (install callbridge[sip]; wheels exist for "
                          f"CPython on Linux x86-64): {_describe(exc)}") from None
    try:
        return "pjsua2 " + importlib.metadata.version("pjsua2-python")
    except importlib.metadata.PackageNotFoundError:
        return "pjsua2"


def _busy_ports(sip: SipSettings) -> list[str]:
    """The SIP and first RTP ports that cannot be bound, with the reason."""
    host = "" if sip.host in ("0.0.0.0", "") else sip.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    wanted: list[tuple[str, int, int]] = []
    kinds = {"udp": socket.SOCK_DGRAM, "tcp": socket.SOCK_STREAM, "tls": socket.SOCK_STREAM}
    wanted += [(f"SIP {t.upper()}", _port(sip, t), kinds[t]) for t in sip.transports if _port(sip, t)]
    wanted.append(("RTP", sip.rtp_port, socket.SOCK_DGRAM))
    busy = []
    for name, port, kind in wanted:
        with socket.socket(family, kind) as sock:
            if kind == socket.SOCK_STREAM:  # as a listener binds it (TIME_WAIT is no conflict)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                busy.append(f"{name} {sip.host}:{port} ({exc.strerror})")
    return busy


def _port(sip: SipSettings, transport: str) -> int:
    return sip.tls.port if transport == "tls" else sip.port


def _where(sip: SipSettings) -> str:
    return ", ".join(f"{t.upper()} {sip.host}:{_port(sip, t)}" for t in sip.transports)


def _registrations(sip: SipSettings) -> str:
    if not sip.registrations:
        return "no carrier registration"
    return "registers " + ", ".join(f"{r.username} at {r.registrar}" for r in sip.registrations)


def _registration_state(entry: Any) -> tuple[bool, str]:
    """(registered, words) for one registration in a running daemon's /ready."""
    if not isinstance(entry, dict):
        return False, "unreported"
    where = entry.get("registrar", "?")
    if entry.get("registered"):
        return True, f"registered with {where} (expires {entry.get('expires', '?')} s)"
    code = entry.get("code") or 0
    if not code:
        return False, f"not yet registered with {where} (no answer so far)"
    reason = entry.get("reason") or ""
    return False, f"registration with {where} failing: {code} {reason}".rstrip()


async def check_sip_trunk(settings: Settings, wait_seconds: float = 2.0, *, ports: bool = True) -> str:
    sip = settings.sip
    version = await asyncio.to_thread(_pjsua2)
    where = _where(sip)
    rtp = f"RTP {sip.rtp_port}-{sip.rtp_port + sip.rtp_port_range}"
    if not ports:
        return f"{version}; {where}, {rtp}; {_registrations(sip)}"
    busy = _busy_ports(sip)
    if not busy:
        return f"{version}; free to listen on {where}, {rtp}; {_registrations(sip)}"
    base = _local_http_url(settings) if settings.http.enabled and settings.http.port else None
    health = await _http_json(base + "/health", wait_seconds) if base else None
    if base is None or health is None or not _is_callbridge(health[1]):
        raise CheckFailed("cannot listen on " + ", ".join(busy) + ": another program holds the port; "
                          "stop it or choose other ports (sip.port, sip.tls.port, sip.rtp_port)")
    held = f"{version}; {where} in use by the callbridge running at {base}"
    ready = await _http_json(base + "/ready", wait_seconds)
    if ready is not None and ready[0] != 200:
        reason = ready[1].get("reason") if isinstance(ready[1], dict) else None
        raise CheckFailed(f"{held}; its /ready answers HTTP {ready[0]}" + (f" ({reason})" if reason else ""))
    trunk = ready[1].get("sip") if ready is not None and isinstance(ready[1], dict) else None
    if not isinstance(trunk, dict):
        raise CheckFailed(f"{held}, but its /ready " + ("does not answer" if ready is None else
                                                         "does not report a SIP trunk"))
    states = [_registration_state(entry) for entry in trunk.get("registrations") or []]
    if not states:
        return f"{held}; no carrier registration"
    words = "; ".join(text for _, text in states)
    if not all(ok for ok, _ in states):
        raise CheckFailed(f"{held}; {words}")
    return f"{held}; {words}"
