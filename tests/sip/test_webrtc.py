from __future__ import annotations

import ipaddress
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from sip import webrtc as wr

OFFER_SDP = (
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n"
    "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host generation 0\r\n"
    "a=candidate:2 1 udp 2122194687 192.0.2.2 50001 typ host generation 0\r\n"
    "a=candidate:3 1 udp 2122129151 3f1c8e2a-1111-2222-3333-444455556666.local 50002 typ host\r\n"
    "a=candidate:4 1 udp 1686052607 2001:db8::1 50003 typ srflx raddr 0.0.0.0 rport 0\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
)


def test_offer_parsed_and_refused() -> None:
    ok = wr.parse_offer(json.dumps({"type": "offer", "sdp": OFFER_SDP, "number": " +5511999990001 "}).encode())
    assert ok == wr.Offer(OFFER_SDP, "+5511999990001")
    bad = {
        b"{": "not valid JSON",
        b"[]": "expected a JSON object",
        json.dumps({"type": "answer", "sdp": OFFER_SDP, "number": "1"}).encode(): "type must be 'offer'",
        json.dumps({"sdp": "hello", "number": "1"}).encode(): "SDP session description",
        json.dumps({"sdp": OFFER_SDP}).encode(): "number is required",
        json.dumps({"sdp": OFFER_SDP, "number": "1" * 40}).encode(): "longer than 32",
        json.dumps({"sdp": "v=0\r\nm=video 9 RTP 96\r\n", "number": "1"}).encode(): "no audio",
        b"x" * (wr.MAX_OFFER_BYTES + 1): "offer over",
    }
    for body, reason in bad.items():
        result = wr.parse_offer(body)
        assert isinstance(result, wr.InvalidMessage) and reason in result.reason, (body[:40], result)


def test_client_messages() -> None:
    assert wr.parse_client_message('{"type":"dtmf","digit":"5"}') == wr.Dtmf("5")
    assert wr.parse_client_message('{"type":"dtmf","digit":"a"}') == wr.Dtmf("A")
    assert wr.parse_client_message('{"type":"hangup"}') == wr.Hangup()
    for text in ('{"type":"dtmf","digit":"55"}', '{"type":"dtmf"}', '{"type":"x"}', "[1]", "nope",
                 "{" + " " * 2000 + "}"):
        assert isinstance(wr.parse_client_message(text), wr.InvalidMessage), text
    assert json.loads(wr.event_message("agent", state="speaking")) == {"type": "agent", "state": "speaking"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048) | st.text(max_size=2048))
def test_any_input_gives_a_message_or_invalid(data: bytes | str) -> None:
    assert isinstance(wr.parse_client_message(data), wr.Dtmf | wr.Hangup | wr.InvalidMessage)
    if isinstance(data, bytes):
        assert isinstance(wr.parse_offer(data), wr.Offer | wr.InvalidMessage)


def test_candidates_filtered_by_network() -> None:
    same, removed = wr.filter_candidates(OFFER_SDP, ())
    assert (same, removed) == (OFFER_SDP, 0)
    loopback, removed = wr.filter_candidates(OFFER_SDP, wr.parse_networks(["127.0.0.0/8"]))
    assert removed == 3
    assert "127.0.0.1 50000" in loopback and "192.0.2.2" not in loopback and ".local" not in loopback
    assert "2001:db8::1" not in loopback and "a=rtpmap:111" in loopback
    both, removed = wr.filter_candidates(OFFER_SDP, (ipaddress.ip_network("127.0.0.0/8"),
                                                     ipaddress.ip_network("2001:db8::/32")))
    assert removed == 2 and "2001:db8::1" in both


def test_deeply_nested_json_is_invalid_not_an_exception() -> None:
    assert isinstance(wr.parse_offer(b"[" * 5000), wr.InvalidMessage)
    assert isinstance(wr.parse_offer(b'{"a":' * 5000), wr.InvalidMessage)
    assert isinstance(wr.parse_client_message("[" * 1000), wr.InvalidMessage)
