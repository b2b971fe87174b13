"""RTP endpoint for ARI External Media (``encapsulation=rtp, transport=udp``).

One UDP socket per call, bound to a port from the configured range. Asterisk's chan_rtp sends the
caller's audio from ``UNICASTRTP_LOCAL_ADDRESS:UNICASTRTP_LOCAL_PORT`` and takes the agent's audio
back on the same address, with no SDP: payload types come from its static table (PROTOCOLS.md
section 2). Both directions therefore use ulaw (PT 0) or alaw (PT 8); res_rtp_asterisk accepts
incoming RTP only with static payload types, so slin16 (PT 118) would be one-way.

Receiving: each datagram is parsed and validated (``sip.rtp``); RTCP on the same port is ignored
(RFC 5761 section 4); RFC 4733 telephone-events (PT 101) become DTMF digits, once per key press
whatever the duplicates (chan_rtp itself sends none: it has no DTMF callbacks, so the Stasis
application reads digits from ARI; a sender that does use PT 101 is understood); audio goes
through a small jitter buffer (``media.jitter``) that reorders, drops duplicates and late packets,
and reports gaps, which are concealed with one frame of silence each so the caller's timeline
toward the model keeps its length. The buffer is drained as packets
arrive, keeping ``JITTER_DEPTH_PACKETS - 1`` packets in hand: that is the reordering it tolerates,
and the only delay it adds.

Sending: one packet per 20 ms frame from the call's pacer, numbered by ``sip.rtp.RtpSender``:
random initial sequence number, timestamp and SSRC (RFC 3550 section 5.1), timestamp advancing by
the frame's samples, marker bit on the first packet (RFC 3551 section 4.1). Packets go to the
address chan_rtp reported; if Asterisk's packets come from elsewhere (NAT between the two), the
endpoint latches onto the address they come from (symmetric RTP, RFC 4961).

Statistics follow RFC 3550 appendix A (``RtpReceiverStatistics``); loss and jitter are exported
when the endpoint closes.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from bridge.ops.metrics import Metrics
from media.codec import ALAW_8K, ULAW_8K, AudioFormat
from media.jitter import JitterBuffer, JitterStatistics, Loss
from sip import rtp

log = logging.getLogger(__name__)

TRANSPORT = "rtp"
FRAME_MS = 20
# Packets held before playout starts: one packet of reordering tolerated, 40 ms added at most.
JITTER_DEPTH_PACKETS = 3
# Past this many packets ahead the reader is considered behind and old slots are skipped.
JITTER_CAPACITY_PACKETS = 16

Clock = Callable[[], float]


class RtpSink(Protocol):
    """Where received audio and digits go (a ``Call``)."""

    def receive_audio(self, payload: bytes) -> None: ...

    def receive_dtmf(self, digit: str) -> None: ...


FORMATS: dict[str, tuple[AudioFormat, rtp.PayloadType]] = {
    "ulaw": (ULAW_8K, rtp.PayloadType.PCMU),
    "alaw": (ALAW_8K, rtp.PayloadType.PCMA),
}


@dataclass(frozen=True, slots=True)
class RtpEndpointStatistics:
    packets_received: int
    packets_sent: int
    malformed: int
    rtcp: int
    foreign: int  # RTP of an unexpected payload type
    dtmf_digits: int
    reception: rtp.ReceptionStatistics
    jitter_buffer: JitterStatistics


class RtpEndpoint(asyncio.DatagramProtocol):
    """The daemon's end of one external-media RTP stream."""

    def __init__(self, format_name: str, *, clock: Clock, metrics: Metrics | None = None,
                 depth: int = JITTER_DEPTH_PACKETS) -> None:
        try:
            self.audio_format, self.payload_type = FORMATS[format_name]
        except KeyError:
            raise ValueError(f"RTP external media supports {sorted(FORMATS)}, not {format_name!r}") from None
        self.clock = clock
        self.metrics = metrics
        self.depth = depth
        self.frame_samples = self.audio_format.samples_for_ms(FRAME_MS)
        self.sender = rtp.RtpSender(self.payload_type, clock_rate_hz=self.audio_format.rate_hz)
        self.jitter = JitterBuffer(capacity_packets=JITTER_CAPACITY_PACKETS, prefetch=depth)
        self.reception = rtp.RtpReceiverStatistics(self.audio_format.rate_hz)
        self.dtmf = rtp.DtmfDetector()
        self.remote: tuple[str, int] | None = None
        self.sink: RtpSink | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._silence = self.audio_format.silence(FRAME_MS)
        self._latched = False
        self._closed = False
        self.packets_received = 0
        self.malformed = 0
        self.rtcp = 0
        self.foreign = 0
        self.dtmf_digits = 0

    # ----------------------------------------------------------------- set-up
    @classmethod
    async def open(
        cls,
        format_name: str,
        host: str,
        port_min: int,
        port_max: int,
        *,
        clock: Clock,
        metrics: Metrics | None = None,
        start: int | None = None,
    ) -> RtpEndpoint:
        """Bind a UDP socket on the first free port of ``port_min..port_max`` from ``start`` on.

        Port 0 as ``port_min`` and ``port_max`` lets the system choose (tests).
        """
        loop = asyncio.get_running_loop()
        span = port_max - port_min + 1
        first = start if start is not None and port_min <= start <= port_max else port_min
        last_error: OSError | None = None
        for offset in range(span):
            port = port_min + (first - port_min + offset) % span
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((host, port))
            except OSError as exc:
                sock.close()
                if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                    raise
                last_error = exc
                continue
            sock.setblocking(False)
            endpoint = cls(format_name, clock=clock, metrics=metrics)
            await loop.create_datagram_endpoint(lambda ep=endpoint: ep, sock=sock)  # type: ignore[misc]
            return endpoint
        raise OSError(errno.EADDRINUSE, f"no free UDP port in {port_min}-{port_max}") from last_error

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    @property
    def local_address(self) -> tuple[str, int]:
        assert self._transport is not None
        name = self._transport.get_extra_info("sockname")
        return str(name[0]), int(name[1])

    def set_remote(self, host: str, port: int) -> None:
        """Where chan_rtp said it listens (``UNICASTRTP_LOCAL_ADDRESS`` / ``_PORT``)."""
        self.remote = (host, port)

    def attach(self, sink: RtpSink) -> None:
        self.sink = sink

    # ----------------------------------------------------------------- receiving
    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self._closed:
            return
        if rtp.is_rtcp(data):
            self.rtcp += 1  # chan_rtp sends RTCP on the RTP port only when told to; nothing to do
            return
        try:
            packet = rtp.RtpPacket.parse(data)
        except rtp.RtpError as exc:
            self.malformed += 1
            if self.malformed == 1:
                log.warning("dropping malformed RTP datagram from %s: %s", addr[0], exc)
            if self.metrics is not None:
                self.metrics.frames_dropped.labels("inbound", "malformed").inc()
            return
        self.packets_received += 1
        source = (str(addr[0]), int(addr[1]))
        if source != self.remote and not self._latched:
            # Symmetric RTP: answer where Asterisk's packets really come from.
            if self.remote is not None:
                log.info("RTP arrives from %s:%d, not the announced %s:%d; sending there",
                         source[0], source[1], self.remote[0], self.remote[1])
            self.remote = source
        self._latched = True
        sink = self.sink
        if packet.payload_type == rtp.PayloadType.TELEPHONE_EVENT:
            for digit in self.dtmf.feed(packet):
                self.dtmf_digits += 1
                if sink is not None:
                    sink.receive_dtmf(digit)
            # Event packets share the audio's sequence numbers (one stream, one SSRC): they go
            # through the statistics and the buffer too, or their numbers would look lost.
        elif packet.payload_type != self.payload_type:
            self.foreign += 1  # comfort noise or a codec we did not ask for
            return
        self.reception.add(packet, self.clock())
        jitter = self.jitter
        late, duplicates = jitter.late, jitter.duplicates
        jitter.put(packet)
        if self.metrics is not None:
            if jitter.late != late:
                self.metrics.frames_dropped.labels("inbound", "late").inc()
            elif jitter.duplicates != duplicates:
                self.metrics.frames_dropped.labels("inbound", "duplicate").inc()
        while len(jitter) >= self.depth:
            item = jitter.get()
            if item is None:
                break
            if sink is None:
                continue
            if isinstance(item, Loss):
                sink.receive_audio(self._conceal())
            elif item.payload_type == self.payload_type and item.payload:
                sink.receive_audio(item.payload)

    def _conceal(self) -> bytes:
        # One frame of silence in place of a lost packet: the model hears a 20 ms gap, not a
        # shortened stream.
        return self._silence

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable while Asterisk's side is not yet (or no longer) there: not fatal.
        log.debug("RTP socket error: %s", exc)

    # ----------------------------------------------------------------- sending
    def send(self, payload: bytes) -> None:
        """Send one frame of encoded audio (``FRAME_MS`` long) to Asterisk."""
        transport = self._transport
        if self._closed or transport is None or self.remote is None:
            return
        samples = len(payload) // self.audio_format.bytes_per_sample
        marker = self.sender.packets_sent == 0
        transport.sendto(self.sender.packetize(payload, samples, marker=marker), self.remote)

    # ----------------------------------------------------------------- teardown
    def statistics(self) -> RtpEndpointStatistics:
        return RtpEndpointStatistics(
            packets_received=self.packets_received,
            packets_sent=self.sender.packets_sent,
            malformed=self.malformed,
            rtcp=self.rtcp,
            foreign=self.foreign,
            dtmf_digits=self.dtmf_digits,
            reception=self.reception.statistics(),
            jitter_buffer=self.jitter.statistics(),
        )

    def close(self) -> None:
        """Close the socket and export loss and jitter. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._transport is not None:
            self._transport.close()
        if self.metrics is not None and self.reception.packets_received:
            stats = self.reception.statistics()
            if stats.lost > 0:
                self.metrics.rtp_lost.inc(stats.lost)
            self.metrics.rtp_jitter.observe(stats.jitter_seconds)
