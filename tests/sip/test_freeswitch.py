"""FreeSWITCH mod_audio_fork (drachtio, jambonz) and mod_audio_stream messages."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.freeswitch import (
    RAW_RATES_HZ,
    ClearMarks,
    Disconnect,
    Dtmf,
    InvalidMessage,
    KillAudio,
    MarkCommand,
    MarkEcho,
    PlayAudio,
    Playback,
    PlaybackCheck,
    StreamAudio,
    StreamMetadata,
    Unknown,
    clear_marks_message,
    disconnect_message,
    dtmf_message,
    kill_audio_message,
    mark_echo_message,
    mark_message,
    metadata_message,
    parse_command,
    parse_event,
    parse_events,
    parse_metadata,
    play_audio_message,
    stream_audio_message,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "freeswitch"


def test_jambonz_listen_metadata() -> None:
    meta = parse_metadata((FIXTURES / "jambonz_listen_metadata.json").read_text())
    assert isinstance(meta, StreamMetadata)
    assert meta.dialled == "+5511999990001"
    assert meta.caller == "+5511988887777"
    assert meta.call_id == "b7d1f0a2-4c3e-4f7a-9e61-2f5a8c9d0e11"  # callSid before callId
    assert meta.sample_rate_hz == 16000
    assert meta.mix_type == "mono"
    assert meta.fields["caller_name"] == "Maria"  # extras are kept


def test_drachtio_example_metadata() -> None:
    meta = parse_metadata((FIXTURES / "drachtio_audio_fork_metadata.json").read_bytes())
    assert isinstance(meta, StreamMetadata)
    assert (meta.dialled, meta.caller, meta.call_id) == (
        "6173333456",
        "2061236666",
        "a84b4c76e66710@pc33.example.com",
    )
    assert meta.sample_rate_hz is None and meta.mix_type is None


@pytest.mark.parametrize(
    ("fields", "dialled", "rate"),
    [
        ({"destination_number": "1000", "sample_rate": "16k"}, "1000", 16000),
        ({"to": 5511999990001, "sampleRate": "8000"}, "5511999990001", 8000),
        ({"to": "", "dialled": "200", "sampleRate": "fast"}, "200", None),
        ({"to": None, "sampleRate": -8000}, None, None),
        ({"sampleRate": True}, None, None),
        ({}, None, None),
    ],
)
def test_metadata_key_variants(fields: dict[str, object], dialled: str | None, rate: int | None) -> None:
    meta = parse_metadata(metadata_message(fields))
    assert isinstance(meta, StreamMetadata)
    assert (meta.dialled, meta.sample_rate_hz) == (dialled, rate)


@pytest.mark.parametrize("text", ["hello", "[1]", b"\xff", "", "null"])
def test_metadata_not_a_json_object(text: str | bytes) -> None:
    result = parse_metadata(text)
    assert isinstance(result, InvalidMessage) and result.reason.startswith("metadata")


def test_events_from_freeswitch() -> None:
    # lws_glue.cpp send_mark_event writes a space after the colon; the parser does not care.
    assert parse_event('{"type": "mark", "data": {"name":"turn-1", "event": "playout"}}') == MarkEcho(
        "turn-1", False
    )
    assert parse_event('{"type": "mark", "data": {"name":"turn-2", "event": "cleared"}}') == MarkEcho(
        "turn-2", True
    )
    assert parse_event('{"event":"dtmf","dtmf":"5","duration":1280}') == Dtmf("5", 1280)
    assert parse_event('{"type":"dtmf","data":{"digit":"#"}}') == Dtmf("#", None)
    assert parse_event('{"event":"dtmf","dtmf":"1","duration":"640"}') == Dtmf("1", 640)
    assert parse_event('{"type":"playDone","data":{"id":"x"}}') == Unknown(
        "playDone", {"type": "playDone", "data": {"id": "x"}}
    )


@pytest.mark.parametrize(
    "text",
    [
        "nope",
        "[]",
        "{}",
        '{"type":1}',
        '{"type":"mark"}',
        '{"type":"mark","data":{"name":1}}',
        '{"event":"dtmf"}',
        '{"event":"dtmf","dtmf":"12"}',
    ],
)
def test_invalid_events(text: str) -> None:
    assert isinstance(parse_event(text), InvalidMessage)


@given(st.text(min_size=1, max_size=30), st.booleans())
def test_property_mark_echo_roundtrip(name: str, cleared: bool) -> None:
    assert parse_event(mark_echo_message(name, cleared=cleared)) == MarkEcho(name, cleared)


@given(st.sampled_from(list("0123456789*#ABCD")), st.none() | st.integers(0, 100_000))
def test_property_dtmf_roundtrip(digit: str, duration: int | None) -> None:
    assert parse_event(dtmf_message(digit, duration)) == Dtmf(digit, duration)


def test_play_audio_shape() -> None:
    audio = b"\x01\x00\xff\x7f"
    assert json.loads(play_audio_message(audio, 16000, text_content="Hi")) == {
        "type": "playAudio",
        "data": {
            "audioContentType": "raw",
            "sampleRate": 16000,
            "audioContent": base64.b64encode(audio).decode(),
            "textContent": "Hi",
        },
    }
    wav = json.loads(play_audio_message(b"RIFF", 0, content_type="wave"))["data"]
    assert "sampleRate" not in wav and wav["audioContentType"] == "wave"
    with pytest.raises(ValueError):
        play_audio_message(audio, 22050)
    with pytest.raises(ValueError):
        play_audio_message(audio, 8000, content_type="mp3")


def test_stream_audio_shape() -> None:
    assert json.loads(stream_audio_message(b"\x00\x01", 24000)) == {
        "type": "streamAudio",
        "data": {"audioDataType": "raw", "sampleRate": 24000, "audioData": "AAE="},
    }
    with pytest.raises(ValueError):
        stream_audio_message(b"", 11025)
    with pytest.raises(ValueError):
        stream_audio_message(b"", 8000, data_type="flac")
    assert parse_command(stream_audio_message(b"\xff", 8000, data_type="pcmu")) == StreamAudio(
        b"\xff", 8000, "pcmu"
    )


def test_control_commands() -> None:
    assert parse_command(kill_audio_message()) == KillAudio()
    assert parse_command(clear_marks_message()) == ClearMarks()
    assert parse_command(disconnect_message()) == Disconnect()
    assert parse_command(mark_message("turn-7")) == MarkCommand("turn-7")
    assert json.loads(mark_message("a b")) == {"type": "mark", "data": {"name": "a b"}}
    for bad in ("", 'a"b', "a\\b", "a\nb"):
        with pytest.raises(ValueError):
            mark_message(bad)


@pytest.mark.parametrize(
    "text",
    [
        "x",
        '{"type":2}',
        '{"type":"playAudio"}',
        '{"type":"playAudio","data":{"audioContent":"AA=="}}',
        '{"type":"playAudio","data":{"audioContentType":"raw","audioContent":"%%%"}}',
        '{"type":"streamAudio","data":{"audioDataType":"raw","audioData":5}}',
        '{"type":"streamAudio","data":{"audioData":"AA=="}}',
        '{"type":"mark","data":{}}',
    ],
)
def test_invalid_commands(text: str) -> None:
    assert isinstance(parse_command(text), InvalidMessage)


def test_unknown_command() -> None:
    assert parse_command('{"type":"transcription","data":{}}') == Unknown(
        "transcription", {"type": "transcription", "data": {}}
    )


@given(st.binary(max_size=600), st.sampled_from(sorted(RAW_RATES_HZ)), st.none() | st.text(max_size=20))
def test_property_audio_commands_roundtrip(audio: bytes, rate: int, text: str | None) -> None:
    assert parse_command(play_audio_message(audio, rate, text_content=text)) == PlayAudio(
        audio, rate, "raw", text
    )
    assert parse_command(stream_audio_message(audio, rate)) == StreamAudio(audio, rate, "raw")


@given(st.binary(max_size=200) | st.text(max_size=200))
def test_property_arbitrary_frames_never_raise(data: bytes | str) -> None:
    assert isinstance(parse_metadata(data), StreamMetadata | InvalidMessage)
    assert isinstance(parse_event(data), MarkEcho | Dtmf | Unknown | InvalidMessage)
    parse_command(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)


@given(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["playAudio", "streamAudio", "mark", "dtmf", "killAudio"]) | json_values},
        optional={"data": json_values, "event": json_values, "dtmf": json_values, "duration": json_values},
    )
)
def test_property_structured_garbage(message: dict[str, object]) -> None:
    text = json.dumps(message)
    parse_event(text)
    parse_command(text)
    assert isinstance(parse_metadata(text), StreamMetadata)


# --- playback per module build ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "playback"),
    [("stream", Playback.STREAM), ("files", Playback.FILES), ("FILES", None), (1, None), (None, None)],
)
def test_metadata_playback(value: object, playback: Playback | None) -> None:
    meta = parse_metadata(metadata_message({"to": "1000", "playback": value}))
    assert isinstance(meta, StreamMetadata) and meta.playback == playback
    meta = parse_metadata(metadata_message({"to": "1000"}))
    assert isinstance(meta, StreamMetadata) and meta.playback is None


def test_file_chunks_carry_their_mark() -> None:
    # The module passes the data object, less the audio, in its play event: the mark rides there.
    play = json.loads(play_audio_message(b"\x00\x00", 16000, mark="cb-3"))["data"]
    assert play["mark"] == "cb-3" and play["sampleRate"] == 16000
    assert parse_command(play_audio_message(b"\x01\x00", 8000, mark="cb-4")) == PlayAudio(
        b"\x01\x00", 8000, "raw", None, "cb-4"
    )
    assert parse_command(stream_audio_message(b"\x01\x00", 16000, mark="cb-5")) == StreamAudio(
        b"\x01\x00", 16000, "raw", "cb-5"
    )
    assert "mark" not in json.loads(stream_audio_message(b"", 8000))["data"]
    for bad in ("", 'a"b', "a\\b"):
        with pytest.raises(ValueError):
            play_audio_message(b"", 8000, mark=bad)
        with pytest.raises(ValueError):
            stream_audio_message(b"", 8000, mark=bad)


def test_joined_text_frames() -> None:
    # drachtio's AudioPipe::bufferForSending appends queued text: two send_text in one frame.
    joined = '{"type":"mark","data":{"name":"cb-2","event":"cleared"}}{"event":"dtmf","dtmf":"5"}'
    assert parse_events(joined) == [MarkEcho("cb-2", True), Dtmf("5", None)]
    assert parse_events(' {"event":"dtmf","dtmf":"1"}\n') == [Dtmf("1", None)]
    assert parse_events(b'{"event":"dtmf","dtmf":"#"}') == [Dtmf("#", None)]
    assert parse_events('{"type":"x"}') == [Unknown("x", {"type": "x"})]
    # A bad message among good ones spoils the frame; so does half a message.
    for bad in ('{"event":"dtmf","dtmf":"1"} nope', '{"event":"dtmf"', "", "  ", b"\xff{}"):
        assert len(parse_events(bad)) == 1 and isinstance(parse_events(bad)[0], InvalidMessage)
    assert parse_events('{"event":"dtmf","dtmf":"12"}') == [InvalidMessage("dtmf without a one-character digit")]


@given(st.lists(st.sampled_from(list("0123456789*#")), min_size=1, max_size=6))
def test_property_joined_dtmf(digits: list[str]) -> None:
    assert parse_events("".join(dtmf_message(d) for d in digits)) == [Dtmf(d, None) for d in digits]


@given(st.binary(max_size=200) | st.text(max_size=200))
def test_property_joined_frames_never_raise(data: bytes | str) -> None:
    events = parse_events(data)
    assert events and all(isinstance(e, MarkEcho | Dtmf | Unknown | InvalidMessage) for e in events)


def test_playback_check() -> None:
    check = PlaybackCheck(2.0)
    assert not check.failed(100.0)  # nothing placed yet: no verdict
    check.mark_placed(10.0)
    check.mark_placed(11.0)  # the first mark starts the wait; later ones do not move it
    assert not check.failed(11.99)
    assert check.failed(12.0)
    check.echoed()
    assert check.confirmed and not check.failed(50.0)
    check.cleared()  # once confirmed, a clear changes nothing
    check.mark_placed(60.0)
    assert not check.failed(100.0)


def test_playback_check_clear_and_restart() -> None:
    check = PlaybackCheck(3.0)
    check.mark_placed(0.0)
    check.cleared()  # barge-in before any echo: wait again from the next mark
    assert not check.failed(10.0)
    check.mark_placed(10.0)
    assert check.failed(13.0)
    check.restart()  # after switching how audio is sent
    assert not check.failed(20.0) and not check.confirmed
    check.within = 1.0
    check.mark_placed(20.0)
    assert check.failed(21.0)
