"""The /ws/audio wire rules: query options, TEXT (base64) and BINARY audio frames."""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st

from sip import ws_audio as wsa


def test_default_options_are_pcm16_24k_text():
    options = wsa.parse_options({})
    assert options == wsa.StreamOptions(wsa.DEFAULT_FORMAT, wsa.FrameKind.TEXT)
    assert options.format.rate_hz == 24000 and options.format.bytes_per_sample == 2


def test_telephony_formats():
    ulaw = wsa.parse_options({"format": "ULAW_8K", "frames": "binary"})
    assert isinstance(ulaw, wsa.StreamOptions)
    assert (ulaw.format.encoding, ulaw.format.rate_hz, ulaw.reply_kind) == (
        wsa.SampleEncoding.ULAW, 8000, wsa.FrameKind.BINARY)
    pcm8 = wsa.parse_options({"format": "pcm16_8k"})
    assert isinstance(pcm8, wsa.StreamOptions) and pcm8.format.rate_hz == 8000


def test_unknown_options_are_refused_by_name():
    bad = wsa.parse_options({"format": "opus_48k"})
    assert isinstance(bad, wsa.InvalidMessage) and "opus_48k" in bad.reason
    assert isinstance(wsa.parse_options({"frames": "json"}), wsa.InvalidMessage)


def test_text_frame_round_trip():
    pcm = bytes(range(256)) * 15  # 3840 bytes: 80 ms at 24 kHz
    text = wsa.audio_text(pcm)
    assert text == base64.b64encode(pcm).decode()
    assert wsa.parse_text(text) == wsa.Audio(pcm, wsa.FrameKind.TEXT)
    assert wsa.parse_text(text + "\n") == wsa.Audio(pcm, wsa.FrameKind.TEXT)


def test_bad_text_frames():
    assert isinstance(wsa.parse_text("not base64!"), wsa.InvalidMessage)
    assert isinstance(wsa.parse_text("ção"), wsa.InvalidMessage)
    half = wsa.parse_text(base64.b64encode(b"\x00" * 961).decode())
    assert isinstance(half, wsa.InvalidMessage) and "961 bytes" in half.reason
    # One byte per sample in mu-law: any length is whole samples.
    ulaw = wsa.FORMATS["ulaw_8k"]
    odd = b"\xff" * 161
    assert wsa.parse_text(base64.b64encode(odd).decode(), ulaw) == wsa.Audio(odd, wsa.FrameKind.TEXT)


def test_binary_frames():
    assert wsa.parse_binary(bytes(960)) == wsa.Audio(bytes(960), wsa.FrameKind.BINARY)
    assert isinstance(wsa.parse_binary(bytes(3)), wsa.InvalidMessage)


@given(st.text(max_size=200))
def test_any_text_gives_audio_or_invalid(text):
    result = wsa.parse_text(text)
    assert isinstance(result, wsa.Audio | wsa.InvalidMessage)
    if isinstance(result, wsa.InvalidMessage):
        assert result.reason in ("text frame is not valid base64",) or "not a whole number" in result.reason


@given(st.binary(max_size=4000).filter(lambda b: len(b) % 2 == 0))
def test_text_parse_inverts_audio_text(pcm):
    assert wsa.parse_text(wsa.audio_text(pcm)) == wsa.Audio(pcm, wsa.FrameKind.TEXT)


def test_close_codes_are_the_documented_ones():
    assert (wsa.CloseCode.NORMAL, wsa.CloseCode.POLICY_VIOLATION, wsa.CloseCode.INTERNAL_ERROR,
            wsa.CloseCode.UNKNOWN_NUMBER) == (1000, 1008, 1011, 4004)
