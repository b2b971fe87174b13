"""Fuzzing every wire parser and every peer-controlled field (Hypothesis, bounded time).

For each parser: any input gives an event or the parser's documented error, never anything else;
one message costs no more than ``STALL_SECONDS`` of this thread's CPU time (the event loop would
wait that long), and the memory it allocates while parsing is bounded by a small multiple of the
message itself. Stream protocols are also fed far more than any real peer sends, and what they keep
between reads must stay under a fixed bound. The dialled number, which every transport takes from
its peer (Twilio ``to`` and custom parameters, FreeSWITCH metadata, a WebRTC offer, the ``/ws/audio/{number}``
path, FastAGI arguments, ARI channel fields), is fuzzed through normalisation and tenant matching:
its cost must not grow with its length at all.

Inputs go up to the largest message each transport accepts (aiohttp refuses WebSocket messages
over 256 KB; a datagram is at most 64 KB; a FastAGI line 8 KB). CPU time is measured with
``time.thread_time``, which other processes on a busy machine do not inflate.
"""

from __future__ import annotations

import contextlib
import gc
import json
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sip import agi, ari, audiosocket, chan_websocket, freeswitch, realtime, rtp, twilio, webrtc, ws_audio
from tenants.file import parse_tenants_yaml
from tenants.numbers import NumberError, covering_patterns, normalize_number

STALL_SECONDS = 0.005  # per message: a few milliseconds at most
RETAINED_BYTES = 192 * 1024  # what a stream protocol may keep between reads, whatever it was fed
MAX_WS_MESSAGE = 256 * 1024
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.data_too_large])

# -- inputs ------------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=6)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=6), max_leaves=25)
# Strings a peer chooses the size of: digits (numbers), text, and deep nesting.
huge_strings = st.sampled_from(["9", "+1", "x", "\u00e9", "[", "{\"a\":"]).flatmap(
    lambda unit: st.integers(1, 40_000).map(lambda n: unit * n))
field_values = json_values | huge_strings


def messages(kinds: list[str], kind_key: str = "event") -> st.SearchStrategy[str]:
    """JSON messages of known kinds with fuzzed fields, plus arbitrary JSON and raw text."""
    known = st.builds(
        lambda kind, fields, nested: json.dumps({kind_key: kind, **fields, **nested}),
        st.sampled_from(kinds),
        st.dictionaries(st.text(max_size=16), field_values, max_size=6),
        st.dictionaries(st.sampled_from(["start", "media", "dtmf", "mark", "data", "channel", "stop",
                                         "customParameters", "mediaFormat", "payload", "digit",
                                         "name", "streamSid", "id", "caller", "dialplan"]),
                        st.dictionaries(st.text(max_size=16), field_values, max_size=5) | field_values,
                        max_size=4),
    )
    return known | json_values.map(json.dumps) | st.text(max_size=400) | huge_strings


@contextlib.contextmanager
def timed(what: str, size: int = 0) -> Iterator[None]:
    """This thread's CPU time for the block must stay under the stall budget. The cyclic
    collector is held off meanwhile: its pauses are the whole process's, measured on their own
    (``callbridge_gc_pause_seconds``), not the parser's."""
    gc.disable()
    try:
        started = time.thread_time()
        yield
        spent = time.thread_time() - started
    finally:
        gc.enable()
    assert spent < STALL_SECONDS + size * 1e-8, f"{what}: {spent * 1000:.1f} ms for {size} bytes"


def _size(value: Any) -> int:
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, dict):
        return sum(len(k) + len(v) for k, v in value.items())
    return 0


def parse_once(fn: Callable[..., Any], *args: Any) -> Any:
    """Run one parse: the memory it allocates and its CPU time must stay bounded."""
    size = sum(_size(a) for a in args)
    tracemalloc.start()
    try:
        fn(*args)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 64 * 1024 + 40 * size, f"{fn.__qualname__}: {peak} bytes for a {size}-byte input"
    with timed(fn.__qualname__, size):
        result = fn(*args)
    return result


# -- one message at a time ---------------------------------------------------------------------


@FUZZ
@given(messages(["connected", "start", "media", "dtmf", "mark", "stop", "x"]))
def test_twilio_carrier_messages(text: str) -> None:
    event = parse_once(twilio.parse_message, text)
    assert isinstance(event, twilio.Event.__args__)  # type: ignore[attr-defined]
    app_event = parse_once(twilio.parse_app_message, text)
    assert app_event is not None


@FUZZ
@given(messages(["dtmf", "mark", "x"], kind_key="type") | messages(["dtmf", "mark"]))
def test_freeswitch_messages(text: str) -> None:
    assert isinstance(parse_once(freeswitch.parse_event, text), freeswitch.Event.__args__)  # type: ignore[attr-defined]
    metadata = parse_once(freeswitch.parse_metadata, text)
    assert isinstance(metadata, freeswitch.StreamMetadata | freeswitch.InvalidMessage)
    parse_once(freeswitch.parse_command, text)


@FUZZ
@given(messages(["MEDIA_START", "DTMF_END", "MEDIA_XOFF", "STATUS", "HANGUP"]))
def test_chan_websocket_messages(text: str) -> None:
    assert parse_once(chan_websocket.parse_event, text) is not None
    for fmt in chan_websocket.ControlFormat:
        assert parse_once(chan_websocket.parse_command, text, fmt) is not None


@FUZZ
@given(messages(["StasisStart", "StasisEnd", "ChannelDtmfReceived", "ChannelHangupRequest",
                 "ChannelDestroyed", "ChannelStateChange", "ChannelVarset"], kind_key="type"))
def test_ari_events(text: str) -> None:
    assert isinstance(parse_once(ari.parse_event, text), ari.Event.__args__)  # type: ignore[attr-defined]


@FUZZ
@given(st.text(max_size=2000) | huge_strings, st.binary(max_size=MAX_WS_MESSAGE),
       st.dictionaries(st.sampled_from(["format", "frames", "x"]), st.text(max_size=200) | huge_strings))
def test_ws_audio_frames_and_options(text: str, data: bytes, query: dict[str, str]) -> None:
    for fmt in ws_audio.FORMATS.values():
        assert isinstance(parse_once(ws_audio.parse_text, text, fmt), ws_audio.Audio | ws_audio.InvalidMessage)
        assert isinstance(parse_once(ws_audio.parse_binary, data, fmt), ws_audio.Audio | ws_audio.InvalidMessage)
    assert parse_once(ws_audio.parse_options, query) is not None


# Version 2 headers with the other bits fuzzed, so that most datagrams get past the first check.
rtp_headers = st.binary(min_size=2, max_size=2).map(lambda b: bytes([0x80 | (b[0] & 0x3F)]) + b[1:])


@FUZZ
@given(st.binary(max_size=65_535) | st.builds(lambda head, body: head + body, rtp_headers,
                                              st.binary(max_size=2000)))
def test_rtp_datagrams(datagram: bytes) -> None:
    detector = rtp.DtmfDetector()
    try:
        packet = parse_once(rtp.RtpPacket.parse, datagram)
    except rtp.RtpError:
        return
    parse_once(detector.feed, packet)
    try:
        parse_once(rtp.TelephoneEvent.parse, packet.payload)
    except rtp.RtpError:
        pass


@FUZZ
@given(st.text(max_size=200) | huge_strings)
def test_realtime_event_types(kind: str) -> None:
    assert isinstance(parse_once(realtime.normalize_event_type, kind), str)


sdp_lines = st.lists(
    st.sampled_from(["v=0", "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=candidate:1 1 udp 2122260223 10.0.0.5 5000 typ host",
                     "a=candidate:2 1 udp 1 abc.local 5001 typ host", "a=candidate:3 1 udp 1 ::1 5 typ host",
                     "a=candidate:x"]) | st.text(max_size=80), max_size=40)


@FUZZ
@given(messages(["offer", "dtmf", "hangup", "x"], kind_key="type")
       | st.builds(lambda lines, number: json.dumps({"type": "offer", "sdp": "\r\n".join(["v=0", *lines]),
                                                     "number": number}),
                   sdp_lines, st.text(max_size=40) | huge_strings),
       st.sampled_from([(), ("127.0.0.0/8",), ("10.0.0.0/8", "::1/128")]))
def test_webrtc_offers_and_page_messages(text: str, networks: tuple[str, ...]) -> None:
    offer = parse_once(webrtc.parse_offer, text.encode())
    assert isinstance(offer, webrtc.Offer | webrtc.InvalidMessage)
    if isinstance(offer, webrtc.Offer):
        assert len(offer.number) <= webrtc.MAX_NUMBER_CHARS
        parse_once(webrtc.filter_candidates, offer.sdp, webrtc.parse_networks(networks))
    assert isinstance(parse_once(webrtc.parse_client_message, text), webrtc.ClientMessage.__args__)  # type: ignore[attr-defined]


# -- stream protocols: what they keep between reads -----------------------------------------------


def _retained_after(feed: Callable[[bytes], None], chunks: list[bytes], rounds: int) -> int:
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(rounds):
            for chunk in chunks:
                with timed("stream read", len(chunk)):
                    feed(chunk)
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return current - base


agi_lines = st.lists(
    st.sampled_from([b"520-usage\n", b"HANGUP\n", b"200 result=0\n", b"agi_x: y\n", b"\n", b"510 no\n",
                     b"x" * 9000, b"520 End of proper usage.\n"]) | st.binary(max_size=600),
    min_size=1, max_size=12)


@FUZZ
@given(agi_lines, st.sampled_from([1, 50, 400]))
@example([b"520-" + b"u" * 500 + b"\n"] * 10, 400)  # a usage block that never ends: 2 MB
@example([b"HANGUP\n"] * 12, 400)  # replies nobody collects
def test_fastagi_retains_bounded_memory(lines: list[bytes], rounds: int) -> None:
    protocol = agi.AgiProtocol()
    protocol.receive_data(b"agi_network: yes\n\n")

    def feed(chunk: bytes) -> None:
        protocol.receive_data(chunk)
        for event in protocol.events_received():
            assert isinstance(event, agi.Event.__args__)  # type: ignore[attr-defined]

    retained = _retained_after(feed, [b"".join(lines)], rounds)
    assert retained < RETAINED_BYTES, retained


audiosocket_frames = st.lists(
    st.builds(lambda kind, payload: bytes([kind]) + len(payload).to_bytes(2, "big") + payload,
              st.sampled_from([0x00, 0x01, 0x03, 0x10, 0x11, 0x12, 0x13, 0x16, 0xFF, 0x42]),
              st.binary(max_size=700)) | st.binary(max_size=300),
    min_size=1, max_size=10)


@FUZZ
@given(audiosocket_frames, st.sampled_from([1, 100]))
def test_audiosocket_retains_bounded_memory(frames: list[bytes], rounds: int) -> None:
    protocol = audiosocket.AudioSocketProtocol(audiosocket.Side.SERVER)

    def feed(chunk: bytes) -> None:
        protocol.receive_data(chunk)
        protocol.events_received()

    retained = _retained_after(feed, [b"".join(frames)], rounds)
    assert retained < RETAINED_BYTES, retained


# -- the dialled number, from every transport -----------------------------------------------------

TABLE = parse_tenants_yaml(
    "tenants:\n"
    "  - slug: acme\n    numbers: ['+5511999990001', '1001', '+55119999901*', '10*']\n"
    "  - slug: beta\n    numbers: ['+12125550100', '+1212*']\n"
)
dialled_values = (
    huge_strings
    | st.text(alphabet="0123456789+*#-() ", max_size=300)
    | st.builds(lambda user, host: f"sip:{user}@{host}", st.text(alphabet="0123456789+", max_size=5000),
                st.text(max_size=30))
    | st.text(max_size=300)
)


@FUZZ
@given(dialled_values)
def test_dialled_number_costs_the_same_whatever_its_length(dialled: str) -> None:
    def resolve(value: str) -> Any:
        try:
            number = normalize_number(value)
        except NumberError:
            return None
        assert len(covering_patterns(number)) <= 20
        return TABLE.explain(number)

    tracemalloc.start()
    try:
        resolve(dialled)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"{peak} bytes for a {len(dialled)}-character number"  # not proportional
    with timed("dialled number"):  # no allowance for the length either
        resolve(dialled)
