"""SIP digest authentication of requests callbridge receives (RFC 3261 22.4, RFC 7616, RFC 8760),
sans-I/O.

The SIP trunk challenges an INVITE with ``401 Unauthorized`` and one ``WWW-Authenticate`` header per
algorithm; the caller repeats the INVITE with an ``Authorization`` header, which ``DigestAuthority``
checks against the configured users. Nonces carry their issue time and are bound to the source
address with an HMAC under a per-process key, so no state is kept per challenge: a nonce is good for
``NONCE_LIFETIME`` seconds from the host it was issued to, after which the answer is another
challenge with ``stale=true`` (the caller retries with the same credentials, RFC 7616 3.3). With
``qop=auth`` the nonce count must grow (a replayed request is refused); the counts of recent nonces
are kept in a bounded table.

Time is injected (``now`` in seconds, any monotonic origin); nothing here reads a clock.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass

NONCE_LIFETIME = 300.0  # seconds
MAX_TRACKED_NONCES = 4096
MAX_HEADER_CHARS = 4096

_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*(?:,|$)')


class Algorithm(enum.StrEnum):
    MD5 = "MD5"
    SHA256 = "SHA-256"

    def hash(self, text: str) -> str:
        name = "md5" if self is Algorithm.MD5 else "sha256"
        return hashlib.new(name, text.encode(), usedforsecurity=False).hexdigest()


class Verdict(enum.Enum):
    OK = "ok"
    MISSING = "missing"  # no usable Authorization for this realm: challenge
    STALE = "stale"  # right credentials, expired nonce: challenge with stale=true
    FAILED = "failed"  # wrong user, password, nonce, replay or malformed: refuse


@dataclass(frozen=True, slots=True)
class Check:
    verdict: Verdict
    username: str = ""
    reason: str = ""


def parse_authorization(value: str) -> dict[str, str] | None:
    """The parameters of a ``Digest`` credentials header value (lower-cased names, unquoted values);
    None when it is not Digest or cannot be read."""
    if len(value) > MAX_HEADER_CHARS:
        return None
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        match = _PARAM.match(rest, pos)
        if match is None or match.end() == pos:
            return None
        name, raw = match.group(1).lower(), match.group(2)
        if raw.startswith('"'):
            if len(raw) < 2 or not raw.endswith('"'):
                return None
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[name] = raw
        pos = match.end()
    return params


def authorization_headers(text: str) -> list[str]:
    """The values of every ``Authorization`` header in a request's text (header section only)."""
    head = text.split("\r\n\r\n", 1)[0].split("\n\n", 1)[0]
    found: list[str] = []
    current: str | None = None
    for line in head.replace("\r\n", "\n").split("\n")[1:]:
        if line[:1] in (" ", "\t") and current is not None:
            found[-1] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        current = name.strip().lower() if sep else None
        if current == "authorization":
            found.append(value.strip())
        else:
            current = None
    return found


def response_digest(algorithm: Algorithm, username: str, realm: str, password: str, method: str, uri: str,
                    nonce: str, nc: str, cnonce: str) -> str:
    """The ``response`` a caller computes for ``qop=auth`` (RFC 7616 3.4.1)."""
    ha1 = algorithm.hash(f"{username}:{realm}:{password}")
    ha2 = algorithm.hash(f"{method}:{uri}")
    return algorithm.hash(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")


class DigestAuthority:
    """Checks digest credentials for one realm against a fixed set of users."""

    def __init__(self, realm: str, users: dict[str, str], *,
                 algorithms: tuple[Algorithm, ...] = (Algorithm.MD5,), key: bytes | None = None) -> None:
        if not algorithms:
            raise ValueError("at least one digest algorithm is needed")
        self.realm = realm
        self.algorithms = algorithms
        self._users = dict(users)
        self._key = key if key is not None else secrets.token_bytes(32)
        self._counts: OrderedDict[str, int] = OrderedDict()  # nonce -> highest nc seen

    # ------------------------------------------------------------------ challenges
    def nonce(self, source: str, now: float) -> str:
        stamp = f"{now:.3f}"
        mac = hmac.new(self._key, f"{stamp} {source}".encode(), hashlib.sha256).digest()[:18]
        return base64.urlsafe_b64encode(stamp.encode() + b" " + mac).decode().rstrip("=")

    def challenges(self, source: str, now: float, *, stale: bool = False) -> list[str]:
        """``WWW-Authenticate`` header values, preferred algorithm first (RFC 8760 2.4)."""
        nonce = self.nonce(source, now)
        extra = ", stale=true" if stale else ""
        return [f'Digest realm="{self.realm}", nonce="{nonce}", algorithm={a.value}, qop="auth"{extra}'
                for a in self.algorithms]

    def _nonce_age(self, nonce: str, source: str, now: float) -> float | None:
        """Seconds since the nonce was issued to ``source``; None if it was not issued by us to it."""
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except ValueError:
            return None
        stamp, sep, mac = raw.partition(b" ")
        if not sep:
            return None
        try:
            issued = float(stamp.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return None
        expected = hmac.new(self._key, stamp + b" " + source.encode(), hashlib.sha256).digest()[:18]
        if not hmac.compare_digest(mac, expected):
            return None
        return now - issued

    # ------------------------------------------------------------------ verification
    def check(self, method: str, headers: list[str], source: str, now: float) -> Check:
        """Judge a request's ``Authorization`` header values (``authorization_headers``).

        The digest ``uri`` is taken as the caller sent it, not compared with the Request-URI: some
        callers (SIPp by default) hash the target's address instead, and the response covers the
        uri and nonce count anyway, so a captured answer cannot be replayed for another request."""
        mine = [p for p in (parse_authorization(h) for h in headers) if p is not None
                and p.get("realm") == self.realm]
        if not mine:
            return Check(Verdict.MISSING, reason="no credentials for the realm")
        params = mine[0]
        username = params.get("username", "")
        password = self._users.get(username)
        try:
            algorithm = Algorithm(params.get("algorithm", "MD5").upper().replace("SHA256", "SHA-256"))
        except ValueError:
            return Check(Verdict.FAILED, username, "unsupported algorithm")
        if algorithm not in self.algorithms:
            return Check(Verdict.FAILED, username, "algorithm not offered")
        nonce, uri, response = params.get("nonce", ""), params.get("uri", ""), params.get("response", "")
        if password is None:
            return Check(Verdict.FAILED, username, "unknown user")
        if not nonce or not uri or not response:
            return Check(Verdict.FAILED, username, "incomplete credentials")
        age = self._nonce_age(nonce, source, now)
        if age is None or age < -1.0:  # another process's nonce (a restart), or forged: ask again
            return Check(Verdict.MISSING, username, "nonce not issued to this source")
        qop = params.get("qop", "")
        if qop == "auth":
            nc, cnonce = params.get("nc", ""), params.get("cnonce", "")
            if not re.fullmatch(r"[0-9a-fA-F]{8}", nc) or not cnonce:
                return Check(Verdict.FAILED, username, "bad nonce count")
            expected = response_digest(algorithm, username, self.realm, password, method, uri, nonce, nc, cnonce)
        else:  # the challenge asks for qop=auth; the RFC 2069 form (no qop) could be replayed
            return Check(Verdict.FAILED, username, "qop=auth missing")
        if not hmac.compare_digest(expected.encode(), response.lower().encode()):
            return Check(Verdict.FAILED, username, "wrong response")
        if age > NONCE_LIFETIME:
            return Check(Verdict.STALE, username, "nonce expired")
        count = int(nc, 16)
        if count <= self._counts.get(nonce, 0):
            return Check(Verdict.FAILED, username, "nonce count reused")
        self._counts[nonce] = count
        self._counts.move_to_end(nonce)
        while len(self._counts) > MAX_TRACKED_NONCES:
            self._counts.popitem(last=False)
        return Check(Verdict.OK, username)


def request_line(text: str) -> tuple[str, str]:
    """The method and Request-URI of a request's text; ('', '') when there is no request line."""
    parts = text.split("\n", 1)[0].strip().split(" ")
    return (parts[0], parts[1]) if len(parts) == 3 else ("", "")
