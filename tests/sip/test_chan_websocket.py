"""Asterisk chan_websocket control messages (channels/chan_websocket.c)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip import chan_websocket as cw
from sip.chan_websocket import (
    Command,
    ControlFormat,
    DtmfEnd,
    Error,
    InvalidMessage,
    MediaBufferingCompleted,
    MediaMarkProcessed,
    MediaStart,
    MediaXoff,
    MediaXon,
    QueueDrained,
    Status,
    Unknown,
    parse_command,
    parse_event,
)

FIXTURE = json.loads(
    (Path(__file__).resolve().parents[1] / "fixtures" / "chan_websocket" / "events.json").read_text()
)
CONN = "8d4c2f8e-1b7a-4f0e-a1f3-2d9c7b6e5a40"
CHAN_ID = "1763781234.42"


def test_json_transcript() -> None:
    events = [parse_event(text) for text in FIXTURE["json"]]
    assert events == [
        MediaStart(
            CONN,
            f"WebSocket/{CONN}-00000003",
            CHAN_ID,
            "slin16",
            640,
            20,
            {
                "MEDIA_WEBSOCKET_CONNECTION_ID": CONN,
                "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE": "640",
                "TENANT": "acme",
            },
        ),
        MediaXoff(CHAN_ID),
        MediaXon(CHAN_ID),
        MediaMarkProcessed("turn-3", CHAN_ID),
        QueueDrained(CHAN_ID),
        DtmfEnd("7", CHAN_ID),
        MediaBufferingCompleted("", CHAN_ID),
        Status(12, 800, 900, False, False, True, CHAN_ID),
        Error("SET_MEDIA_DIRECTION requires a 'direction' parameter.\n", CHAN_ID),
    ]


def test_plain_transcript() -> None:
    events = [parse_event(text) for text in FIXTURE["plain"]]
    assert events == [
        MediaStart(CONN, f"WebSocket/{CONN}-00000003", CHAN_ID, "slin16", 640, 20, {}),
        MediaXoff(),
        MediaXon(),
        MediaMarkProcessed("turn-3"),
        QueueDrained(),
        DtmfEnd("7", CHAN_ID),
        MediaBufferingCompleted(""),
        Status(12, 800, 900, False, False, True, CHAN_ID),
        Error("PAUSE_MEDIA not supported in passthrough mode", CHAN_ID),
    ]


def test_bytes_and_surrounding_whitespace() -> None:
    assert parse_event(b"  MEDIA_XON\n") == MediaXon()
    assert parse_event(b'\n{"event":"MEDIA_XOFF"}') == MediaXoff()


def test_unknown_events() -> None:
    assert parse_event("NEW_EVENT a:1 b:x") == Unknown("NEW_EVENT", {"a": "1", "b": "x"})
    assert parse_event('{"event":"NEW_EVENT","x":[1]}') == Unknown(
        "NEW_EVENT", {"event": "NEW_EVENT", "x": [1]}
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        b"\xff\xfe",
        "{oops",
        "{}",
        '{"event":3}',
        "MEDIA_START connection_id:x",
        "MEDIA_START connection_id:x channel:c channel_id:i format:ulaw optimal_frame_size:big ptime:20",
        '{"event":"MEDIA_START","connection_id":"x","channel":"c","channel_id":"i","format":"ulaw",'
        '"optimal_frame_size":160,"ptime":20,"channel_variables":[]}',
        "DTMF_END digit:12 channel_id:x",
        "DTMF_END channel_id:x",
        "STATUS channel_id:x queue_length:1 xon_level:800 xoff_level:900 queue_full:maybe bulk_media:false "
        "media_paused:false",
        "MEDIA_XON garbage",
        "{" * 50_000,
    ],
)
def test_invalid_events(text: str | bytes) -> None:
    assert isinstance(parse_event(text), InvalidMessage)


# --- commands ---------------------------------------------------------------------------------

NO_ARG_COMMANDS: list[tuple[Callable[[ControlFormat], str], str]] = [
    (cw.answer, "ANSWER"),
    (cw.hangup, "HANGUP"),
    (cw.flush_media, "FLUSH_MEDIA"),
    (cw.start_media_buffering, "START_MEDIA_BUFFERING"),
    (cw.report_queue_drained, "REPORT_QUEUE_DRAINED"),
    (cw.get_status, "GET_STATUS"),
    (cw.pause_media, "PAUSE_MEDIA"),
    (cw.continue_media, "CONTINUE_MEDIA"),
]


@pytest.mark.parametrize(("build", "name"), NO_ARG_COMMANDS)
def test_simple_commands(build: Callable[[ControlFormat], str], name: str) -> None:
    assert build(ControlFormat.PLAIN) == name
    assert json.loads(build(ControlFormat.JSON)) == {"command": name}
    assert parse_command(build(ControlFormat.JSON), ControlFormat.JSON) == Command(name)


def test_commands_with_arguments() -> None:
    assert cw.mark_media("turn-3", ControlFormat.PLAIN) == "MARK_MEDIA turn-3"
    assert json.loads(cw.mark_media("turn 3")) == {"command": "MARK_MEDIA", "correlation_id": "turn 3"}
    assert cw.stop_media_buffering(fmt=ControlFormat.PLAIN) == "STOP_MEDIA_BUFFERING"
    assert cw.stop_media_buffering("b1", ControlFormat.PLAIN) == "STOP_MEDIA_BUFFERING b1"
    assert json.loads(cw.set_media_direction("in")) == {"command": "SET_MEDIA_DIRECTION", "direction": "in"}
    with pytest.raises(ValueError):
        cw.set_media_direction("sideways")
    with pytest.raises(ValueError):
        cw.control_command("SET_MEDIA_DIRECTION", fmt=ControlFormat.PLAIN, direction="in")
    for bad in ("", "a b", "tab\there", "nl\n"):
        with pytest.raises(ValueError):
            cw.mark_media(bad, ControlFormat.PLAIN)


def test_128_byte_limit() -> None:
    # {"command":"MARK_MEDIA","correlation_id":""} is 44 bytes, leaving 84 for the id.
    assert len(cw.mark_media("x" * 84).encode()) == 128
    with pytest.raises(ValueError, match="128"):
        cw.mark_media("x" * 85)
    assert len(cw.mark_media("x" * 117, ControlFormat.PLAIN)) == 128
    with pytest.raises(ValueError):
        cw.mark_media("x" * 118, ControlFormat.PLAIN)
    with pytest.raises(ValueError):
        cw.mark_media("é" * 60, ControlFormat.PLAIN)  # 120 bytes of UTF-8 plus the name
    assert isinstance(parse_command("MARK_MEDIA " + "x" * 118, ControlFormat.PLAIN), InvalidMessage)


ids = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
plain_ids = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E),
    min_size=1,
    max_size=60,
)


@given(ids)
def test_property_json_mark_roundtrip(correlation_id: str) -> None:
    try:
        text = cw.mark_media(correlation_id)
    except ValueError:
        assert len(json.dumps({"command": "MARK_MEDIA", "correlation_id": correlation_id}).encode()) > 128
        return
    assert parse_command(text, ControlFormat.JSON) == Command("MARK_MEDIA", correlation_id)
    # And Asterisk's echo comes back to the same id.
    echo = cw.mark_processed_event(correlation_id, CHAN_ID, ControlFormat.JSON)
    assert parse_event(echo) == MediaMarkProcessed(correlation_id, CHAN_ID)


@given(plain_ids)
def test_property_plain_mark_roundtrip(correlation_id: str) -> None:
    text = cw.mark_media(correlation_id, ControlFormat.PLAIN)
    assert parse_command(text, ControlFormat.PLAIN) == Command("MARK_MEDIA", correlation_id)
    assert parse_event(
        cw.mark_processed_event(correlation_id, CHAN_ID, ControlFormat.PLAIN)
    ) == MediaMarkProcessed(correlation_id)
    assert parse_event(cw.buffering_completed_event(correlation_id, CHAN_ID, ControlFormat.PLAIN)) == (
        MediaBufferingCompleted(correlation_id)
    )


token = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30)


@given(
    token,
    token,
    token,
    st.sampled_from(["ulaw", "alaw", "slin16", "slin24"]),
    st.integers(0, 10_000),
    st.integers(1, 200),
)
def test_property_media_start_roundtrip(
    conn: str, channel: str, chan_id: str, fmt: str, size: int, ptime: int
) -> None:
    start = MediaStart(conn, channel, chan_id, fmt, size, ptime, {"A": "1"})
    assert parse_event(cw.media_start_event(start, ControlFormat.JSON)) == start
    plain = MediaStart(conn, channel, chan_id, fmt, size, ptime, {})
    assert parse_event(cw.media_start_event(start, ControlFormat.PLAIN)) == plain


@given(
    st.integers(0, 1000), st.booleans(), st.booleans(), st.booleans(), st.sampled_from(list(ControlFormat))
)
def test_property_status_roundtrip(
    length: int, full: bool, bulk: bool, paused: bool, fmt: ControlFormat
) -> None:
    status = Status(length, 800, 900, full, bulk, paused, CHAN_ID)
    assert parse_event(cw.status_event(status, CHAN_ID, fmt)) == status


@given(st.text(min_size=0, max_size=80).map(str.strip), st.sampled_from(list(ControlFormat)))
def test_property_error_roundtrip(text: str, fmt: ControlFormat) -> None:
    assert parse_event(cw.error_event(text, CHAN_ID, fmt)) == Error(text, CHAN_ID)


@given(st.sampled_from(list("0123456789*#ABCD")), st.sampled_from(list(ControlFormat)))
def test_property_dtmf_and_flow_roundtrip(digit: str, fmt: ControlFormat) -> None:
    assert parse_event(cw.dtmf_end_event(digit, CHAN_ID, fmt)) == DtmfEnd(digit, CHAN_ID)
    expected_id = CHAN_ID if fmt is ControlFormat.JSON else None
    assert parse_event(cw.simple_event("MEDIA_XOFF", CHAN_ID, fmt)) == MediaXoff(expected_id)
    assert parse_event(cw.simple_event("QUEUE_DRAINED", CHAN_ID, fmt)) == QueueDrained(expected_id)


@given(st.binary(max_size=200) | st.text(max_size=200))
def test_property_arbitrary_frames_never_raise(data: bytes | str) -> None:
    event = parse_event(data)
    assert type(event).__module__ == "sip.chan_websocket"
    for fmt in ControlFormat:
        assert isinstance(parse_command(data, fmt), Command | InvalidMessage)
