"""Twilio request signatures (``X-Twilio-Signature``), sans-I/O.

Twilio signs every request it makes to an application, the WebSocket upgrade of a Media Stream
included, with the account's auth token ("Webhooks security", twilio.com/docs/usage/security):

1. take the full URL of the request as Twilio was given it, scheme through query string;
2. for a POST form body, sort the parameters by name (case-sensitive) and append each name and
   value, without delimiters; a GET (the WebSocket upgrade) appends nothing;
3. HMAC-SHA1 that string with the auth token as the key; the header is the base64 of the digest.

Twilio's own validators also accept the URL with the default port added or removed (a proxy may
change that part of the Host); :func:`url_variants` gives those forms.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

SIGNATURE_HEADER = "X-Twilio-Signature"
_DEFAULT_PORTS = {"https": 443, "wss": 443, "http": 80, "ws": 80}


def signature(auth_token: str, url: str, params: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> str:
    """The ``X-Twilio-Signature`` Twilio sends for ``url`` (and a POST's form ``params``)."""
    pairs = sorted(params.items() if isinstance(params, Mapping) else params)
    text = url + "".join(name + value for name, value in pairs)
    digest = hmac.new(auth_token.encode("utf-8"), text.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def url_variants(url: str) -> list[str]:
    """``url`` as given, then with its scheme's default port removed or added."""
    parts = urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme)
    out = [url]
    if default is None or parts.hostname is None:
        return out
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    try:
        port = parts.port
    except ValueError:
        return out
    if port is None:
        out.append(urlunsplit(parts._replace(netloc=f"{host}:{default}")))
    elif port == default:
        out.append(urlunsplit(parts._replace(netloc=host)))
    return out


def valid(auth_tokens: Iterable[str], url: str, given: str,
          params: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> bool:
    """Whether ``given`` is Twilio's signature of ``url`` under one of ``auth_tokens``. Every
    comparison is constant-time and every token and URL form is tried, whichever matches."""
    pairs = list(params.items() if isinstance(params, Mapping) else params)
    expected_given = given.strip().encode("ascii", "replace")
    ok = False
    for token in auth_tokens:
        for variant in url_variants(url):
            ok |= hmac.compare_digest(signature(token, variant, pairs).encode("ascii"), expected_given)
    return ok
