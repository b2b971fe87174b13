"""X-Twilio-Signature as Twilio computes it: checked against Twilio's own library
(``twilio.request_validator.RequestValidator``) and the example of Twilio's security docs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from sip.twilio_signature import signature, url_variants, valid

DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_PARAMS = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
              "From": "+12349013030", "To": "+18005551212"}


def test_the_documented_example() -> None:
    assert signature("12345", DOC_URL, DOC_PARAMS) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert signature("12345", DOC_URL, DOC_PARAMS) == RequestValidator("12345").compute_signature(DOC_URL, DOC_PARAMS)


def test_websocket_upgrade_signs_the_url_alone() -> None:
    url = "wss://bridge.example.com/ws/twilio?tenant=acme"
    reference = RequestValidator("token-0001").compute_signature(url, {})
    assert signature("token-0001", url) == reference
    assert valid(["token-0001"], url, reference)
    # Twilio's validators accept the default port added or removed; so does this one.
    assert valid(["token-0001"], "wss://bridge.example.com:443/ws/twilio?tenant=acme", reference)
    assert not valid(["token-0001"], "wss://bridge.example.com:8443/ws/twilio?tenant=acme", reference)


def test_any_listed_token_and_nothing_else() -> None:
    url = "wss://h.example/ws/twilio"
    sig = signature("current-token", url)
    assert valid(["previous-token", "current-token"], url, sig)
    assert not valid(["previous-token"], url, sig)
    assert not valid([], url, sig)
    assert not valid(["current-token"], url + "?x=1", sig)
    assert not valid(["current-token"], url, ("B" if sig[0] == "A" else "A") + sig[1:])
    assert not valid(["current-token"], url, "")
    assert not valid(["current-token"], url, "not base64 at all ☃")


def test_url_variants() -> None:
    assert url_variants("wss://h.example/p?q=1") == ["wss://h.example/p?q=1", "wss://h.example:443/p?q=1"]
    assert url_variants("https://h.example:443/p") == ["https://h.example:443/p", "https://h.example/p"]
    assert url_variants("ws://h.example:8080/p") == ["ws://h.example:8080/p"]
    assert url_variants("wss://[::1]/p") == ["wss://[::1]/p", "wss://[::1]:443/p"]


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)


@given(token=_text.filter(bool), path=_text, params=st.dictionaries(_text, _text, max_size=5))
def test_same_as_twilio_for_any_post(token: str, path: str, params: dict[str, str]) -> None:
    url = "https://h.example/" + path
    assert signature(token, url, params) == RequestValidator(token).compute_signature(url, params)
