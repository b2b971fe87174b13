"""RTP (RFC 3550), Asterisk static payload types, RFC 4733 events and RFC 3550 appendix A statistics."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.rtp import (
    CLOCK_RATE_HZ,
    DtmfDetector,
    PayloadType,
    RtpError,
    RtpPacket,
    RtpReceiverStatistics,
    RtpSender,
    TelephoneEvent,
    is_rtcp,
    payload_type_for_format,
    seq_delta,
)

FIXTURE = json.loads(
    (Path(__file__).resolve().parents[1] / "fixtures" / "rtp" / "datagrams.json").read_text()
)


def unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# --- packets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", FIXTURE["valid"], ids=lambda c: c["name"])
def test_golden_datagrams_parse(case: dict[str, Any]) -> None:
    datagram = unhex(case["hex"])
    packet = RtpPacket.parse(datagram)
    assert packet.version == 2
    assert packet.payload_type == case["payload_type"]
    assert packet.marker is case["marker"]
    assert packet.sequence_number == case["sequence_number"]
    assert packet.timestamp == case["timestamp"]
    assert packet.ssrc == case["ssrc"]
    assert packet.csrc == tuple(case["csrc"])
    assert packet.extension_profile == case["extension_profile"]
    assert packet.extension is (case["extension_profile"] is not None)
    assert packet.extension_data == unhex(case["extension_data"])
    assert packet.padding == case["padding"]
    assert packet.payload == unhex(case["payload"])
    # Padding octets other than the count are zero in these datagrams, so the bytes come back exactly.
    assert packet.serialize() == datagram
    if "telephone_event" in case:
        expected = case["telephone_event"]
        event = TelephoneEvent.parse(packet.payload)
        assert (event.event, event.end, event.volume, event.duration, event.digit) == (
            expected["event"],
            expected["end"],
            expected["volume"],
            expected["duration"],
            expected["digit"],
        )


@pytest.mark.parametrize("case", FIXTURE["invalid"], ids=lambda c: c["name"])
def test_golden_datagrams_rejected(case: dict[str, Any]) -> None:
    with pytest.raises(RtpError, match=case["reason"]):
        RtpPacket.parse(unhex(case["hex"]))


def test_payload_is_not_blindly_data_after_12_bytes() -> None:
    datagram = unhex(FIXTURE["valid"][2]["hex"])
    assert RtpPacket.parse(datagram).payload != datagram[12:]


def test_serialize_rejects_out_of_range_fields() -> None:
    for bad in (
        RtpPacket(128, 0, 0, 0),
        RtpPacket(0, 65536, 0, 0),
        RtpPacket(0, 0, 1 << 32, 0),
        RtpPacket(0, 0, 0, -1),
        RtpPacket(0, 0, 0, 0, csrc=tuple(range(16))),
        RtpPacket(0, 0, 0, 0, extension_profile=1, extension_data=b"abc"),
        RtpPacket(0, 0, 0, 0, extension_profile=0x10000),
        RtpPacket(0, 0, 0, 0, padding=256),
    ):
        with pytest.raises(ValueError):
            bad.serialize()


packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence_number=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=400),
    marker=st.booleans(),
    csrc=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
    extension_profile=st.none() | st.integers(0, 0xFFFF),
    extension_data=st.binary(max_size=64).map(lambda b: b[: len(b) - len(b) % 4]),
    padding=st.integers(0, 255),
).map(lambda p: p if p.extension_profile is not None else RtpPacket(**{**_fields(p), "extension_data": b""}))


def _fields(p: RtpPacket) -> dict[str, Any]:
    return {name: getattr(p, name) for name in RtpPacket.__slots__}


@given(packets)
def test_property_roundtrip(packet: RtpPacket) -> None:
    assert RtpPacket.parse(packet.serialize()) == packet


@given(st.binary(max_size=120))
def test_property_arbitrary_bytes_parse_or_rtp_error(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data)
    except RtpError:
        return
    assert len(packet.payload) <= len(data) - 12
    assert RtpPacket.parse(packet.serialize()) == packet


def test_rtcp_demultiplexing() -> None:
    assert is_rtcp(unhex("80c8 0006"))  # sender report
    assert is_rtcp(unhex("81c9 0007"))  # receiver report
    assert not is_rtcp(unhex(FIXTURE["valid"][0]["hex"]))
    assert not is_rtcp(b"\x80")


def test_seq_delta_wraps() -> None:
    assert seq_delta(0, 65535) == 1
    assert seq_delta(65535, 0) == -1
    assert seq_delta(10, 5) == 5
    assert seq_delta(0x8000, 0) == -0x8000


# --- payload types ----------------------------------------------------------------------------


def test_asterisk_static_payload_types() -> None:
    # main/rtp_engine.c ast_rtp_engine_init
    assert (PayloadType.PCMU, PayloadType.PCMA, PayloadType.TELEPHONE_EVENT) == (0, 8, 101)
    assert (PayloadType.SLIN16, PayloadType.SLIN12, PayloadType.SLIN24) == (118, 122, 123)
    assert (PayloadType.SLIN48, PayloadType.SLIN96, PayloadType.SLIN192, PayloadType.OPUS) == (
        126,
        127,
        96,
        107,
    )
    assert payload_type_for_format("ulaw") is PayloadType.PCMU
    assert payload_type_for_format("slin16") is PayloadType.SLIN16
    assert CLOCK_RATE_HZ[PayloadType.SLIN24] == 24000
    assert CLOCK_RATE_HZ[PayloadType.G722] == 8000
    with pytest.raises(ValueError):
        payload_type_for_format("slin")
    assert set(CLOCK_RATE_HZ) == set(PayloadType) - {PayloadType.CISCO_DTMF}


# --- RFC 4733 ---------------------------------------------------------------------------------


@given(st.integers(0, 255), st.booleans(), st.integers(0, 63), st.integers(0, 0xFFFF))
def test_property_telephone_event_roundtrip(event: int, end: bool, volume: int, duration: int) -> None:
    value = TelephoneEvent(event, end, volume, duration)
    assert TelephoneEvent.parse(value.serialize()) == value


def test_telephone_event_rules() -> None:
    assert TelephoneEvent.parse(b"\x0b\x00\x00\xa0").digit == "#"
    assert TelephoneEvent.parse(b"\x10\x00\x00\xa0").digit is None  # flash
    assert TelephoneEvent.parse(b"\x05\x4a\x00\xa0") == TelephoneEvent(5, False, 10, 160)  # R bit ignored
    assert TelephoneEvent.for_digit("D", end=True).serialize() == b"\x0f\x8a\x00\x00"
    for bad in (b"", b"\x01\x02\x03", b"\x01\x02\x03\x04\x05"):
        with pytest.raises(RtpError):
            TelephoneEvent.parse(bad)
    with pytest.raises(ValueError):
        TelephoneEvent(1, False, 64, 0).serialize()
    with pytest.raises(ValueError):
        TelephoneEvent.for_digit("E")


def dtmf_packets(digit: str, start_ts: int, first_seq: int, ssrc: int = 7) -> list[RtpPacket]:
    """The packets one key press produces (RFC 4733 2.5): updates every 20 ms, the end sent three times."""
    out = []
    seq = first_seq
    for i, duration in enumerate((160, 320, 480)):
        event = TelephoneEvent.for_digit(digit, duration=duration)
        out.append(RtpPacket(101, seq % 65536, start_ts, ssrc, event.serialize(), marker=i == 0))
        seq += 1
    for _ in range(3):
        event = TelephoneEvent.for_digit(digit, end=True, duration=640)
        out.append(RtpPacket(101, seq % 65536, start_ts, ssrc, event.serialize()))
        seq += 1
    return out


def test_dtmf_detector_one_digit_per_press() -> None:
    detector = DtmfDetector()
    stream = dtmf_packets("1", 1000, 10) + dtmf_packets("1", 3000, 16) + dtmf_packets("#", 5000, 22)
    audio = RtpPacket(0, 30, 7000, 7, b"\xff" * 160)
    digits = [d for p in [*stream, audio] for d in detector.feed(p)]
    assert digits == ["1", "1", "#"]


def test_dtmf_detector_reordered_and_retransmitted() -> None:
    detector = DtmfDetector()
    packets = dtmf_packets("9", 1000, 65534)  # sequence numbers wrap inside the event
    shuffled = [packets[0], packets[2], packets[1], packets[4], packets[3], packets[5], packets[4]]
    assert [d for p in shuffled for d in detector.feed(p)] == ["9"]


def test_dtmf_detector_lost_end_packets() -> None:
    detector = DtmfDetector()
    first = dtmf_packets("4", 1000, 1)[:3]  # the end packets never arrive
    second = dtmf_packets("2", 2000, 7)
    assert [d for p in first for d in detector.feed(p)] == []
    assert [d for p in second for d in detector.feed(p)] == ["4", "2"]


def test_dtmf_detector_only_end_packet_and_malformed() -> None:
    detector = DtmfDetector()
    assert detector.feed(dtmf_packets("A", 1000, 1)[-1]) == ["A"]
    assert detector.feed(RtpPacket(101, 9, 9000, 7, b"\x01")) == []
    assert detector.malformed == 1
    flash = RtpPacket(101, 10, 9160, 7, TelephoneEvent(16, True, 10, 800).serialize())
    assert detector.feed(flash) == []


# --- sending ----------------------------------------------------------------------------------


def test_sender_numbers_packets_and_wraps() -> None:
    sender = RtpSender(PayloadType.PCMU, ssrc=0x11223344, initial_seq=65534, initial_ts=(1 << 32) - 160)
    datagrams = [sender.packetize(bytes([i]) * 160, 160, marker=i == 0) for i in range(4)]
    parsed = [RtpPacket.parse(d) for d in datagrams]
    assert [p.sequence_number for p in parsed] == [65534, 65535, 0, 1]
    assert [p.timestamp for p in parsed] == [(1 << 32) - 160, 0, 160, 320]
    assert [p.marker for p in parsed] == [True, False, False, False]
    assert {p.ssrc for p in parsed} == {0x11223344}
    assert parsed[2].payload == b"\x02" * 160
    assert (sender.packets_sent, sender.octets_sent) == (4, 640)
    sender.skip(800)
    assert RtpPacket.parse(sender.packetize(b"x", 160)).timestamp == 1280


def test_sender_random_start() -> None:
    a, b = RtpSender(0), RtpSender(0)
    # Random 16/32/32-bit starting points (RFC 3550 5.1); three equal values would be a 2**-80 event.
    assert (a.ssrc, a.sequence_number, a.timestamp) != (b.ssrc, b.sequence_number, b.timestamp)
    assert RtpSender(PayloadType.SLIN16, clock_rate_hz=16000).samples_for_ms(20) == 320
    with pytest.raises(ValueError):
        RtpSender(128)
    with pytest.raises(ValueError):
        RtpSender(0).packetize(b"", -1)


# --- RFC 3550 appendix A statistics ----------------------------------------------------------


def feed(stats: RtpReceiverStatistics, seqs: list[int], start: float = 0.0, ssrc: int = 5) -> None:
    for i, seq in enumerate(seqs):
        stats.add(RtpPacket(0, seq % 65536, 160 * i, ssrc), start + 0.020 * i)


def test_statistics_clean_stream_with_wrap() -> None:
    stats = RtpReceiverStatistics(8000)
    feed(stats, list(range(65530, 65546)))
    s = stats.statistics()
    # A.1: the first packet only starts probation; counting begins at the second.
    assert s.packets_received == 15
    assert s.expected == 15
    assert s.lost == 0
    assert s.extended_highest_sequence == 65536 + 9
    assert s.jitter == 0.0  # perfectly periodic arrival


def test_statistics_loss_and_interval_report() -> None:
    stats = RtpReceiverStatistics(8000)
    seqs = [1, 2, 3, 4, 6, 7, 9, 10, 11]  # 5 and 8 lost
    for seq in seqs:
        stats.add(RtpPacket(0, seq, 160 * seq, 5), 0.020 * seq)
    assert stats.expected == 10  # 2..11
    assert stats.lost == 2
    report = stats.report()
    assert (report.expected_interval, report.received_interval) == (10, 8)
    assert report.fraction_lost == pytest.approx(0.2)
    for seq in range(12, 22):
        stats.add(RtpPacket(0, seq, 160 * seq, 5), 0.020 * seq)
    assert stats.report().fraction_lost == 0.0


def test_statistics_duplicates_make_loss_negative() -> None:
    stats = RtpReceiverStatistics(8000)
    feed(stats, [1, 2, 3, 3, 3, 4])
    assert stats.lost == -2


def test_statistics_jitter_follows_a8() -> None:
    stats = RtpReceiverStatistics(8000)
    arrivals = [0.0, 0.020, 0.045, 0.060, 0.080]  # third packet 5 ms late
    for i, t in enumerate(arrivals):
        stats.add(RtpPacket(0, i, 160 * i, 5), t)
    # Hand-computed: packet 0 is in probation (not counted); transit in ticks relative to packet 1.
    jitter = 0.0
    transits = [t * 8000 - 160 * i for i, t in enumerate(arrivals)][1:]
    for a, b in itertools.pairwise(transits):
        jitter += (abs(b - a) - jitter) / 16
    assert stats.jitter == pytest.approx(jitter)
    assert stats.statistics().jitter_seconds == pytest.approx(jitter / 8000)
    assert jitter > 0


def test_statistics_restart_after_large_jump() -> None:
    stats = RtpReceiverStatistics(8000)
    feed(stats, [100, 101, 102])
    stats.add(RtpPacket(0, 20000, 0, 5), 1.0)  # one bad jump is ignored ...
    assert stats.packets_received == 2
    stats.add(RtpPacket(0, 20001, 160, 5), 1.02)  # ... two in a row are a restart
    assert stats.packets_received == 1
    assert stats.extended_highest_sequence == 20001


def test_statistics_new_ssrc_starts_afresh() -> None:
    stats = RtpReceiverStatistics(8000)
    feed(stats, [1, 2, 3], ssrc=5)
    feed(stats, [900, 901, 902], start=1.0, ssrc=6)
    s = stats.statistics()
    assert (s.ssrc, s.packets_received, s.source_changes) == (6, 2, 1)
    assert RtpReceiverStatistics(8000).statistics().expected == 0
    with pytest.raises(ValueError):
        RtpReceiverStatistics(0)
