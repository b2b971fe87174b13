from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip import agi

ENV = (
    b"agi_network: yes\n"
    b"agi_network_script: \n"
    b"agi_request: agi://127.0.0.1:4573\n"
    b"agi_channel: PJSIP/trunk-00000001\n"
    b"agi_callerid: 5511988887777\n"
    b"agi_dnid: 5511999990001\n"
    b"agi_extension: +5511999990001\n"
    b"agi_arg_2: second\n"
    b"agi_arg_1: +5511999990001\n"
    b"\n"
)


def feed(protocol: agi.AgiProtocol, data: bytes, mode: str) -> list[agi.Event]:
    if mode == "whole":
        protocol.receive_data(data)
    else:
        for i in range(len(data)):
            protocol.receive_data(data[i : i + 1])
    return protocol.events_received()


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_environment_block(mode: str) -> None:
    p = agi.AgiProtocol()
    events = feed(p, ENV, mode)
    assert len(events) == 1
    req = events[0]
    assert isinstance(req, agi.AgiRequest)
    assert req.args == ("+5511999990001", "second")
    assert req.dnid == "5511999990001"
    assert req.caller_id == "5511988887777"
    assert req.channel == "PJSIP/trunk-00000001"


def test_trailing_data_after_environment_is_a_reply() -> None:
    p = agi.AgiProtocol()
    events = feed(p, ENV + b"200 result=1 (speech) endpos=1234\n200 res", "whole")
    assert isinstance(events[0], agi.AgiRequest)
    assert events[1] == agi.AgiResponse(200, 1, "speech", "result=1 (speech) endpos=1234")
    p.receive_data(b"ult=0\n")
    assert p.events_received() == [agi.AgiResponse(200, 0, None, "result=0")]


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_replies_hangup_and_usage(mode: str) -> None:
    p = agi.AgiProtocol()
    feed(p, ENV, "whole")
    data = (
        b"200 result=-1\n"
        b"510 Invalid or unknown command\n"
        b"520-Invalid command syntax.  Proper usage follows:\n"
        b"Usage: ANSWER\n"
        b"520 End of proper usage.\n"
        b"HANGUP\n"
        b"511 Command Not Permitted on a dead channel or intercept routine\n"
    )
    events = feed(p, data, mode)
    assert events[0] == agi.AgiResponse(200, -1, None, "result=-1")
    assert isinstance(events[1], agi.AgiResponse) and events[1].code == 510
    assert isinstance(events[2], agi.AgiResponse) and events[2].code == 520
    assert "Usage: ANSWER" in events[2].text
    assert events[3] == agi.HangupNotice()
    assert isinstance(events[4], agi.AgiResponse) and events[4].code == 511


def test_eof_before_environment_is_an_error() -> None:
    p = agi.AgiProtocol()
    p.receive_data(b"agi_network: yes\n")
    p.receive_eof()
    events = p.events_received()
    assert isinstance(events[0], agi.ProtocolError)
    assert events[-1] == agi.Closed()


def test_malformed_environment_line() -> None:
    p = agi.AgiProtocol()
    p.receive_data(b"GET / HTTP/1.1\n")
    assert isinstance(p.events_received()[0], agi.ProtocolError)
    p.receive_data(b"more\n")
    assert p.events_received() == []


def test_command_quoting() -> None:
    p = agi.AgiProtocol()
    p.send_command("EXEC", "AudioSocket", "0b5f3a4e-1111-4c43-9a6f-7a1f2b3c4d5e,127.0.0.1:9092")
    p.send_command("SET VARIABLE", "X", 'say "hi" \\ there')
    assert p.data_to_send() == [
        b'EXEC "AudioSocket" "0b5f3a4e-1111-4c43-9a6f-7a1f2b3c4d5e,127.0.0.1:9092"\n',
        b'SET VARIABLE "X" "say \\"hi\\" \\\\ there"\n',
    ]
    with pytest.raises(agi.AgiError):
        p.send_command("EXEC", "Playback", "a\nHANGUP")
    with pytest.raises(agi.AgiError):
        p.send_command("EXEC\nHANGUP")


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    p = agi.AgiProtocol()
    p.receive_data(data)
    p.receive_eof()
    for event in p.events_received():
        assert isinstance(event, (agi.AgiRequest, agi.AgiResponse, agi.HangupNotice, agi.ProtocolError, agi.Closed))


@given(st.dictionaries(st.from_regex(r"agi_[a-z_]{1,12}", fullmatch=True),
                       st.from_regex(r"[ -~]{0,40}", fullmatch=True), max_size=20))
def test_environment_round_trip(env: dict[str, str]) -> None:
    data = "".join(f"{k}: {v}\n" for k, v in env.items()).encode() + b"\n"
    p = agi.AgiProtocol()
    p.receive_data(data)
    (req,) = p.events_received()
    assert isinstance(req, agi.AgiRequest)
    assert req.env == {k: v.strip() for k, v in env.items()}


# -- bounds: every buffer the peer fills has a limit ----------------------------------------------


def _fails_within(p: agi.AgiProtocol, chunks: list[bytes]) -> agi.ProtocolError:
    for chunk in chunks:
        p.receive_data(chunk)
        errors = [e for e in p.events_received() if isinstance(e, agi.ProtocolError)]
        if errors:
            assert p.closed
            return errors[0]
    raise AssertionError("the peer was never cut off")


def test_endless_usage_block_fails_the_session() -> None:
    p = agi.AgiProtocol()
    feed(p, ENV, "whole")
    line = b"520-" + b"x" * 200 + b"\n"
    error = _fails_within(p, [line * 20] * 100)  # 400 KB offered; cut off after about 32 KB
    assert "usage" in error.reason
    assert len(p._usage) == 0 and len(p._buffer) == 0


def test_replies_nobody_asked_for_fail_the_session() -> None:
    p = agi.AgiProtocol()
    feed(p, ENV, "whole")
    error = _fails_within(p, [b"HANGUP\n" * 500])
    assert "replies" in error.reason
    assert len(p.events_received()) == 0


def test_environment_bounded_in_bytes() -> None:
    p = agi.AgiProtocol()
    line = b"agi_x: " + b"v" * 8000 + b"\n"
    error = _fails_within(p, [line] * 20)
    assert "environment" in error.reason


def test_ordinary_usage_block_still_accepted() -> None:
    p = agi.AgiProtocol()
    feed(p, ENV, "whole")
    usage = b"".join(b"520-line %d of usage\n" % i for i in range(60)) + b"520 End of proper usage.\n"
    (event,) = feed(p, usage, "whole")
    assert isinstance(event, agi.AgiResponse) and event.code == 520 and "line 59" in event.text
