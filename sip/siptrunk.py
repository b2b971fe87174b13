"""What callbridge reads from an INVITE that reaches its SIP trunk, sans-I/O.

The SIP stack (PJSIP) parses and answers the message; this module only picks out the numbers a
routing decision needs, from the text of the request as received:

* the dialled number: the Request-URI's user part, else the ``To`` user part; optionally the
  ``P-Called-Party-ID`` (RFC 3455) or the first ``Diversion`` (RFC 5806) before those, for trunks
  that rewrite the Request-URI;
* the caller: ``P-Asserted-Identity`` (RFC 3325), else ``From``.

User parts lose their visual separators (RFC 3966 ``-``, ``.``, ``(``, ``)``) and parameters;
a ``tel:`` URI gives its number. Anything longer than ``MAX_USER_CHARS`` is refused outright, so
no later step sees an unbounded number.
"""

from __future__ import annotations

import enum
import re
import urllib.parse
from dataclasses import dataclass

MAX_USER_CHARS = 32  # E.164 is 15 digits; extensions and trunk prefixes fit well within this
MAX_MESSAGE_CHARS = 64 * 1024

_HEADER_ALIASES = {"t": "to", "f": "from"}  # RFC 3261 7.3.3 compact forms
_URI = re.compile(r"<\s*([^>]*)>|((?:sips?|tel):[^\s,>]+)", re.IGNORECASE)
_SEPARATORS = str.maketrans("", "", "-.() ")


class CalledSource(enum.StrEnum):
    REQUEST_URI = "request_uri"
    TO = "to"
    P_CALLED_PARTY_ID = "p_called_party_id"
    DIVERSION = "diversion"


@dataclass(frozen=True, slots=True)
class InviteNumbers:
    dialled: str  # "" when no usable number was found
    dialled_from: CalledSource | None
    caller: str
    call_id: str


class InviteError(ValueError):
    """An INVITE the trunk cannot route (no request line, numbers over the limit)."""


def _headers(text: str) -> tuple[str, dict[str, list[str]]]:
    head = text.split("\r\n\r\n", 1)[0].split("\n\n", 1)[0]
    lines = head.replace("\r\n", "\n").split("\n")
    request_line = lines[0] if lines else ""
    headers: dict[str, list[str]] = {}
    last: str | None = None
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and last is not None:  # folded continuation (RFC 3261 7.3.1)
            headers[last][-1] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        key = _HEADER_ALIASES.get(key, key)
        headers.setdefault(key, []).append(value.strip())
        last = key
    return request_line, headers


def uri_user(uri_text: str) -> str:
    """The user part of a SIP/SIPS URI or the number of a tel: URI, without separators."""
    m = _URI.search(uri_text)
    uri = (m.group(1) or m.group(2)) if m else uri_text.strip()
    scheme, _, rest = uri.partition(":")
    scheme = scheme.lower()
    if scheme == "tel":
        user = rest.split(";", 1)[0]
    elif scheme in ("sip", "sips"):
        if "@" not in rest:
            return ""
        user = rest.split("@", 1)[0].split(";", 1)[0].split(":", 1)[0]
    else:
        return ""
    user = urllib.parse.unquote(user).translate(_SEPARATORS)
    if len(user) > MAX_USER_CHARS:
        raise InviteError(f"user part longer than {MAX_USER_CHARS} characters")
    return user


def parse_invite(text: str, called_headers: tuple[CalledSource, ...] = ()) -> InviteNumbers:
    """The numbers of an INVITE. ``called_headers`` are consulted, in order, before the
    Request-URI (e.g. ``(CalledSource.P_CALLED_PARTY_ID, CalledSource.DIVERSION)``)."""
    if len(text) > MAX_MESSAGE_CHARS:
        raise InviteError("message too large")
    request_line, headers = _headers(text)
    method, _, rest = request_line.partition(" ")
    if method != "INVITE" or not rest:
        raise InviteError("not an INVITE request")
    request_uri = rest.rsplit(" ", 1)[0]
    sources: list[tuple[CalledSource, str]] = []
    for source in called_headers:
        called = headers.get(source.value.replace("_", "-"))
        if called:
            values = called
            sources.append((source, values[0].split(",", 1)[0]))
    sources.append((CalledSource.REQUEST_URI, request_uri))
    sources.append((CalledSource.TO, (headers.get("to") or [""])[0]))
    dialled, found = "", None
    for source, value in sources:
        user = uri_user(value)
        if user:
            dialled, found = user, source
            break
    caller = ""
    for name in ("p-asserted-identity", "from"):
        identities = headers.get(name)
        if identities:
            caller = uri_user(identities[0].split(",", 1)[0])
            if caller:
                break
    call_id = (headers.get("call-id") or headers.get("i") or [""])[0][:128]
    return InviteNumbers(dialled, found, caller, call_id)


def refer_target(destination: str, remote_contact: str) -> str:
    """The Refer-To URI for a transfer: ``destination`` itself when it is a URI, else that user at
    the host the call came from (the far end's Contact), where the PBX routes it."""
    if destination.lower().startswith(("sip:", "sips:", "tel:")):
        return destination
    m = _URI.search(remote_contact)
    uri = (m.group(1) or m.group(2)) if m else remote_contact
    scheme, _, rest = uri.partition(":")
    hostport = rest.split("@", 1)[-1].split(";", 1)[0]
    user = urllib.parse.quote(destination, safe="+*#")
    return f"{scheme.lower() or 'sip'}:{user}@{hostport}"


def source_host(address: str) -> str:
    """The host of a PJSIP source address: ``127.0.0.1:5080`` or ``[::1]:5080``."""
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address
