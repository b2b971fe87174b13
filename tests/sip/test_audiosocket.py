"""AudioSocket framing: Asterisk include/asterisk/res_audiosocket.h, res/res_audiosocket.c."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from media import g711
from sip.audiosocket import (
    AUDIO_KIND_RATE_HZ,
    Audio,
    AudioSocketError,
    AudioSocketProtocol,
    Closed,
    Dtmf,
    ErrorMessage,
    Event,
    Hangup,
    Kind,
    Message,
    ProtocolError,
    Side,
    State,
    Unknown,
    Uuid,
    audio_kind_for_rate,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "audiosocket"
CALL_UUID = uuid.UUID("4a1c7e1e-3b6f-4a52-9d1e-0c3c4f2a9b10")


def frame(kind: int, payload: bytes = b"") -> bytes:
    # Written out by hand so the tests do not depend on the serializer under test.
    return bytes([kind]) + len(payload).to_bytes(2, "big") + payload


def feed_whole(proto: AudioSocketProtocol, data: bytes) -> list[Event]:
    proto.receive_data(data)
    return proto.events_received()


def feed_bytewise(proto: AudioSocketProtocol, data: bytes) -> list[Event]:
    events: list[Event] = []
    for i in range(len(data)):
        proto.receive_data(data[i : i + 1])
        events += proto.events_received()
    return events


def feed_halves(proto: AudioSocketProtocol, data: bytes) -> list[Event]:
    mid = len(data) // 2
    proto.receive_data(data[:mid])
    proto.receive_data(data[mid:])
    return proto.events_received()


FEEDERS: list[Callable[[AudioSocketProtocol, bytes], list[Event]]] = [feed_whole, feed_bytewise, feed_halves]


@pytest.fixture(params=FEEDERS, ids=lambda f: f.__name__)
def feed(request: pytest.FixtureRequest) -> Callable[[AudioSocketProtocol, bytes], list[Event]]:
    return request.param  # type: ignore[no-any-return]


# --- single frames --------------------------------------------------------------------------


def test_message_serialize_layout() -> None:
    assert Message(Kind.AUDIO, b"\x01\x02").serialize() == b"\x10\x00\x02\x01\x02"
    assert Message(Kind.HANGUP).serialize() == b"\x00\x00\x00"
    # Length is big-endian and counts the payload only.
    assert Message(Kind.AUDIO_SLIN16, bytes(640)).serialize()[:3] == b"\x12\x02\x80"


def test_message_parse_exact_frame() -> None:
    assert Message.parse(b"\x03\x00\x01#") == Message(Kind.DTMF, b"#")
    assert Message.parse(b"\x00\x00\x00") == Message(Kind.HANGUP, b"")


@pytest.mark.parametrize("data", [b"", b"\x10", b"\x10\x00", b"\x10\x00\x02\x01", b"\x10\x00\x01\x01\x02"])
def test_message_parse_rejects_anything_but_one_frame(data: bytes) -> None:
    with pytest.raises(AudioSocketError):
        Message.parse(data)


def test_message_serialize_limits() -> None:
    with pytest.raises(ValueError):
        Message(0x100, b"").serialize()
    with pytest.raises(ValueError):
        Message(Kind.AUDIO, bytes(0x10000)).serialize()
    assert len(Message(Kind.AUDIO, bytes(0xFFFF)).serialize()) == 0xFFFF + 3


@given(st.integers(0, 255), st.binary(max_size=2000))
def test_message_roundtrip(kind: int, payload: bytes) -> None:
    assert Message.parse(Message(kind, payload).serialize()) == Message(kind, payload)


def test_audio_kind_rates() -> None:
    assert AUDIO_KIND_RATE_HZ[Kind.AUDIO] == 8000
    assert AUDIO_KIND_RATE_HZ[Kind.AUDIO_SLIN44] == 44100
    assert AUDIO_KIND_RATE_HZ[Kind.AUDIO_SLIN192] == 192000
    assert [int(k) for k in AUDIO_KIND_RATE_HZ] == list(range(0x10, 0x19))
    for kind, rate in AUDIO_KIND_RATE_HZ.items():
        assert audio_kind_for_rate(rate) is kind
    with pytest.raises(ValueError):
        audio_kind_for_rate(22050)


# --- server side: what Asterisk sends ---------------------------------------------------------


def test_normal_call(feed: Callable[[AudioSocketProtocol, bytes], list[Event]]) -> None:
    data = (
        frame(0x01, CALL_UUID.bytes)
        + frame(0x10, b"\xff" * 160)
        + frame(0x03, b"7")
        + frame(0x12, b"\x01\x00" * 320)
        + frame(0xFF, b"\x02")
    )
    proto = AudioSocketProtocol()
    assert proto.state is State.AWAIT_UUID
    events = feed(proto, data)
    assert events == [
        Uuid(CALL_UUID),
        Audio(Kind.AUDIO, b"\xff" * 160, 8000),
        Dtmf("7"),
        Audio(Kind.AUDIO_SLIN16, b"\x01\x00" * 320, 16000),
        ErrorMessage(2, b"\x02"),
    ]
    assert proto.call_uuid == CALL_UUID
    assert proto.state is State.OPEN
    proto.receive_eof()
    assert proto.events_received() == [Closed()]
    assert proto.closed


def test_trailing_partial_frame_is_kept_until_complete(
    feed: Callable[[AudioSocketProtocol, bytes], list[Event]],
) -> None:
    tail = frame(0x10, b"\x55" * 160)
    proto = AudioSocketProtocol()
    events = feed(proto, frame(0x01, CALL_UUID.bytes) + tail[:50])
    assert events == [Uuid(CALL_UUID)]
    proto.receive_data(tail[50:])
    assert proto.events_received() == [Audio(Kind.AUDIO, b"\x55" * 160, 8000)]


def test_eof_inside_a_frame_is_reported() -> None:
    proto = AudioSocketProtocol()
    proto.receive_data(frame(0x01, CALL_UUID.bytes) + frame(0x10, b"\x00" * 160)[:10])
    proto.receive_eof()
    events = proto.events_received()
    assert events[0] == Uuid(CALL_UUID)
    assert isinstance(events[1], ProtocolError) and "inside a frame" in events[1].reason
    assert events[2] == Closed()


def test_eof_is_reported_once_and_later_input_ignored() -> None:
    proto = AudioSocketProtocol()
    proto.receive_data(frame(0x01, CALL_UUID.bytes))
    proto.receive_eof()
    proto.receive_eof()
    proto.receive_data(frame(0x10, b"\x00\x00"))
    assert proto.events_received() == [Uuid(CALL_UUID), Closed()]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (frame(0x10, bytes(320)), "expected UUID first"),
        (frame(0x03, b"1"), "expected UUID first"),
        (frame(0x01, bytes(15)), "16 bytes"),
        (frame(0x01, bytes(17)), "16 bytes"),
        (frame(0x01, CALL_UUID.bytes) + frame(0x10), "empty payload"),
        (frame(0x01, CALL_UUID.bytes) + frame(0x18), "empty payload"),
        (frame(0x01, CALL_UUID.bytes) + frame(0x03, b"x"), "DTMF"),
        (frame(0x01, CALL_UUID.bytes) + frame(0x03, b"12"), "DTMF"),
        (frame(0x01, CALL_UUID.bytes) + frame(0x03), "DTMF"),
        (frame(0x01, CALL_UUID.bytes) + frame(0x01, CALL_UUID.bytes), "twice"),
    ],
)
def test_protocol_errors(
    feed: Callable[[AudioSocketProtocol, bytes], list[Event]], data: bytes, reason: str
) -> None:
    proto = AudioSocketProtocol()
    # Anything after the offending frame is ignored.
    events = feed(proto, data + frame(0x10, bytes(320)))
    assert isinstance(events[-1], ProtocolError)
    assert reason in events[-1].reason
    assert sum(isinstance(e, ProtocolError) for e in events) == 1
    assert proto.closed
    proto.receive_data(frame(0x10, bytes(320)))
    assert proto.events_received() == []
    proto.receive_eof()
    assert proto.events_received() == [Closed()]


def test_oversize_is_rejected_from_the_header_alone() -> None:
    proto = AudioSocketProtocol(max_payload=1000)
    proto.receive_data(frame(0x01, CALL_UUID.bytes) + b"\x10\x03\xe9")  # 1001 announced, none sent
    events = proto.events_received()
    assert events[0] == Uuid(CALL_UUID)
    assert isinstance(events[1], ProtocolError) and "exceeds" in events[1].reason
    ok = AudioSocketProtocol(max_payload=1000)
    ok.receive_data(frame(0x01, CALL_UUID.bytes) + frame(0x10, bytes(1000)))
    assert ok.events_received()[1] == Audio(Kind.AUDIO, bytes(1000), 8000)


def test_max_payload_bounds() -> None:
    with pytest.raises(ValueError):
        AudioSocketProtocol(max_payload=0)
    with pytest.raises(ValueError):
        AudioSocketProtocol(max_payload=0x10000)


def test_unknown_kind_is_passed_through(feed: Callable[[AudioSocketProtocol, bytes], list[Event]]) -> None:
    proto = AudioSocketProtocol()
    events = feed(proto, frame(0x01, CALL_UUID.bytes) + frame(0x42, b"abc") + frame(0x19) + frame(0x02, b"z"))
    assert events[1:] == [Unknown(0x42, b"abc"), Unknown(0x19, b""), Unknown(0x02, b"z")]
    assert proto.state is State.OPEN


def test_hangup_from_peer_closes() -> None:
    proto = AudioSocketProtocol()
    proto.receive_data(frame(0x01, CALL_UUID.bytes) + frame(0x00) + frame(0x10, b"\x00\x00"))
    assert proto.events_received() == [Uuid(CALL_UUID), Hangup()]
    assert proto.closed


def test_hangup_with_payload_is_still_a_hangup() -> None:
    proto = AudioSocketProtocol()
    proto.receive_data(frame(0x01, CALL_UUID.bytes) + frame(0x00, b"\x01"))
    assert proto.events_received() == [Uuid(CALL_UUID), Hangup()]


def test_hangup_before_uuid_is_a_hangup() -> None:
    proto = AudioSocketProtocol()
    proto.receive_data(frame(0x00))
    assert proto.events_received() == [Hangup()]


def test_all_dtmf_digits() -> None:
    proto = AudioSocketProtocol()
    digits = "0123456789*#ABCD"
    proto.receive_data(frame(0x01, CALL_UUID.bytes) + b"".join(frame(0x03, d.encode()) for d in digits))
    assert proto.events_received()[1:] == [Dtmf(d) for d in digits]


def test_error_message_without_code() -> None:
    proto = AudioSocketProtocol()
    proto.receive_data(frame(0x01, CALL_UUID.bytes) + frame(0xFF))
    assert proto.events_received()[1] == ErrorMessage(None, b"")
    assert not proto.closed


# --- server side: what the daemon sends ------------------------------------------------------


def test_server_sends_audio_and_hangup() -> None:
    proto = AudioSocketProtocol()
    proto.send_audio(b"\x01\x02" * 160)
    proto.send_audio(bytes(960), Kind.AUDIO_SLIN24)
    proto.send_hangup()
    assert proto.data_to_send() == [frame(0x10, b"\x01\x02" * 160), frame(0x13, bytes(960)), b"\x00\x00\x00"]
    assert proto.data_to_send() == []
    assert proto.closed
    with pytest.raises(AudioSocketError):
        proto.send_audio(b"\x00\x00")


def test_server_refuses_what_asterisk_would_drop() -> None:
    # res_audiosocket.c accepts only hangup and audio from the application; a zero-length audio
    # frame is "Invalid message length". Either ends the call, so the protocol refuses to send them.
    proto = AudioSocketProtocol()
    with pytest.raises(ValueError):
        proto.send_audio(b"")
    with pytest.raises(ValueError):
        proto.send_uuid(CALL_UUID)
    with pytest.raises(ValueError):
        proto.send_dtmf("1")
    with pytest.raises(ValueError):
        proto.send_audio(b"\x00\x00", Kind.DTMF)
    assert proto.data_to_send() == []


def test_input_after_own_hangup_is_ignored() -> None:
    proto = AudioSocketProtocol()
    proto.receive_data(frame(0x01, CALL_UUID.bytes))
    proto.send_hangup()
    proto.receive_data(frame(0x10, b"\x00\x00"))
    assert proto.events_received() == [Uuid(CALL_UUID)]


def test_sending_after_peer_closed_is_allowed() -> None:
    # The pacer may tick once more between the peer's EOF and the call's cancellation.
    proto = AudioSocketProtocol()
    proto.receive_eof()
    proto.send_audio(b"\x00\x00")
    assert proto.data_to_send() == [frame(0x10, b"\x00\x00")]


# --- client side (Asterisk's role) ------------------------------------------------------------


def test_client_to_server_conversation() -> None:
    client = AudioSocketProtocol(Side.CLIENT)
    server = AudioSocketProtocol(Side.SERVER)
    assert client.state is State.OPEN
    client.send_uuid(CALL_UUID)
    client.send_audio(b"\x7f" * 160)
    client.send_dtmf("#")
    for chunk in client.data_to_send():
        server.receive_data(chunk)
    assert server.events_received() == [Uuid(CALL_UUID), Audio(Kind.AUDIO, b"\x7f" * 160, 8000), Dtmf("#")]
    server.send_audio(b"\x10\x00" * 320, Kind.AUDIO_SLIN16)
    server.send_hangup()
    client.receive_data(b"".join(server.data_to_send()))
    assert client.events_received() == [Audio(Kind.AUDIO_SLIN16, b"\x10\x00" * 320, 16000), Hangup()]


@pytest.mark.parametrize("kind", [0x01, 0x03, 0xFF, 0x42])
def test_client_rejects_what_asterisk_rejects(kind: int) -> None:
    client = AudioSocketProtocol(Side.CLIENT)
    client.receive_data(frame(kind, b"1"))
    [event] = client.events_received()
    assert isinstance(event, ProtocolError)
    assert "other than hangup or audio" in event.reason


def test_client_rejects_empty_audio() -> None:
    client = AudioSocketProtocol(Side.CLIENT)
    client.receive_data(frame(0x10))
    [event] = client.events_received()
    assert isinstance(event, ProtocolError)


def test_client_dtmf_validation() -> None:
    client = AudioSocketProtocol(Side.CLIENT)
    for bad in ("", "E", "11", "a"):
        with pytest.raises(ValueError):
            client.send_dtmf(bad)


# --- golden fixtures ---------------------------------------------------------------------------


def test_fixture_ulaw_call(feed: Callable[[AudioSocketProtocol, bytes], list[Event]]) -> None:
    # Dial(AudioSocket/host:port/<uuid>/c(ulaw)): µ-law bytes arrive labelled 0x10 (slin 8 kHz).
    data = (FIXTURES / "call_ulaw_8k.bin").read_bytes()
    assert data[:3] == b"\x01\x00\x10"
    proto = AudioSocketProtocol()
    events = feed(proto, data)
    assert events[0] == Uuid(uuid.UUID("4a1c7e1e-3b6f-4a52-9d1e-0c3c4f2a9b10"))
    audio = [e for e in events if isinstance(e, Audio)]
    assert len(audio) == 8
    assert all(e.kind is Kind.AUDIO and len(e.payload) == 160 and e.rate_hz == 8000 for e in audio)
    assert events[6] == Dtmf("5")
    assert data[19 + 5 * 163 : 19 + 5 * 163 + 4] == b"\x03\x00\x015"
    # µ-law speech decodes to a clearly audible level.
    pcm = g711.ulaw_decode(b"".join(e.payload for e in audio)).astype(float)
    assert np.sqrt(np.mean(pcm**2)) > 1000
    assert proto.state is State.OPEN


def test_fixture_slin16_call(feed: Callable[[AudioSocketProtocol, bytes], list[Event]]) -> None:
    data = (FIXTURES / "call_slin16.bin").read_bytes()
    proto = AudioSocketProtocol()
    events = feed(proto, data)
    assert isinstance(events[0], Uuid)
    audio = [e for e in events if isinstance(e, Audio)]
    assert [(e.kind, len(e.payload), e.rate_hz) for e in audio] == [(Kind.AUDIO_SLIN16, 640, 16000)] * 4
    # The payload is little-endian int16 and is carried through untouched.
    frames = [data[19 + i * 643 : 19 + (i + 1) * 643] for i in range(4)]
    assert all(f[:3] == b"\x12\x02\x80" for f in frames)
    assert [e.payload for e in audio] == [f[3:] for f in frames]
    samples = np.frombuffer(b"".join(e.payload for e in audio), dtype="<i2").astype(float)
    assert np.sqrt(np.mean(samples**2)) > 1000  # speech, not silence or byte-swapped noise floor


# --- properties ------------------------------------------------------------------------------

audio_kinds = st.sampled_from(sorted(AUDIO_KIND_RATE_HZ))
client_messages = st.one_of(
    st.builds(
        lambda kind, payload: Audio(kind, payload, AUDIO_KIND_RATE_HZ[kind]),
        audio_kinds,
        st.binary(min_size=1, max_size=700),
    ),
    st.sampled_from(sorted("0123456789*#ABCD")).map(Dtmf),
)


@given(st.uuids(), st.lists(client_messages, max_size=20), st.integers(1, 97))
def test_property_client_stream_roundtrip(call: uuid.UUID, messages: list[Event], chunk: int) -> None:
    client = AudioSocketProtocol(Side.CLIENT)
    client.send_uuid(call)
    for message in messages:
        if isinstance(message, Audio):
            client.send_audio(message.payload, message.kind)
        elif isinstance(message, Dtmf):
            client.send_dtmf(message.digit)
    data = b"".join(client.data_to_send())
    server = AudioSocketProtocol()
    for i in range(0, len(data), chunk):
        server.receive_data(data[i : i + chunk])
    assert server.events_received() == [Uuid(call), *messages]


@given(st.binary(max_size=600), st.integers(1, 64), st.sampled_from(list(Side)))
def test_property_arbitrary_bytes_never_raise(data: bytes, chunk: int, side: Side) -> None:
    proto = AudioSocketProtocol(side, max_payload=300)
    events: list[Event] = []
    for i in range(0, len(data), chunk):
        proto.receive_data(data[i : i + chunk])
        events += proto.events_received()
    proto.receive_eof()
    events += proto.events_received()
    assert events[-1] == Closed()
    errors = [e for e in events if isinstance(e, ProtocolError)]
    assert len(errors) <= 1
    assert events.count(Closed()) == 1
    # Nothing follows an error or a hangup except the final Closed.
    for i, event in enumerate(events):
        if isinstance(event, ProtocolError | Hangup):
            assert events[i + 1 :] == [Closed()]


@given(st.binary(max_size=400))
def test_property_chunking_does_not_change_events(data: bytes) -> None:
    whole = AudioSocketProtocol()
    whole.receive_data(frame(0x01, CALL_UUID.bytes) + data)
    bytewise = AudioSocketProtocol()
    assert feed_bytewise(bytewise, frame(0x01, CALL_UUID.bytes) + data) == whole.events_received()
