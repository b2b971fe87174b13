"""What a browser and callbridge say to each other around a WebRTC call, sans-I/O.

Signalling is one HTTP exchange (non-trickle, as WHIP does it): the page posts its complete SDP
offer with the number it dials, and gets the complete answer back. During the call a data channel
carries small JSON messages both ways:

    page -> daemon   {"type": "dtmf", "digit": "5"}          a keypad press (0-9, *, #, A-D)
                     {"type": "hangup"}                      the caller hangs up
    daemon -> page   {"type": "call", "call_id": "..."}      the call's id, once
                     {"type": "transcript", "role": "caller"|"agent", "text": "..."}
                     {"type": "agent", "state": "speaking"|"listening"}
                     {"type": "barge_in"} / {"type": "dtmf", "digit": "5"}
                     {"type": "ended", "outcome": "..."}

Anything else from the page is an ``InvalidMessage``: the daemon ignores it and counts it, it never
ends the call. Remote ICE candidates can be limited to allowed networks (``filter_candidates``), so a
deployment decides which addresses its media may be exchanged with (RFC 8839 candidate lines).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_OFFER_BYTES = 64 * 1024  # a browser's audio offer is a few kB; anything near this is not one
MAX_NUMBER_CHARS = 32
MAX_MESSAGE_BYTES = 1024  # data channel messages from the page
DTMF_DIGITS = frozenset("0123456789*#ABCD")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Offer:
    sdp: str
    number: str


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class Hangup:
    pass


@dataclass(frozen=True, slots=True)
class InvalidMessage:
    reason: str


ClientMessage = Dtmf | Hangup | InvalidMessage


def parse_offer(body: bytes) -> Offer | InvalidMessage:
    """The page's ``{"type": "offer", "sdp": ..., "number": ...}``."""
    if len(body) > MAX_OFFER_BYTES:
        return InvalidMessage(f"offer over {MAX_OFFER_BYTES} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nesting deeper than the decoder goes
        return InvalidMessage("offer: not valid JSON")
    if not isinstance(data, dict):
        return InvalidMessage("offer: expected a JSON object")
    if data.get("type", "offer") != "offer":
        return InvalidMessage("offer: type must be 'offer'")
    sdp = data.get("sdp")
    number = data.get("number")
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        return InvalidMessage("offer: sdp must be an SDP session description")
    if not isinstance(number, str) or not number.strip():
        return InvalidMessage("offer: number is required")
    number = number.strip()
    if len(number) > MAX_NUMBER_CHARS:
        return InvalidMessage(f"offer: number longer than {MAX_NUMBER_CHARS} characters")
    if "m=audio" not in sdp:
        return InvalidMessage("offer: no audio media section")
    return Offer(sdp, number)


def parse_client_message(data: str | bytes) -> ClientMessage:
    if len(data) > MAX_MESSAGE_BYTES:
        return InvalidMessage(f"message over {MAX_MESSAGE_BYTES} bytes")
    try:
        msg = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return InvalidMessage("not valid JSON")
    if not isinstance(msg, dict):
        return InvalidMessage("expected a JSON object")
    kind = msg.get("type")
    if kind == "dtmf":
        digit = msg.get("digit")
        if not isinstance(digit, str) or digit.upper() not in DTMF_DIGITS or len(digit) != 1:
            return InvalidMessage("dtmf: digit must be one of 0-9 * # A-D")
        return Dtmf(digit.upper())
    if kind == "hangup":
        return Hangup()
    return InvalidMessage(f"unknown message type {str(kind)[:32]!r}")


def event_message(kind: str, **fields: Any) -> str:
    """A daemon -> page message."""
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))


def parse_networks(values: Sequence[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def _candidate_address(line: str) -> str | None:
    # a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> ...
    parts = line.split()
    return parts[4] if len(parts) >= 8 else None


def filter_candidates(sdp: str, allowed: Sequence[Network]) -> tuple[str, int]:
    """``sdp`` without the candidate lines whose address is outside ``allowed`` (no filter when
    ``allowed`` is empty); returns the SDP and how many candidates were removed. Names (mDNS
    ``.local`` candidates) are not addresses and are removed when a filter is set."""
    if not allowed:
        return sdp, 0
    kept: list[str] = []
    removed = 0
    newline = "\r\n" if "\r\n" in sdp else "\n"
    for line in sdp.split(newline):
        if line.startswith("a=candidate:"):
            address = _candidate_address(line)
            try:
                ip = ipaddress.ip_address(address or "")
            except ValueError:
                removed += 1
                continue
            if not any(ip in net for net in allowed):
                removed += 1
                continue
        kept.append(line)
    return newline.join(kept), removed
