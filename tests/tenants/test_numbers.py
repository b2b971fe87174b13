from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenants.directory import MatchKind
from tenants.numbers import (
    PLANS,
    NumberError,
    covering_patterns,
    match_number,
    normalize_number,
    normalize_pattern,
    stored_forms,
)

DEMO = "+5511999990001"

# (dialled value, default country, expected key)
NORMALISE = [
    # E.164, with and without "+", with visual separators
    ("+5511999990001", "BR", DEMO),
    ("5511999990001", "BR", DEMO),
    ("+55 (11) 99999-0001", "BR", DEMO),
    ("+55.11.99999.0001", "BR", DEMO),
    # Brazilian national dialling: trunk 0 + area, and trunk 0 + carrier code + area
    ("011999990001", "BR", DEMO),
    ("0 11 99999-0001", "BR", DEMO),
    ("01511999990001", "BR", DEMO),  # carrier 15
    ("021 11 99999 0001", "BR", DEMO),  # carrier 21
    ("041 (11) 99999-0001", "BR", DEMO),  # carrier 41
    ("0151133334444", "BR", "+551133334444"),  # carrier + 8-digit landline
    ("01133334444", "BR", "+551133334444"),
    # area code + number, as PBX DIDs are usually delivered
    ("(11) 99999-0001", "BR", DEMO),
    ("11999990001", "BR", DEMO),
    ("1133334444", "BR", "+551133334444"),
    ("55999990001", "BR", "+5555999990001"),  # area code 55 is not the country code
    # Brazilian international dialling: 00 + carrier + country code
    ("00 21 1 212 555 0100", "BR", "+12125550100"),
    ("0800 123 4567", "BR", "+558001234567"),
    # SIP and tel URIs
    ("sip:+5511999990001@pbx.example.com;user=phone", "BR", DEMO),
    ("sips:+5511999990001@pbx.example.com:5061;transport=tls", "BR", DEMO),
    ("<sip:5511999990001@10.0.0.1>", "BR", DEMO),
    ("SIP:011999990001@pbx", "BR", DEMO),
    ("sip:%2B5511999990001@pbx.example.com", "BR", DEMO),
    ("sip:+55-11-99999-0001;isub=1@pbx.example.com;user=phone", "BR", DEMO),
    ("tel:+55-11-99999-0001", "BR", DEMO),
    ("tel:+5511999990001;ext=22", "BR", DEMO),
    ("tel:1001;phone-context=pbx.example.com", "BR", "1001"),
    ("sip:1001@pbx.example.com", "BR", "1001"),
    # extensions and feature codes stay as they are
    ("1001", "BR", "1001"),
    (" 1001 ", "BR", "1001"),
    ("0", "BR", "0"),
    ("*97", "BR", "*97"),
    ("999990001", "BR", "999990001"),  # local number without area code: cannot be placed
    # other numbering plans
    ("(212) 555-0100", "US", "+12125550100"),
    ("1 212 555 0100", "US", "+12125550100"),
    ("011 44 20 7946 0018", "US", "+442079460018"),
    ("416-555-0199", "CA", "+14165550199"),
    ("912 345 678", "PT", "+351912345678"),
    ("00 55 11 99999 0001", "PT", DEMO),
    ("020 7946 0018", "GB", "+442079460018"),
    ("07700 900123", "GB", "+447700900123"),
    ("030 1234567", "DE", "+49301234567"),
    ("1001", "DE", "1001"),
    ("91 123 45 67", "ES", "+34911234567"),
    ("55 1234 5678", "MX", "+525512345678"),
    ("044 55 1234 5678", "MX", "+525512345678"),
    ("011 4123-4567", "AR", "+541141234567"),
]


@pytest.mark.parametrize(("raw", "country", "expected"), NORMALISE)
def test_normalize_number(raw: str, country: str, expected: str) -> None:
    assert normalize_number(raw, country) == expected


@pytest.mark.parametrize(
    "raw",
    ["", "   ", "abc", "sip:pbx.example.com", "+", "+0551199999", "+1234567890123456", "11-ab-22", "sip:@x"],
)
def test_normalize_number_rejects(raw: str) -> None:
    with pytest.raises(NumberError):
        normalize_number(raw, "BR")


def test_unknown_country_is_an_error_naming_the_known_ones() -> None:
    with pytest.raises(NumberError, match="BR"):
        normalize_number("11999990001", "ZZ")


@given(st.sampled_from([raw for raw, _, _ in NORMALISE]), st.sampled_from(sorted(PLANS)))
def test_normalisation_is_idempotent(raw: str, country: str) -> None:
    once = normalize_number(raw, country)
    assert normalize_number(once, country) == once


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+55119999900*", "+55119999900*"),
        ("+55 11 99999-00*", "+551199999 00*".replace(" ", "")),
        ("10*", "10*"),
        ("+5511999990001", DEMO),
        ("011999990001", DEMO),
    ],
)
def test_normalize_pattern(raw: str, expected: str) -> None:
    assert normalize_pattern(raw, "BR") == expected


@pytest.mark.parametrize("raw", ["+55*11*", "*", "+0*", "ab*", "+*"])
def test_normalize_pattern_rejects(raw: str) -> None:
    with pytest.raises(NumberError):
        normalize_pattern(raw, "BR")


def test_covering_patterns_longest_first() -> None:
    assert covering_patterns("+5511") == ["+5511*", "+551*", "+55*", "+5*"]
    assert covering_patterns("1001") == ["1001*", "100*", "10*", "1*"]
    assert covering_patterns("*97") == []


def test_stored_forms_cover_common_spellings() -> None:
    assert stored_forms(DEMO, "BR") == [DEMO, "5511999990001", "11999990001", "011999990001"]
    assert stored_forms("1001", "BR") == ["1001"]


EXACT = {DEMO: "demo", "1001": "demo", "+5511999990002": "pizzaria"}
PATTERNS = {"+55119999900*": "block-00", "+5511999990*": "block-0", "+55*": "brazil", "10*": "exts"}

# Every dialled format above, matched: (dialled, expected tenant, match kind, entry)
MATCH = [
    ("+5511999990001", "demo", MatchKind.EXACT, DEMO),
    ("5511999990001", "demo", MatchKind.EXACT, DEMO),
    ("011999990001", "demo", MatchKind.EXACT, DEMO),
    ("01511999990001", "demo", MatchKind.EXACT, DEMO),
    ("(11) 99999-0001", "demo", MatchKind.EXACT, DEMO),
    ("sip:+5511999990001@pbx.example.com;user=phone", "demo", MatchKind.EXACT, DEMO),
    ("tel:+55-11-99999-0001", "demo", MatchKind.EXACT, DEMO),
    ("1001", "demo", MatchKind.EXACT, "1001"),
    ("+5511999990002", "pizzaria", MatchKind.EXACT, "+5511999990002"),
    # longest prefix wins
    ("+5511999990042", "block-00", MatchKind.PREFIX, "+55119999900*"),
    ("(11) 99999-0042", "block-00", MatchKind.PREFIX, "+55119999900*"),
    ("+5511999990742", "block-0", MatchKind.PREFIX, "+5511999990*"),
    ("+552133334444", "brazil", MatchKind.PREFIX, "+55*"),
    ("1002", "exts", MatchKind.PREFIX, "10*"),
    ("sip:1077@pbx", "exts", MatchKind.PREFIX, "10*"),
]


@pytest.mark.parametrize(("dialled", "tenant", "kind", "entry"), MATCH)
def test_match_number(dialled: str, tenant: str, kind: MatchKind, entry: str) -> None:
    found = match_number(normalize_number(dialled, "BR"), EXACT, PATTERNS)
    assert found is not None
    assert (found.value, found.kind, found.entry) == (tenant, kind, entry)


@pytest.mark.parametrize("dialled", ["+12125550100", "2001", "*97"])
def test_match_number_not_found(dialled: str) -> None:
    assert match_number(normalize_number(dialled, "BR"), EXACT, PATTERNS) is None


@given(st.text(max_size=60), st.sampled_from(sorted(PLANS)))
def test_any_text_gives_a_key_or_number_error(raw: str, country: str) -> None:
    try:
        key = normalize_number(raw, country)
    except NumberError:
        return
    assert key and ((key.startswith("+") and key[1:].isdigit()) or set(key) <= set("0123456789*#"))


@given(st.from_regex(r"\+?[0-9 ()\-.]{1,25}\*?", fullmatch=True))
def test_any_dial_string_pattern_gives_pattern_or_number_error(raw: str) -> None:
    try:
        entry = normalize_pattern(raw, "BR")
    except NumberError:
        return
    assert entry == normalize_pattern(entry, "BR")


# -- bounds: a peer chooses the dialled value's size -------------------------------------------------


@pytest.mark.parametrize("raw", [
    "1" * 21,  # longer than any extension
    "1" * 40_000,  # a Twilio "to" seen in the wild took RSS to 860 MB through prefix matching
    "sip:" + "1" * 300 + "@pbx.example.com",
    "+" + "1" * 16,
    "*" * 30 + "1",
])
def test_overlong_dialled_values_are_refused(raw: str) -> None:
    with pytest.raises(NumberError) as caught:
        normalize_number(raw)
    assert len(str(caught.value)) < 200  # the message quotes a bounded part of the value


def test_longest_extension_still_accepted() -> None:
    assert normalize_number("9" * 20) == "9" * 20


def test_covering_patterns_bounded_for_any_input() -> None:
    assert covering_patterns("1" * 100_000) == []
    assert len(covering_patterns("+" + "1" * 15)) == 15


@given(st.text(max_size=2000))
def test_normalised_numbers_are_short(raw: str) -> None:
    try:
        number = normalize_number(raw)
    except NumberError:
        return
    assert len(number) <= 21 and len(covering_patterns(number)) <= 20
