"""The RTP endpoint over real loopback UDP: reordering, duplicates, loss, late packets, RFC 4733
digits, malformed datagrams, outgoing numbering, symmetric RTP and port allocation."""

from __future__ import annotations

import asyncio
import itertools
import socket

import pytest

from bridge.asterisk.rtp import JITTER_DEPTH_PACKETS, RtpEndpoint
from bridge.ops.metrics import Metrics
from media import g711
from sip import rtp

SSRC = 0x1234ABCD
SILENCE = bytes([g711.MULAW_SILENCE]) * 160


class Sink:
    def __init__(self) -> None:
        self.audio: list[bytes] = []
        self.digits: list[str] = []

    def receive_audio(self, payload: bytes) -> None:
        self.audio.append(payload)

    def receive_dtmf(self, digit: str) -> None:
        self.digits.append(digit)


def frame(n: int) -> bytes:
    return bytes([n % 200 + 1]) * 160  # distinct, never the silence byte


def packet(seq: int, n: int | None = None, ts: int | None = None, pt: int = 0, payload: bytes | None = None,
           ssrc: int = SSRC) -> bytes:
    n = seq if n is None else n
    return rtp.RtpPacket(pt, seq & 0xFFFF, (ts if ts is not None else 1000 + 160 * n) & 0xFFFFFFFF, ssrc,
                         payload if payload is not None else frame(n)).serialize()


class Harness:
    def __init__(self, endpoint: RtpEndpoint, sock: socket.socket) -> None:
        self.endpoint = endpoint
        self.sock = sock
        self.sink = Sink()
        endpoint.attach(self.sink)

    def _seen(self) -> int:
        e = self.endpoint
        return e.packets_received + e.malformed + e.rtcp

    async def send(self, *datagrams: bytes) -> None:
        """Send and wait until the endpoint has read every datagram."""
        wanted = self._seen() + len(datagrams)
        for d in datagrams:
            self.sock.sendto(d, self.endpoint.local_address)
        async with asyncio.timeout(2):
            while self._seen() < wanted:
                await asyncio.sleep(0.001)

    def close(self) -> None:
        self.endpoint.close()
        self.sock.close()


@pytest.fixture
async def harness():
    metrics = Metrics()
    endpoint = await RtpEndpoint.open("ulaw", "127.0.0.1", 0, 0, clock=lambda: 0.0, metrics=metrics)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    h = Harness(endpoint, sock)
    h.metrics = metrics  # type: ignore[attr-defined]
    yield h
    h.close()


def payload_numbers(audio: list[bytes]) -> list[int | None]:
    """Frame number of each delivered payload, None for a concealed (silent) frame."""
    return [None if a == SILENCE else a[0] - 1 for a in audio]


async def test_in_order_stream_is_delivered_with_depth_minus_one_held(harness):
    await harness.send(*[packet(s) for s in range(10)])
    held = JITTER_DEPTH_PACKETS - 1
    assert payload_numbers(harness.sink.audio) == list(range(10 - held))


async def test_reordered_duplicated_and_lost_packets(harness):
    order = [0, 1, 2, 4, 3, 5, 5, 6, 8, 9, 10, 11, 12, 12, 13, 14]  # 3/4 swapped, 5 and 12 twice, 7 lost
    await harness.send(*[packet(s) for s in order])
    got = payload_numbers(harness.sink.audio)
    held = JITTER_DEPTH_PACKETS - 1
    assert got == [0, 1, 2, 3, 4, 5, 6, None, 8, 9, 10, 11, 12, 13, 14][: 15 - held]
    stats = harness.endpoint.statistics()
    assert stats.jitter_buffer.duplicates == 2
    assert stats.jitter_buffer.lost == 1
    # A packet for a slot already concealed is too late: dropped, not played out of order.
    await harness.send(packet(7))
    assert harness.endpoint.statistics().jitter_buffer.late == 1
    assert payload_numbers(harness.sink.audio)[: 15 - held] == got
    metrics = harness.metrics
    assert metrics.registry.get_sample_value(
        "callbridge_frames_dropped_total", {"direction": "inbound", "reason": "duplicate"}) == 2
    assert metrics.registry.get_sample_value(
        "callbridge_frames_dropped_total", {"direction": "inbound", "reason": "late"}) == 1


async def test_sequence_wrap(harness):
    seqs = [65533, 65534, 65535, 0, 1, 2, 3]
    await harness.send(*[packet(s, n=i) for i, s in enumerate(seqs)])
    held = JITTER_DEPTH_PACKETS - 1
    assert payload_numbers(harness.sink.audio) == list(range(len(seqs) - held))
    assert harness.endpoint.statistics().jitter_buffer.lost == 0


async def test_rfc4733_digit_once_and_no_false_loss(harness):
    ts = 1000 + 160 * 5
    events = []
    seq = 5
    for i, end in ((1, False), (2, False), (3, True), (3, True), (3, True)):
        te = rtp.TelephoneEvent.for_digit("0", end=end, duration=160 * i)
        events.append(packet(seq, ts=ts, pt=rtp.PayloadType.TELEPHONE_EVENT, payload=te.serialize()))
        seq += 1
    audio_after = [packet(s, n=s) for s in range(seq, seq + 6)]
    await harness.send(*[packet(s) for s in range(5)], *events, *audio_after)
    assert harness.sink.digits == ["0"]
    stats = harness.endpoint.statistics()
    # The event packets used sequence numbers 5..9: they are not losses, and play no audio.
    assert stats.jitter_buffer.lost == 0
    assert stats.reception.lost == 0
    assert None not in payload_numbers(harness.sink.audio)
    assert payload_numbers(harness.sink.audio)[:5] == [0, 1, 2, 3, 4]
    assert stats.dtmf_digits == 1


async def test_malformed_datagrams_and_rtcp_are_dropped(harness):
    rtcp_rr = bytes([0x81, 201, 0x00, 0x07]) + bytes(28)
    await harness.send(b"\x80\x00", bytes([0x40]) + bytes(20), rtcp_rr, *[packet(s) for s in range(4)])
    stats = harness.endpoint.statistics()
    assert stats.malformed == 2 and stats.rtcp == 1
    assert payload_numbers(harness.sink.audio) == [0, 1]
    # A payload type other than the stream's (e.g. comfort noise) is not decoded as audio.
    await harness.send(packet(4, pt=rtp.PayloadType.CN, payload=b"\x40"))
    assert harness.endpoint.statistics().foreign == 1


async def test_outgoing_numbering_and_symmetric_rtp(harness):
    endpoint = harness.endpoint
    # Announced address is wrong (NAT): the first packet from Asterisk corrects it.
    endpoint.set_remote("127.0.0.1", 9)
    await harness.send(packet(0))
    for _ in range(5):
        endpoint.send(SILENCE)
    harness.sock.settimeout(1.0)
    got = [rtp.RtpPacket.parse(harness.sock.recv(2048)) for _ in range(5)]
    assert [p.marker for p in got] == [True, False, False, False, False]
    assert len({p.ssrc for p in got}) == 1 and got[0].ssrc != SSRC
    for a, b in itertools.pairwise(got):
        assert b.sequence_number == (a.sequence_number + 1) & 0xFFFF
        assert b.timestamp == (a.timestamp + 160) & 0xFFFFFFFF
    assert all(p.payload_type == 0 and p.payload == SILENCE for p in got)


async def test_port_range_allocation():
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        # The first port of the range is in use: the next one is taken.
        endpoint = await RtpEndpoint.open("alaw", "127.0.0.1", port, port + 1, clock=lambda: 0.0)
        assert endpoint.local_address[1] == port + 1
        assert endpoint.payload_type == rtp.PayloadType.PCMA
        with pytest.raises(OSError, match="no free UDP port"):
            await RtpEndpoint.open("alaw", "127.0.0.1", port, port + 1, clock=lambda: 0.0)
        endpoint.close()
        endpoint.close()  # idempotent
    finally:
        taken.close()


def test_unsupported_format_is_refused():
    with pytest.raises(ValueError, match="slin16"):
        RtpEndpoint("slin16", clock=lambda: 0.0)
