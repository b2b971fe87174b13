"""RTP packets (RFC 3550), Asterisk's static payload types, RFC 4733 DTMF and receiver statistics.

Used for ARI External Media with ``encapsulation=rtp, transport=udp`` (``channels/chan_rtp.c``):
Asterisk sends one RTP stream without SDP, with payload types from its static table
(``main/rtp_engine.c`` ``ast_rtp_engine_init``), and expects the same back at a 20 ms cadence with a
steady sequence number and timestamp. Signed linear over RTP is big-endian (RFC 3551 section 4.5.11;
``ast_frame_byteswap_be`` in ``res/res_rtp_asterisk.c``).

Everything here is pure: one datagram in, one value out; arrival times are passed in, never read.
"""

from __future__ import annotations

import collections
import enum
import secrets
import struct
from dataclasses import dataclass

RTP_VERSION = 2
HEADER_BYTES = 12
_SEQ_MOD = 1 << 16
_TS_MOD = 1 << 32
_HEADER = struct.Struct("!BBHII")


class RtpError(ValueError):
    """A datagram or payload is not valid RTP / RFC 4733; the datagram should be dropped and counted."""


class PayloadType(enum.IntEnum):
    """Asterisk's static payload-type table (main/rtp_engine.c), audio entries."""

    PCMU = 0
    GSM = 3
    G723 = 4
    PCMA = 8
    G722 = 9
    L16_STEREO = 10  # RFC 3551: L16 44.1 kHz stereo
    L16 = 11  # RFC 3551: L16 44.1 kHz mono
    CN = 13
    G729 = 18
    SLIN192 = 96
    ILBC = 97
    TELEPHONE_EVENT = 101  # RFC 4733 (Asterisk: AST_RTP_DTMF)
    OPUS = 107
    SLIN16 = 118
    CISCO_DTMF = 121
    SLIN12 = 122
    SLIN24 = 123
    SLIN32 = 124
    SLIN44 = 125
    SLIN48 = 126
    SLIN96 = 127


CLOCK_RATE_HZ: dict[PayloadType, int] = {
    PayloadType.PCMU: 8000,
    PayloadType.GSM: 8000,
    PayloadType.G723: 8000,
    PayloadType.PCMA: 8000,
    PayloadType.G722: 8000,  # RFC 3551 4.5.2: G.722 samples at 16 kHz but its RTP clock runs at 8 kHz
    PayloadType.L16_STEREO: 44100,
    PayloadType.L16: 44100,
    PayloadType.CN: 8000,
    PayloadType.G729: 8000,
    PayloadType.SLIN192: 192000,
    PayloadType.ILBC: 8000,
    PayloadType.TELEPHONE_EVENT: 8000,
    PayloadType.OPUS: 48000,  # RFC 7587: always 48 kHz
    PayloadType.SLIN16: 16000,
    PayloadType.SLIN12: 12000,
    PayloadType.SLIN24: 24000,
    PayloadType.SLIN32: 32000,
    PayloadType.SLIN44: 44100,
    PayloadType.SLIN48: 48000,
    PayloadType.SLIN96: 96000,
}

# ARI externalMedia `format` names for RTP. Plain "slin" (8 kHz) has no static type that chan_rtp
# uses, so an 8 kHz stream is ulaw or alaw.
FORMAT_PAYLOAD_TYPE: dict[str, PayloadType] = {
    "ulaw": PayloadType.PCMU,
    "alaw": PayloadType.PCMA,
    "g722": PayloadType.G722,
    "opus": PayloadType.OPUS,
    "slin12": PayloadType.SLIN12,
    "slin16": PayloadType.SLIN16,
    "slin24": PayloadType.SLIN24,
    "slin32": PayloadType.SLIN32,
    "slin44": PayloadType.SLIN44,
    "slin48": PayloadType.SLIN48,
    "slin96": PayloadType.SLIN96,
    "slin192": PayloadType.SLIN192,
}


def payload_type_for_format(name: str) -> PayloadType:
    """The payload type Asterisk uses on an external-media RTP stream of format ``name``."""
    try:
        return FORMAT_PAYLOAD_TYPE[name]
    except KeyError:
        raise ValueError(f"no static RTP payload type for Asterisk format {name!r}") from None


def is_rtcp(datagram: bytes) -> bool:
    """RFC 5761 section 4: on a shared port, a second byte of 192..223 marks RTCP (SR=200, RR=201, ...)."""
    return len(datagram) >= 2 and 192 <= datagram[1] <= 223


def seq_delta(a: int, b: int) -> int:
    """Signed distance from sequence number ``b`` to ``a`` modulo 2**16, in -32768..32767."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet (RFC 3550 section 5.1). ``padding`` is the number of padding octets (0 = none)."""

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension_profile: int | None = None
    extension_data: bytes = b""
    padding: int = 0

    version = RTP_VERSION

    @property
    def extension(self) -> bool:
        return self.extension_profile is not None

    @classmethod
    def parse(cls, datagram: bytes) -> RtpPacket:
        """Parse one datagram; raise :class:`RtpError` if it is not a well-formed RTP packet."""
        size = len(datagram)
        if size < HEADER_BYTES:
            raise RtpError(f"{size} bytes is shorter than the RTP header")
        first, second, seq, ts, ssrc = _HEADER.unpack_from(datagram)
        if first >> 6 != RTP_VERSION:
            raise RtpError(f"RTP version {first >> 6}, expected 2")
        pos = HEADER_BYTES
        csrc_count = first & 0x0F
        if csrc_count:
            end = pos + 4 * csrc_count
            if end > size:
                raise RtpError(f"{csrc_count} CSRCs do not fit in {size} bytes")
            csrc = struct.unpack_from(f"!{csrc_count}I", datagram, pos)
            pos = end
        else:
            csrc = ()
        extension_profile: int | None = None
        extension_data = b""
        if first & 0x10:
            # RFC 3550 5.3.1: 16-bit profile, 16-bit length in 32-bit words, then the words.
            if pos + 4 > size:
                raise RtpError("header extension is cut short")
            extension_profile, words = struct.unpack_from("!HH", datagram, pos)
            end = pos + 4 + 4 * words
            if end > size:
                raise RtpError(f"header extension of {words} words does not fit")
            extension_data = bytes(datagram[pos + 4 : end])
            pos = end
        end = size
        padding = 0
        if first & 0x20:
            # RFC 3550 5.1: the last octet counts the padding, itself included.
            padding = datagram[-1]
            if padding == 0 or pos + padding > size:
                raise RtpError(f"invalid padding length {padding}")
            end -= padding
        return cls(
            payload_type=second & 0x7F,
            sequence_number=seq,
            timestamp=ts,
            ssrc=ssrc,
            payload=bytes(datagram[pos:end]),
            marker=bool(second & 0x80),
            csrc=csrc,
            extension_profile=extension_profile,
            extension_data=extension_data,
            padding=padding,
        )

    def serialize(self) -> bytes:
        if not 0 <= self.payload_type <= 0x7F:
            raise ValueError(f"payload type {self.payload_type} outside 0..127")
        if len(self.csrc) > 15:
            raise ValueError("at most 15 CSRCs")
        if not 0 <= self.padding <= 0xFF:
            raise ValueError(f"padding {self.padding} outside 0..255")
        first = RTP_VERSION << 6 | len(self.csrc)
        if self.padding:
            first |= 0x20
        if self.extension_profile is not None:
            first |= 0x10
        second = self.payload_type | (0x80 if self.marker else 0)
        try:
            parts = [_HEADER.pack(first, second, self.sequence_number, self.timestamp, self.ssrc)]
            if self.csrc:
                parts.append(struct.pack(f"!{len(self.csrc)}I", *self.csrc))
            if self.extension_profile is not None:
                if len(self.extension_data) % 4:
                    raise ValueError("extension data must be a whole number of 32-bit words")
                parts.append(struct.pack("!HH", self.extension_profile, len(self.extension_data) // 4))
                parts.append(self.extension_data)
        except struct.error as exc:
            raise ValueError(f"RTP header field out of range: {exc}") from None
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        return b"".join(parts)


# --- RFC 4733 telephone events -------------------------------------------------------------------

# RFC 4733 section 3.2: events 0-9 are the digits, 10 '*', 11 '#', 12-15 'A'-'D', 16 flash.
EVENT_DIGITS = "0123456789*#ABCD"


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """The 4-byte RFC 4733 section 2.3 payload.

    ``volume`` is the power in -dBm0 (0..63); ``duration`` is in RTP clock ticks since the event began.
    """

    event: int
    end: bool
    volume: int
    duration: int

    @property
    def digit(self) -> str | None:
        return EVENT_DIGITS[self.event] if self.event < len(EVENT_DIGITS) else None

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        # A payload longer than one block only occurs with RFC 2198 redundancy, which has its own
        # payload type; here the block must be exactly four bytes.
        if len(payload) != 4:
            raise RtpError(f"telephone-event payload of {len(payload)} bytes, expected 4")
        event, flags, duration = struct.unpack("!BBH", payload)
        return cls(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)

    @classmethod
    def for_digit(
        cls, digit: str, *, end: bool = False, volume: int = 10, duration: int = 0
    ) -> TelephoneEvent:
        index = EVENT_DIGITS.find(digit) if len(digit) == 1 else -1
        if index < 0:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        return cls(index, end, volume, duration)

    def serialize(self) -> bytes:
        if not 0 <= self.volume <= 0x3F:
            raise ValueError(f"volume {self.volume} outside 0..63")
        try:
            return struct.pack("!BBH", self.event, (0x80 if self.end else 0) | self.volume, self.duration)
        except struct.error as exc:
            raise ValueError(f"telephone-event field out of range: {exc}") from None


class DtmfDetector:
    """Turns RFC 4733 packets into one digit per key press.

    All packets of one event share its RTP timestamp (RFC 4733 section 2.5.1.2) and the end packet is
    sent three times (section 2.5.1.4). A digit is reported when its end packet first arrives, or
    when a later event starts while the earlier one never ended (its end packets were lost). Later
    packets of an event already reported are ignored.
    """

    _REMEMBERED_EVENTS = 32

    def __init__(self, payload_type: int = PayloadType.TELEPHONE_EVENT) -> None:
        self.payload_type = payload_type
        self._reported: collections.deque[tuple[int, int]] = collections.deque(maxlen=self._REMEMBERED_EVENTS)
        self._pending: tuple[int, int, str] | None = None  # (ssrc, timestamp, digit) of an open event
        self.malformed = 0

    def feed(self, packet: RtpPacket) -> list[str]:
        """Digits completed by this packet (usually none, sometimes one, at most two)."""
        if packet.payload_type != self.payload_type:
            return []
        try:
            event = TelephoneEvent.parse(packet.payload)
        except RtpError:
            self.malformed += 1
            return []
        key = (packet.ssrc, packet.timestamp)
        if key in self._reported:
            return []
        digits: list[str] = []
        pending = self._pending
        if pending is not None and (pending[0], pending[1]) != key:
            # A new event began while the previous one never ended: its end packets were lost.
            self._reported.append((pending[0], pending[1]))
            digits.append(pending[2])
            self._pending = None
        digit = event.digit
        if digit is None:  # flash-hook and non-DTMF events
            return digits
        if event.end:
            self._reported.append(key)
            self._pending = None
            digits.append(digit)
        else:
            self._pending = (packet.ssrc, packet.timestamp, digit)
        return digits


# --- sending --------------------------------------------------------------------------------------


class RtpSender:
    """Numbers outgoing packets: sequence mod 2**16, timestamp mod 2**32.

    Both start at random values unless given (RFC 3550 section 5.1).
    """

    def __init__(
        self,
        payload_type: int,
        ssrc: int | None = None,
        clock_rate_hz: int = 8000,
        initial_seq: int | None = None,
        initial_ts: int | None = None,
    ) -> None:
        if not 0 <= payload_type <= 0x7F:
            raise ValueError(f"payload type {payload_type} outside 0..127")
        self.payload_type = payload_type
        self.ssrc = secrets.randbits(32) if ssrc is None else ssrc
        self.clock_rate_hz = clock_rate_hz
        self.sequence_number = (secrets.randbits(16) if initial_seq is None else initial_seq) % _SEQ_MOD
        self.timestamp = (secrets.randbits(32) if initial_ts is None else initial_ts) % _TS_MOD
        self.packets_sent = 0
        self.octets_sent = 0  # payload octets, as RTCP SR counts them

    def packetize(self, payload: bytes, samples: int, marker: bool = False) -> bytes:
        """One datagram carrying ``payload`` (``samples`` clock ticks long); advances seq and timestamp."""
        if samples < 0:
            raise ValueError("samples must not be negative")
        datagram = (
            _HEADER.pack(
                RTP_VERSION << 6,
                self.payload_type | (0x80 if marker else 0),
                self.sequence_number,
                self.timestamp,
                self.ssrc,
            )
            + payload
        )
        self.sequence_number = (self.sequence_number + 1) % _SEQ_MOD
        self.timestamp = (self.timestamp + samples) % _TS_MOD
        self.packets_sent += 1
        self.octets_sent += len(payload)
        return datagram

    def skip(self, samples: int) -> None:
        """Advance the timestamp over a gap in which nothing was sent (mark the next packet)."""
        self.timestamp = (self.timestamp + samples) % _TS_MOD

    def samples_for_ms(self, ms: float) -> int:
        return round(self.clock_rate_hz * ms / 1000)


# --- receiving statistics (RFC 3550 appendix A) ----------------------------------------------------

MAX_DROPOUT = 3000  # RFC 3550 A.1
MAX_MISORDER = 100
MIN_SEQUENTIAL = 2


@dataclass(frozen=True, slots=True)
class ReceptionStatistics:
    ssrc: int | None
    packets_received: int
    extended_highest_sequence: int
    expected: int  # RFC 3550 A.3
    lost: int  # cumulative; negative when duplicates outnumber losses
    jitter: float  # RFC 3550 A.8, in timestamp units
    jitter_seconds: float
    source_changes: int


@dataclass(frozen=True, slots=True)
class ReceptionReport:
    """The interval part of an RTCP report block (RFC 3550 A.3)."""

    fraction_lost: float  # 0..1 over the interval since the previous report
    expected_interval: int
    received_interval: int


class RtpReceiverStatistics:
    """Per-source reception statistics, fed ``(packet, arrival_time_seconds)``.

    Sequence tracking follows RFC 3550 A.1 (probation, dropout/misorder limits, cycle counting),
    loss A.3 and interarrival jitter A.8. A new SSRC starts the statistics afresh.
    """

    def __init__(self, clock_rate_hz: int) -> None:
        if clock_rate_hz <= 0:
            raise ValueError("clock rate must be positive")
        self.clock_rate_hz = clock_rate_hz
        self.source_changes = 0
        self._reset(None)

    def _reset(self, ssrc: int | None) -> None:
        self.ssrc = ssrc
        self._max_seq = 0
        self._cycles = 0
        self._base_seq = 0
        self._bad_seq = _SEQ_MOD + 1  # "so seq == bad_seq is false"
        self._probation = MIN_SEQUENTIAL
        self._received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._transit: float | None = None
        self._jitter = 0.0

    def _init_seq(self, seq: int) -> None:
        self._base_seq = seq
        self._max_seq = seq
        self._bad_seq = _SEQ_MOD + 1
        self._cycles = 0
        self._received = 0
        self._expected_prior = 0
        self._received_prior = 0

    def _update_seq(self, seq: int) -> bool:
        """RFC 3550 A.1 update_seq: False when the packet must not count (probation or a bad jump)."""
        udelta = (seq - self._max_seq) % _SEQ_MOD
        if self._probation:
            if seq == (self._max_seq + 1) % _SEQ_MOD:
                self._probation -= 1
                self._max_seq = seq
                if self._probation == 0:
                    self._init_seq(seq)
                    self._received += 1
                    return True
            else:
                self._probation = MIN_SEQUENTIAL - 1
                self._max_seq = seq
            return False
        if udelta < MAX_DROPOUT:
            if seq < self._max_seq:
                self._cycles += _SEQ_MOD  # wrapped
            self._max_seq = seq
        elif udelta <= _SEQ_MOD - MAX_MISORDER:
            # A very large jump: accept it only if the next packet follows it (sender restarted).
            if seq == self._bad_seq:
                self._init_seq(seq)
            else:
                self._bad_seq = (seq + 1) % _SEQ_MOD
                return False
        # else: duplicate or reordered packet, counted below
        self._received += 1
        return True

    def add(self, packet: RtpPacket, arrival_time_seconds: float) -> None:
        if packet.ssrc != self.ssrc:
            if self.ssrc is not None:
                self.source_changes += 1
            self._reset(packet.ssrc)
            # RFC 3550 A.1: the first packet sets max_seq = seq - 1 and enters probation.
            self._max_seq = (packet.sequence_number - 1) % _SEQ_MOD
        if not self._update_seq(packet.sequence_number):
            return
        # RFC 3550 A.8: transit time in timestamp units; jitter += (|D| - jitter) / 16.
        transit = arrival_time_seconds * self.clock_rate_hz - packet.timestamp
        if self._transit is not None:
            d = abs(transit - self._transit)
            if d > _TS_MOD / 2:  # the RTP timestamp wrapped between the two packets
                d = abs(d - _TS_MOD)
            self._jitter += (d - self._jitter) / 16.0
        self._transit = transit

    @property
    def extended_highest_sequence(self) -> int:
        return self._cycles + self._max_seq

    @property
    def expected(self) -> int:
        if self._received == 0 and self._probation:
            return 0
        return self.extended_highest_sequence - self._base_seq + 1

    @property
    def packets_received(self) -> int:
        return self._received

    @property
    def lost(self) -> int:
        return self.expected - self._received

    @property
    def jitter(self) -> float:
        return self._jitter

    def statistics(self) -> ReceptionStatistics:
        return ReceptionStatistics(
            ssrc=self.ssrc,
            packets_received=self._received,
            extended_highest_sequence=self.extended_highest_sequence,
            expected=self.expected,
            lost=self.lost,
            jitter=self._jitter,
            jitter_seconds=self._jitter / self.clock_rate_hz,
            source_changes=self.source_changes,
        )

    def report(self) -> ReceptionReport:
        """Loss over the interval since the previous report; starts a new interval (RFC 3550 A.3)."""
        expected = self.expected
        expected_interval = expected - self._expected_prior
        received_interval = self._received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self._received
        lost_interval = expected_interval - received_interval
        fraction = lost_interval / expected_interval if expected_interval > 0 and lost_interval > 0 else 0.0
        return ReceptionReport(fraction, expected_interval, received_interval)
