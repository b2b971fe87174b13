from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip import siptrunk as s

INVITE = (
    "INVITE sip:+55-11-99999-0001;npdi@pbx.example:5060;transport=udp SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1\r\n"
    "f: \"Ana\" <sip:1133334444@10.0.0.5>;tag=1\r\n"
    "t: <sip:5511999990009@callbridge.example>\r\n"
    "Call-ID: abc@10.0.0.5\r\n"
    "P-Asserted-Identity: <tel:+551133334444>\r\n"
    "P-Called-Party-ID: <sip:5511999990002@carrier.example>\r\n"
    "Diversion: <sip:5511999990003@carrier.example>;reason=unconditional,\r\n"
    " <sip:5511999990004@carrier.example>\r\n"
    "CSeq: 1 INVITE\r\n\r\nv=0\r\n"
)


def test_numbers_from_the_request_uri_and_identity_headers() -> None:
    numbers = s.parse_invite(INVITE)
    assert numbers == s.InviteNumbers("+5511999990001", s.CalledSource.REQUEST_URI, "+551133334444",
                                      "abc@10.0.0.5")


def test_called_headers_take_precedence_when_configured() -> None:
    called = s.parse_invite(INVITE, (s.CalledSource.P_CALLED_PARTY_ID, s.CalledSource.DIVERSION))
    assert (called.dialled, called.dialled_from) == ("5511999990002", s.CalledSource.P_CALLED_PARTY_ID)
    diverted = s.parse_invite(INVITE.replace("P-Called-Party-ID", "X-Other"), (s.CalledSource.DIVERSION,))
    assert (diverted.dialled, diverted.dialled_from) == ("5511999990003", s.CalledSource.DIVERSION)


def test_to_when_the_request_uri_has_no_user() -> None:
    text = INVITE.replace("INVITE sip:+55-11-99999-0001;npdi@pbx.example:5060;transport=udp",
                          "INVITE sip:pbx.example")
    numbers = s.parse_invite(text)
    assert (numbers.dialled, numbers.dialled_from) == ("5511999990009", s.CalledSource.TO)
    no_pai = s.parse_invite(text.replace("P-Asserted-Identity", "X-PAI"))
    assert no_pai.caller == "1133334444"


def test_refusals() -> None:
    with pytest.raises(s.InviteError, match="not an INVITE"):
        s.parse_invite("OPTIONS sip:x@y SIP/2.0\r\n\r\n")
    with pytest.raises(s.InviteError, match="longer than"):
        s.parse_invite(INVITE.replace("+55-11-99999-0001", "1" * 40))
    with pytest.raises(s.InviteError, match="too large"):
        s.parse_invite("INVITE sip:1@x SIP/2.0\r\n" + "X: y\r\n" * 20000)


def test_uri_user_forms() -> None:
    assert s.uri_user("<sip:%2B5511999990001@h>") == "+5511999990001"
    assert s.uri_user("sips:200@h;user=phone") == "200"
    assert s.uri_user("<tel:+1-202-555-0100;phone-context=x>") == "+12025550100"
    assert s.uri_user("<sip:h.example>") == ""
    assert s.uri_user("<mailto:a@b>") == ""


def test_refer_targets_and_sources() -> None:
    contact = "<sip:asterisk@10.0.0.5:5080;transport=udp>"
    assert s.refer_target("2001", contact) == "sip:2001@10.0.0.5:5080"
    assert s.refer_target("sip:sales@pbx", contact) == "sip:sales@pbx"
    assert s.refer_target("+551133334444", contact) == "sip:+551133334444@10.0.0.5:5080"
    assert s.source_host("127.0.0.1:5080") == "127.0.0.1"
    assert s.source_host("[::1]:5080") == "::1"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=3000))
def test_any_text_gives_numbers_or_invite_error(text: str) -> None:
    try:
        numbers = s.parse_invite(text)
    except s.InviteError:
        return
    assert len(numbers.dialled) <= s.MAX_USER_CHARS and len(numbers.caller) <= s.MAX_USER_CHARS
