"""A fixed-depth RTP jitter buffer: reorders by sequence number, drops duplicates and late packets.

Theory of operation
-------------------
The network side calls :meth:`JitterBuffer.put` for every packet as it arrives; the playout side calls
:meth:`JitterBuffer.get` once per packet time (every 20 ms) from its pacer. Sequence numbers are
unwrapped to an ever-growing integer, so the 65535 -> 0 wrap needs no special case.

- Start: ``get`` returns ``None`` until ``prefetch`` packets are held, then playout starts at the lowest
  sequence number held. The prefetch depth is the time a reordered packet has to arrive.
- Steady state: ``get`` returns the next packet in sequence. If that packet is missing while later
  ones are held, its slot is given up: ``get`` returns :class:`Loss` (the caller conceals one frame)
  and a packet arriving for that slot afterwards is dropped as late.
- Underrun: with nothing held, ``get`` returns ``None`` and the buffer prefetches again; slots that
  passed meanwhile were already concealed by the caller, so they count as lost without ``Loss`` values.
- Overflow: a packet more than ``capacity_packets`` ahead of the playout point means the reader fell
  behind; the oldest slots are skipped (held packets dropped and counted) to make room.
- A jump of more than ``MAX_DROPOUT`` sequence numbers or a new SSRC is a new stream: start afresh.
"""

from __future__ import annotations

from dataclasses import dataclass

from sip.rtp import MAX_DROPOUT, RtpPacket, seq_delta


@dataclass(frozen=True, slots=True)
class Loss:
    """The packet with this sequence number did not arrive in time; conceal one packet's worth."""

    sequence_number: int


@dataclass(frozen=True, slots=True)
class JitterStatistics:
    received: int
    played: int
    duplicates: int
    late: int
    lost: int
    overflow_dropped: int
    underruns: int
    restarts: int


class JitterBuffer:
    def __init__(self, capacity_packets: int = 16, prefetch: int = 3) -> None:
        if capacity_packets < 1:
            raise ValueError("capacity must be at least one packet")
        if not 1 <= prefetch <= capacity_packets:
            raise ValueError("prefetch must be within 1..capacity_packets")
        self.capacity_packets = capacity_packets
        self.prefetch = prefetch
        self._packets: dict[int, RtpPacket] = {}  # unwrapped sequence number -> packet
        self._ssrc: int | None = None
        self._ref: int | None = None  # unwrapped number of the most recent packet, for unwrapping
        self._next: int | None = None  # unwrapped number of the next slot to play
        self._playing = False
        self.received = 0
        self.played = 0
        self.duplicates = 0
        self.late = 0
        self.lost = 0
        self.overflow_dropped = 0
        self.underruns = 0
        self.restarts = 0

    def __len__(self) -> int:
        return len(self._packets)

    def _restart(self, packet: RtpPacket) -> None:
        if self._ssrc is not None:
            self.restarts += 1
        self.overflow_dropped += len(self._packets)
        self._packets.clear()
        self._ssrc = packet.ssrc
        self._ref = packet.sequence_number
        self._next = None
        self._playing = False

    def put(self, packet: RtpPacket) -> None:
        self.received += 1
        if self._ref is None or packet.ssrc != self._ssrc:
            self._restart(packet)
        assert self._ref is not None
        delta = seq_delta(packet.sequence_number, self._ref & 0xFFFF)
        if abs(delta) > MAX_DROPOUT:
            self._restart(packet)
            delta = 0
        number = self._ref + delta
        if self._next is not None and number < self._next:
            self.late += 1
            return
        if number in self._packets:
            self.duplicates += 1
            return
        self._packets[number] = packet
        self._ref = max(self._ref, number)
        self._make_room()

    def _make_room(self) -> None:
        if self._next is None:
            # Not playing yet: keep the newest capacity_packets.
            while len(self._packets) > self.capacity_packets:
                del self._packets[min(self._packets)]
                self.overflow_dropped += 1
            return
        newest = max(self._packets)
        while newest - self._next >= self.capacity_packets:
            if self._packets.pop(self._next, None) is not None:
                self.overflow_dropped += 1
            else:
                self.lost += 1
            self._next += 1

    def get(self) -> RtpPacket | Loss | None:
        """The packet for the current slot, a :class:`Loss` for a missing one, or ``None`` (not ready)."""
        if not self._playing:
            if len(self._packets) < self.prefetch:
                return None
            start = min(self._packets)
            if self._next is not None and start > self._next:
                self.lost += start - self._next  # concealed during the underrun
            self._next = start
            self._playing = True
        assert self._next is not None
        if not self._packets:
            self.underruns += 1
            self._playing = False
            return None
        number = self._next
        self._next += 1
        packet = self._packets.pop(number, None)
        if packet is None:
            self.lost += 1
            return Loss(number & 0xFFFF)
        self.played += 1
        return packet

    def statistics(self) -> JitterStatistics:
        return JitterStatistics(
            received=self.received,
            played=self.played,
            duplicates=self.duplicates,
            late=self.late,
            lost=self.lost,
            overflow_dropped=self.overflow_dropped,
            underruns=self.underruns,
            restarts=self.restarts,
        )
