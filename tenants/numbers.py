"""Dialled-number normalisation and number matching (pure functions, no I/O).

A PBX hands over the dialled number in whatever shape its trunk delivered it: E.164 with or without
the ``+``, national dialling with a trunk prefix (and, in Brazil, a carrier selection code), a SIP
or tel URI, or an internal extension. ``normalize_number`` turns all of these into one key:

* E.164 (ITU-T E.164: ``+``, country code, national significant number, at most 15 digits) when
  the digits can be read as a public number of the default country or carry an international
  prefix;
* otherwise the digits as given, which is how internal extensions (``1001``) and feature codes
  (``*97``) are matched.

Brazilian national long-distance dialling is ``0 + carrier selection code (2 digits) + area code
(2 digits) + subscriber number (8 or 9 digits)``, or ``0 + area code + subscriber`` from a PBX that
has the carrier preselected (Anatel numbering plan); international calls are ``00 + carrier +
country code + number``. Local calls without an area code cannot be placed in the plan without
knowing the caller's area, so they are kept as given.

Directory entries are either numbers or prefix patterns ending in ``*``: ``+55119999900*`` covers
the DID block +55 11 99999-0000 .. 0099. An E.164 pattern starts with ``+``; a pattern without one
covers extensions (``10*``). ``match_number`` decides between entries: an exact number beats any
pattern and a longer pattern beats a shorter one.

Bounds: a dialled value arrives from a peer (a Twilio parameter, a URL path, a FastAGI argument)
and can be any size, so its length is checked before any other work. A value of more than
``MAX_DIALLED_CHARS`` characters (a SIP URI with its parameters fits) is refused, as are E.164
numbers of more than 15 digits and extensions or SIP user parts of more than
``MAX_EXTENSION_DIGITS`` characters. A normalised number is therefore at most 20 characters long and
everything done with it afterwards (prefix patterns, stored spellings) costs the same whatever the
peer sent. Error messages quote at most ``QUOTED_CHARS`` characters of the value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import unquote

from tenants.directory import MatchKind

T = TypeVar("T")

E164_MAX_DIGITS = 15  # ITU-T E.164 section 6.1
# Longest dialled value looked at: a SIP/tel URI with parameters fits; more is refused unread.
MAX_DIALLED_CHARS = 256
# Longest extension, feature code or non-E.164 SIP user part (digits, "*" and "#"). Private
# numbering plans and national numbers with trunk and carrier prefixes stay well below this.
MAX_EXTENSION_DIGITS = 20
# How much of a refused value an error message (and so a log line) quotes.
QUOTED_CHARS = 32
# Shortest digit string read as "country code without the +": shorter strings are extensions.
_BARE_INTERNATIONAL_MIN_DIGITS = 10

# RFC 3966 section 3 visual separators, plus the spaces and slashes people type.
_SEPARATORS = re.compile(r"[\s\-.()/\[\]]")
_DIALLABLE = re.compile(r"^[0-9*#]+$")


class NumberError(ValueError):
    """A dialled value that is neither a telephone number nor an extension."""


def quoted(value: str, limit: int = QUOTED_CHARS) -> str:
    """``repr`` of a peer-supplied value for a message, cut to ``limit`` characters and its size."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


@dataclass(frozen=True, slots=True)
class NumberingPlan:
    """What normalisation needs to know about one country's dialling."""

    country: str  # ISO 3166-1 alpha-2
    calling_code: str  # ITU-T E.164 country code, without "+"
    national_lengths: frozenset[int]  # lengths of a national significant number
    trunk_prefix: str | None = None  # dialled before a national number ("0" in BR, GB, DE)
    international_prefixes: tuple[str, ...] = ("00",)
    # Digits of a carrier selection code dialled after the trunk or international prefix (BR).
    carrier_code_digits: int = 0
    # National numbers commonly arrive without any trunk prefix (DIDs delivered as area + number).
    bare_national: bool = False
    # Older national prefixes some equipment still sends (Mexico before August 2019).
    legacy_prefixes: tuple[str, ...] = ()


_NANP = dict(calling_code="1", national_lengths=frozenset({10}), trunk_prefix="1",
             international_prefixes=("011",), bare_national=True)

PLANS: dict[str, NumberingPlan] = {
    plan.country: plan
    for plan in (
        NumberingPlan("BR", "55", frozenset({10, 11}), trunk_prefix="0", carrier_code_digits=2,
                      bare_national=True),
        NumberingPlan("US", **_NANP),  # type: ignore[arg-type]
        NumberingPlan("CA", **_NANP),  # type: ignore[arg-type]
        NumberingPlan("PT", "351", frozenset({9}), bare_national=True),
        NumberingPlan("GB", "44", frozenset({7, 9, 10}), trunk_prefix="0"),
        NumberingPlan("DE", "49", frozenset(range(5, 14)), trunk_prefix="0"),
        NumberingPlan("ES", "34", frozenset({9}), bare_national=True),
        NumberingPlan("MX", "52", frozenset({10}), bare_national=True,
                      legacy_prefixes=("01", "044", "045")),
        NumberingPlan("AR", "54", frozenset({10}), trunk_prefix="0"),
    )
}


def numbering_plan(country: str) -> NumberingPlan:
    try:
        return PLANS[country.upper()]
    except KeyError:
        known = ", ".join(sorted(PLANS))
        raise NumberError(f"no numbering plan for country {country!r} (known: {known})") from None


def _user_part(raw: str) -> str:
    """The telephone-number part of a SIP/tel URI, or the text itself."""
    text = raw.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    lower = text.lower()
    for scheme in ("sips:", "sip:", "tel:"):
        if lower.startswith(scheme):
            text = text[len(scheme):]
            if scheme != "tel:":
                # RFC 3261 19.1.1: userinfo ends at "@"; without one the URI names a host only.
                user, at, _host = text.partition("@")
                text = user if at else ""
            # Parameters of the telephone-subscriber (RFC 3966 ";ext=", ";phone-context=", ...)
            text = text.split(";", 1)[0]
            text = unquote(text)
            break
    return text


def _plausible_international(digits: str) -> bool:
    return 8 <= len(digits) <= E164_MAX_DIGITS and digits[0] != "0"


def _to_e164(digits: str, plan: NumberingPlan) -> str | None:
    lengths = plan.national_lengths
    for prefix in plan.international_prefixes:
        if digits.startswith(prefix):
            rest = digits[len(prefix) + plan.carrier_code_digits:]
            if _plausible_international(rest):
                return "+" + rest
    national_prefixes = [p for p in (plan.trunk_prefix, *plan.legacy_prefixes) if p]
    for prefix in national_prefixes:
        if digits.startswith(prefix):
            rest = digits[len(prefix):]
            if len(rest) in lengths:
                return "+" + plan.calling_code + rest
            if prefix == plan.trunk_prefix and plan.carrier_code_digits:
                rest = rest[plan.carrier_code_digits:]
                if len(rest) in lengths:
                    return "+" + plan.calling_code + rest
    if (
        len(digits) >= _BARE_INTERNATIONAL_MIN_DIGITS
        and digits.startswith(plan.calling_code)
        and len(digits) - len(plan.calling_code) in lengths
    ):
        return "+" + digits
    if plan.bare_national and len(digits) in lengths:
        return "+" + plan.calling_code + digits
    return None


def _compact(raw: str) -> str:
    if not isinstance(raw, str):
        raise NumberError(f"dialled value must be text, not {type(raw).__name__}")
    if len(raw) > MAX_DIALLED_CHARS:
        raise NumberError(f"dialled value of {len(raw)} characters (at most {MAX_DIALLED_CHARS})")
    return _SEPARATORS.sub("", _user_part(raw))


def normalize_number(raw: str, default_country: str = "BR") -> str:
    """E.164 for a public number, the digits as given for an extension; NumberError otherwise.

    >>> normalize_number("sip:+5511999990001@pbx.example.com;user=phone")
    '+5511999990001'
    >>> normalize_number("015 (11) 99999-0001")
    '+5511999990001'
    >>> normalize_number("1001")
    '1001'
    """
    compact = _compact(raw)
    if not compact:
        raise NumberError(f"no number in {quoted(raw)}")
    if compact.startswith("+"):
        digits = compact[1:]
        if not digits.isdigit() or len(digits) > E164_MAX_DIGITS or digits[0] == "0":
            raise NumberError(f"{quoted(raw)} is not an E.164 number")
        return compact
    if len(compact) > MAX_EXTENSION_DIGITS:
        raise NumberError(f"{quoted(raw)} is longer than an extension may be ({MAX_EXTENSION_DIGITS})")
    if not _DIALLABLE.match(compact) or not any(c.isdigit() for c in compact):
        raise NumberError(f"{quoted(raw)} is not a telephone number or extension")
    if not compact.isdigit():
        return compact  # feature codes such as *97 are matched as given
    return _to_e164(compact, numbering_plan(default_country)) or compact


def normalize_pattern(raw: str, default_country: str = "BR") -> str:
    """A number, or a prefix pattern ``+<digits>*`` / ``<digits>*``, in its canonical form."""
    compact = _compact(raw)
    if compact == "*":
        raise NumberError("a catch-all '*' is not a pattern: use tenants.unknown_number 'default'")
    if not compact.endswith("*") or compact.startswith("*"):
        return normalize_number(raw, default_country)
    body = compact[:-1]
    digits = body[1:] if body.startswith("+") else body
    if not digits.isdigit() or len(digits) > E164_MAX_DIGITS or (body.startswith("+") and digits[0] == "0"):
        raise NumberError(
            f"pattern {quoted(raw)} must be '+' and country code digits, or extension digits, then one '*'"
        )
    return compact


def is_pattern(entry: str) -> bool:
    return entry.endswith("*") and len(entry) > 1


def covering_patterns(number: str) -> list[str]:
    """Every pattern that covers ``number``, longest first (``+5511*`` covers ``+5511999990001``)."""
    lead = "+" if number.startswith("+") else ""
    body = number[len(lead):]
    if not body.isdigit() or len(body) > MAX_EXTENSION_DIGITS:
        return []  # not a normalised number: no pattern covers it (and no quadratic list is built)
    return [f"{lead}{body[:size]}*" for size in range(len(body), 0, -1)]


def stored_forms(number: str, default_country: str = "BR") -> list[str]:
    """Spellings under which a store that does not hold E.164 might keep ``number``.

    Used to query stores written by other tools: the E.164 form, the same without "+", and the
    national forms (with and without trunk prefix) of the default country. Whatever the query
    returns is normalised again before it counts, so a wider net here cannot produce a false match.
    """
    forms = [number]
    if number.startswith("+"):
        digits = number[1:]
        forms.append(digits)
        plan = numbering_plan(default_country)
        if digits.startswith(plan.calling_code):
            national = digits[len(plan.calling_code):]
            forms.append(national)
            if plan.trunk_prefix:
                forms.append(plan.trunk_prefix + national)
    return forms


@dataclass(frozen=True, slots=True)
class NumberMatch(Generic[T]):
    kind: MatchKind
    entry: str  # the number or pattern that matched, in canonical form
    value: T


def match_number(number: str, exact: Mapping[str, T], patterns: Mapping[str, T]) -> NumberMatch[T] | None:
    """The entry answering ``number``: an exact number first, then the longest covering pattern."""
    if number in exact:
        return NumberMatch(MatchKind.EXACT, number, exact[number])
    for pattern in covering_patterns(number):
        if pattern in patterns:
            return NumberMatch(MatchKind.PREFIX, pattern, patterns[pattern])
    return None
