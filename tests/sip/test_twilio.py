"""Twilio Media Streams JSON messages (twilio.com/docs/voice/media-streams/websocket-messages)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from media import g711
from sip.twilio import (
    AppMark,
    AppMedia,
    Clear,
    Connected,
    Dtmf,
    Event,
    InvalidMessage,
    Mark,
    Media,
    MediaFormat,
    Start,
    Stop,
    TwilioCarrier,
    Unknown,
    carrier_mark_message,
    carrier_media_message,
    clear_message,
    connected_message,
    dtmf_message,
    mark_message,
    media_message,
    parse_app_message,
    parse_message,
    start_message,
    stop_message,
)

TRANSCRIPT = Path(__file__).resolve().parents[1] / "fixtures" / "twilio" / "bidirectional_stream.jsonl"
SID = "MZ18ad3ab5a668481ce02b83e7395059f0"


def test_transcript() -> None:
    events = [parse_message(line) for line in TRANSCRIPT.read_text().splitlines()]
    assert events[0] == Connected("Call", "1.0.0")
    start = events[1]
    assert isinstance(start, Start)
    assert start.stream_sid == SID
    assert start.call_sid == "CA0f4b2a4c0e5d4b1c9f7a6e5d4c3b2a10"
    assert start.account_sid == "AC2d7f0b1e9c8a4f6e5d3c2b1a09f8e7d6"
    assert start.tracks == ("inbound",)
    assert start.custom_parameters == {"tenant": "acme", "dialled": "+5511999990001"}
    assert start.media_format == MediaFormat("audio/x-mulaw", 8000, 1)
    assert start.sequence_number == 1
    media = events[2:5]
    assert all(isinstance(m, Media) for m in media)
    assert [(m.track, m.chunk, m.timestamp_ms, len(m.payload)) for m in media if isinstance(m, Media)] == [
        ("inbound", 1, 5, 160),
        ("inbound", 2, 25, 160),
        ("inbound", 3, 45, 160),
    ]
    pcm = g711.ulaw_decode(b"".join(m.payload for m in media if isinstance(m, Media))).astype(float)
    assert np.sqrt(np.mean(pcm**2)) > 1000  # the decoded payload is speech
    assert events[5] == Dtmf("1", "inbound_track", SID, 5)
    assert events[6] == Mark("agent-turn-1", SID, 6)
    assert events[7] == Stop(
        "AC2d7f0b1e9c8a4f6e5d3c2b1a09f8e7d6", "CA0f4b2a4c0e5d4b1c9f7a6e5d4c3b2a10", SID, 7
    )


def test_bytes_frames_are_accepted() -> None:
    assert parse_message(b'{"event":"connected","protocol":"Call","version":"1.0.0"}') == Connected()


def test_tolerant_of_missing_optional_fields_and_int_numbers() -> None:
    text = json.dumps({"event": "media", "media": {"payload": "AAE=", "chunk": 7, "timestamp": 140}})
    assert parse_message(text) == Media("inbound", 7, 140, b"\x00\x01")
    start = parse_message(json.dumps({"event": "start", "streamSid": "MZ1", "start": {}}))
    assert start == Start("MZ1", "", "", ("inbound",), {}, MediaFormat(), None)
    assert parse_message('{"event":"stop"}') == Stop()


def test_unknown_event_is_passed_through() -> None:
    event = parse_message('{"event":"transcription","text":"hi"}')
    assert event == Unknown("transcription", {"event": "transcription", "text": "hi"})


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('"media"', "not a JSON object"),
        ("{}", "'event'"),
        ('{"event": 5}', "'event'"),
        ('{"event":"media"}', "'media'"),
        ('{"event":"media","media":{"payload":5}}', "payload"),
        ('{"event":"media","media":{"payload":"***"}}', "base64"),
        ('{"event":"media","media":{"payload":"AAE"}}', "base64"),
        ('{"event":"media","media":{"payload":"AAE=","chunk":"x"}}', "'chunk'"),
        ('{"event":"media","media":{"payload":"AAE=","chunk":true}}', "'chunk'"),
        ('{"event":"media","media":{"payload":"AAE=","timestamp":1.5}}', "'timestamp'"),
        ('{"event":"start","start":{}}', "streamSid"),
        ('{"event":"start","start":{"streamSid":"MZ1","tracks":"inbound"}}', "tracks"),
        ('{"event":"start","start":{"streamSid":"MZ1","customParameters":[]}}', "customParameters"),
        ('{"event":"dtmf","dtmf":{}}', "'digit'"),
        ('{"event":"mark","mark":{"name":3}}', "'name'"),
        ('{"event":"stop","stop":"x"}', "'stop'"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ],
)
def test_invalid_messages(text: str | bytes, reason: str) -> None:
    event = parse_message(text)
    assert isinstance(event, InvalidMessage)
    assert reason in event.reason
    assert "AAE" not in event.reason  # payloads are never echoed into errors


def test_daemon_serializers_match_twilio_shapes() -> None:
    assert json.loads(media_message(SID, b"\xff\x7f")) == {
        "event": "media",
        "streamSid": SID,
        "media": {"payload": base64.b64encode(b"\xff\x7f").decode()},
    }
    assert json.loads(mark_message(SID, "turn-2")) == {
        "event": "mark",
        "streamSid": SID,
        "mark": {"name": "turn-2"},
    }
    assert json.loads(clear_message(SID)) == {"event": "clear", "streamSid": SID}
    # Identifiers are JSON-escaped, not pasted in.
    assert json.loads(clear_message('a"b'))["streamSid"] == 'a"b'


@given(st.text(max_size=40), st.binary(max_size=400), st.text(max_size=40))
def test_property_daemon_messages_roundtrip(sid: str, payload: bytes, name: str) -> None:
    assert parse_app_message(media_message(sid, payload)) == AppMedia(sid, payload)
    assert parse_app_message(mark_message(sid, name)) == AppMark(sid, name)
    assert parse_app_message(clear_message(sid)) == Clear(sid)


def test_parse_app_message_errors() -> None:
    assert isinstance(parse_app_message("nope"), InvalidMessage)
    assert isinstance(parse_app_message('{"event":"media","streamSid":"x","media":{}}'), InvalidMessage)
    assert isinstance(parse_app_message('{"event":"mark","mark":{"name":"x"}}'), InvalidMessage)
    assert parse_app_message('{"event":"x"}') == Unknown("x", {"event": "x"})


sids = st.text(min_size=1, max_size=40)
seqs = st.none() | st.integers(0, 10**9)
starts = st.builds(
    Start,
    stream_sid=sids,
    call_sid=st.text(max_size=40),
    account_sid=st.text(max_size=40),
    tracks=st.lists(st.sampled_from(["inbound", "outbound"]), min_size=1, max_size=2).map(tuple),
    custom_parameters=st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4),
    media_format=st.builds(MediaFormat, st.text(max_size=20), st.integers(1, 48000), st.integers(1, 2)),
    sequence_number=st.integers(0, 10**9),
)


@given(starts)
def test_property_start_roundtrip(start: Start) -> None:
    text = start_message(
        start.stream_sid,
        start.call_sid,
        start.account_sid,
        tracks=start.tracks,
        custom_parameters=start.custom_parameters,
        media_format=start.media_format,
        sequence_number=start.sequence_number,
    )
    assert parse_message(text) == start


@given(
    sids,
    st.binary(max_size=400),
    st.integers(0, 10**9),
    st.integers(0, 10**9),
    st.sampled_from(["inbound", "outbound"]),
    seqs,
)
def test_property_media_roundtrip(
    sid: str, payload: bytes, chunk: int, ts: int, track: str, seq: int | None
) -> None:
    text = carrier_media_message(sid, payload, chunk=chunk, timestamp_ms=ts, track=track, sequence_number=seq)
    assert parse_message(text) == Media(track, chunk, ts, payload, sid, seq)


@given(sids, st.sampled_from(list("0123456789*#")), st.text(max_size=30), seqs)
def test_property_small_events_roundtrip(sid: str, digit: str, name: str, seq: int | None) -> None:
    assert parse_message(dtmf_message(sid, digit, sequence_number=seq)) == Dtmf(
        digit, "inbound_track", sid, seq
    )
    assert parse_message(carrier_mark_message(sid, name, sequence_number=seq)) == Mark(name, sid, seq)
    assert parse_message(stop_message(sid, "CA1", "AC1", sequence_number=seq)) == Stop("AC1", "CA1", sid, seq)
    assert parse_message(connected_message()) == Connected()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
message_like = st.fixed_dictionaries(
    {
        "event": st.sampled_from(["media", "start", "connected", "dtmf", "mark", "stop", "other"])
        | json_values
    },
    optional={
        "media": st.fixed_dictionaries(
            {}, optional={"payload": json_values | st.just("AAE="), "chunk": json_values}
        )
        | json_values,
        "start": json_values,
        "streamSid": json_values,
        "sequenceNumber": json_values,
        "dtmf": json_values,
        "mark": json_values,
        "stop": json_values,
    },
)


@given(message_like)
def test_property_structured_garbage_gives_events(message: dict[str, Any]) -> None:
    event: Event = parse_message(json.dumps(message))
    assert isinstance(event, Connected | Start | Media | Dtmf | Mark | Stop | Unknown | InvalidMessage)


@given(st.binary(max_size=200) | st.text(max_size=200))
def test_property_arbitrary_frames_give_events(data: bytes | str) -> None:
    assert isinstance(
        parse_message(data), Connected | Start | Media | Dtmf | Mark | Stop | Unknown | InvalidMessage
    )
    assert isinstance(parse_app_message(data), AppMedia | AppMark | Clear | Unknown | InvalidMessage)


def test_carrier_numbers_messages_like_twilio() -> None:
    carrier = TwilioCarrier(SID, "CA1", "AC1")
    texts = [carrier.connected(), carrier.start({"k": "v"})]
    texts += [carrier.media(b"\xff" * 160) for _ in range(3)]
    texts += [carrier.dtmf("9"), carrier.mark("m1"), carrier.stop()]
    events = [parse_message(t) for t in texts]
    assert events[0] == Connected()
    assert isinstance(events[1], Start) and events[1].custom_parameters == {"k": "v"}
    assert [(e.chunk, e.timestamp_ms, e.sequence_number) for e in events[2:5] if isinstance(e, Media)] == [
        (1, 0, 2),
        (2, 20, 3),
        (3, 40, 4),
    ]
    assert events[5] == Dtmf("9", "inbound_track", SID, 5)
    assert events[6] == Mark("m1", SID, 6)
    assert events[7] == Stop("AC1", "CA1", SID, 7)
