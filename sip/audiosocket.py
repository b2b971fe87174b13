"""Asterisk AudioSocket framing, sans-I/O.

Wire format (Asterisk ``include/asterisk/res_audiosocket.h``, ``res/res_audiosocket.c``)::

    [kind: 1 byte][length: 2 bytes, big-endian, payload only][payload]

Asterisk is always the TCP client. Its first message is the call UUID (16 raw bytes), then audio
frames and, since 20.14 / 21.9 / 22.4, DTMF digits. Asterisk never sends HANGUP (0x00): it closes
the socket instead, so end of stream is the normal end of a call.

The audio payload is little-endian signed 16-bit PCM for the ``slin*`` kinds. The kind's rate is
*nominal*: Asterisk chooses the kind from the frame's format and labels every non-``slin`` format
(``ulaw``, ``alaw``, ...) as ``0x10`` too (``res_audiosocket.c`` ``ast_audiosocket_send_frame``), so
``Dial(AudioSocket/host:port/<uuid>/c(ulaw))`` delivers µ-law bytes tagged "slin 8 kHz". The
application must know the negotiated codec from configuration, not from the kind.

Theory of operation
-------------------
:class:`AudioSocketProtocol` buffers bytes, cuts complete frames and turns them into events. Bad peer
input never raises: it becomes a :class:`ProtocolError` event and the protocol stops reading (the
caller should then close the transport, which Asterisk treats as a hangup).

============  ========================  ===================================================
state         input                     result
============  ========================  ===================================================
AWAIT_UUID    UUID (16 bytes)           ``Uuid`` event, -> OPEN
AWAIT_UUID    HANGUP                    ``Hangup`` event, -> CLOSED
AWAIT_UUID    anything else             ``ProtocolError("expected UUID first")``, -> CLOSED
OPEN          audio / DTMF / ERROR      ``Audio`` / ``Dtmf`` / ``ErrorMessage`` event
OPEN          unknown kind              ``Unknown`` event (server side; tolerant)
OPEN          HANGUP                    ``Hangup`` event, -> CLOSED
any           malformed frame           ``ProtocolError``, -> CLOSED
any           ``receive_eof()``         (``ProtocolError`` if a frame was cut short) ``Closed``
CLOSED        more bytes                ignored
============  ========================  ===================================================

The client side (:attr:`Side.CLIENT`, Asterisk's role, used by test callers and benchmarks) starts
in OPEN and checks what the server sends exactly as Asterisk's ``ast_audiosocket_receive_frame``
does: anything but HANGUP or an audio kind ends the call.
"""

from __future__ import annotations

import enum
import struct
import uuid as uuid_module
from dataclasses import dataclass

HEADER_BYTES = 3
_HEADER = struct.Struct(">BH")  # kind, then the payload length, big-endian
MAX_PAYLOAD_BYTES = 0xFFFF  # the length field is 16 bits


class AudioSocketError(Exception):
    """A single frame given to :meth:`Message.parse` is malformed."""


class Kind(enum.IntEnum):
    HANGUP = 0x00
    UUID = 0x01
    DTMF = 0x03
    AUDIO = 0x10  # slin 8 kHz, and any non-slin format (see module docstring)
    AUDIO_SLIN12 = 0x11  # 0x11..0x18 since Asterisk 20.17.0 / 21.12.0 / 22.7.0 / 23.1.0
    AUDIO_SLIN16 = 0x12
    AUDIO_SLIN24 = 0x13
    AUDIO_SLIN32 = 0x14
    AUDIO_SLIN44 = 0x15
    AUDIO_SLIN48 = 0x16
    AUDIO_SLIN96 = 0x17
    AUDIO_SLIN192 = 0x18
    ERROR = 0xFF


AUDIO_KIND_RATE_HZ: dict[Kind, int] = {
    Kind.AUDIO: 8000,
    Kind.AUDIO_SLIN12: 12000,
    Kind.AUDIO_SLIN16: 16000,
    Kind.AUDIO_SLIN24: 24000,
    Kind.AUDIO_SLIN32: 32000,
    Kind.AUDIO_SLIN44: 44100,
    Kind.AUDIO_SLIN48: 48000,
    Kind.AUDIO_SLIN96: 96000,
    Kind.AUDIO_SLIN192: 192000,
}
_RATE_AUDIO_KIND: dict[int, Kind] = {rate: kind for kind, rate in AUDIO_KIND_RATE_HZ.items()}
_AUDIO_KIND_BY_VALUE: dict[int, Kind] = {int(kind): kind for kind in AUDIO_KIND_RATE_HZ}

# Digits Asterisk forwards as DTMF frames (RFC 4733 events 0-15).
DTMF_DIGITS = frozenset("0123456789*#ABCD")


def audio_kind_for_rate(rate_hz: int) -> Kind:
    """The audio kind Asterisk uses for signed-linear audio at ``rate_hz``."""
    try:
        return _RATE_AUDIO_KIND[rate_hz]
    except KeyError:
        raise ValueError(f"AudioSocket has no audio kind for {rate_hz} Hz") from None


class Side(enum.Enum):
    SERVER = "server"  # the daemon: Asterisk connects to it
    CLIENT = "client"  # Asterisk's role: test callers and benchmarks


class State(enum.Enum):
    AWAIT_UUID = "await_uuid"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Message:
    """One AudioSocket frame."""

    kind: int
    payload: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> Message:
        """Parse exactly one frame; raise :class:`AudioSocketError` if ``data`` is not one frame."""
        if len(data) < HEADER_BYTES:
            raise AudioSocketError(f"frame shorter than the {HEADER_BYTES}-byte header")
        length = int.from_bytes(data[1:3], "big")
        if len(data) != HEADER_BYTES + length:
            raise AudioSocketError(f"length field says {length} bytes, frame carries {len(data) - 3}")
        return cls(data[0], bytes(data[3:]))

    def serialize(self) -> bytes:
        if not 0 <= self.kind <= 0xFF:
            raise ValueError(f"kind {self.kind} does not fit in one byte")
        if len(self.payload) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload of {len(self.payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
        return _HEADER.pack(self.kind, len(self.payload)) + self.payload


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Uuid:
    uuid: uuid_module.UUID


@dataclass(frozen=True, slots=True)
class Audio:
    kind: Kind
    payload: bytes
    rate_hz: int  # nominal: Asterisk labels ulaw/alaw as 0x10 too


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    code: int | None  # first payload byte, if any (application specific)
    payload: bytes


@dataclass(frozen=True, slots=True)
class Hangup:
    pass


@dataclass(frozen=True, slots=True)
class Unknown:
    kind: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ProtocolError:
    reason: str


@dataclass(frozen=True, slots=True)
class Closed:
    """The peer closed its side of the stream (end of file)."""


Event = Uuid | Audio | Dtmf | ErrorMessage | Hangup | Unknown | ProtocolError | Closed


class AudioSocketProtocol:
    """AudioSocket connection state machine; see the module docstring for the transitions."""

    def __init__(self, side: Side = Side.SERVER, max_payload: int = MAX_PAYLOAD_BYTES) -> None:
        if not 1 <= max_payload <= MAX_PAYLOAD_BYTES:
            raise ValueError(f"max_payload must be within 1..{MAX_PAYLOAD_BYTES}")
        self.side = side
        self.max_payload = max_payload
        self._state = State.AWAIT_UUID if side is Side.SERVER else State.OPEN
        self._buffer = bytearray()
        self._events: list[Event] = []
        self._outgoing: list[bytes] = []
        self._eof = False
        self._hangup_sent = False
        self.call_uuid: uuid_module.UUID | None = None

    # --- state ------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def closed(self) -> bool:
        """True once no more input will be read (hangup either way, EOF or a protocol error)."""
        return self._state is State.CLOSED

    # --- receiving --------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the socket. Never raises on peer input."""
        if self._state is State.CLOSED or self._eof or not data:
            return
        # Frames are cut from immutable bytes, so each payload is one slice. What a read leaves
        # of a frame waits in the buffer and is joined with the next read (the rare case: a
        # socket read usually holds whole frames).
        buffer = self._buffer
        if buffer:
            buffer += data
            data = bytes(buffer)
            buffer.clear()
        elif type(data) is not bytes:
            data = bytes(data)
        pos = 0
        end = len(data)
        while end - pos >= HEADER_BYTES:
            kind = data[pos]
            length = (data[pos + 1] << 8) | data[pos + 2]
            if length > self.max_payload:
                self._fail(f"payload length {length} exceeds the limit of {self.max_payload} bytes")
                return
            if end - pos - HEADER_BYTES < length:
                break
            start = pos + HEADER_BYTES
            pos = start + length
            self._handle(kind, data[start:pos])
            if self.closed:  # _handle may have closed the protocol
                return
        if pos < end:
            buffer += data[pos:]

    def receive_eof(self) -> None:
        """The peer closed the stream. Emits :class:`Closed` once."""
        if self._eof:
            return
        self._eof = True
        if self._state is not State.CLOSED and self._buffer:
            self._events.append(ProtocolError(f"stream ended inside a frame ({len(self._buffer)} bytes)"))
        self._buffer.clear()
        self._state = State.CLOSED
        self._events.append(Closed())

    def events_received(self) -> list[Event]:
        """Return and forget the events parsed so far."""
        events, self._events = self._events, []
        return events

    def _fail(self, reason: str) -> None:
        self._events.append(ProtocolError(reason))
        self._state = State.CLOSED
        self._buffer.clear()

    def _handle(self, kind: int, payload: bytes) -> None:
        if kind == Kind.HANGUP:
            # Asterisk acts on the kind alone and never reads a hangup's payload
            # (res_audiosocket.c ast_audiosocket_receive_frame_with_hangup), so neither do we.
            self._events.append(Hangup())
            self._state = State.CLOSED
            return
        if self.side is Side.CLIENT:
            self._handle_from_server(kind, payload)
            return
        if self._state is State.AWAIT_UUID:
            if kind != Kind.UUID:
                self._fail(f"expected UUID first, got kind 0x{kind:02x}")
                return
            if len(payload) != 16:
                self._fail(f"UUID payload must be 16 bytes, got {len(payload)}")
                return
            self.call_uuid = uuid_module.UUID(bytes=payload)
            self._state = State.OPEN
            self._events.append(Uuid(self.call_uuid))
            return
        audio_kind = _AUDIO_KIND_BY_VALUE.get(kind)
        if audio_kind is not None:
            if not payload:
                # res_audiosocket.c treats a zero-length audio frame as "Invalid message length".
                self._fail(f"audio kind 0x{kind:02x} with empty payload")
                return
            self._events.append(Audio(audio_kind, payload, AUDIO_KIND_RATE_HZ[audio_kind]))
        elif kind == Kind.DTMF:
            digit = payload.decode("latin-1")
            if len(payload) != 1 or digit not in DTMF_DIGITS:
                self._fail(f"DTMF payload must be one of 0-9*#A-D, got {payload!r}")
                return
            self._events.append(Dtmf(digit))
        elif kind == Kind.ERROR:
            self._events.append(ErrorMessage(payload[0] if payload else None, payload))
        elif kind == Kind.UUID:
            self._fail("UUID sent twice")
        else:
            self._events.append(Unknown(kind, payload))

    def _handle_from_server(self, kind: int, payload: bytes) -> None:
        # Mirror ast_audiosocket_receive_frame (res_audiosocket.c): only hangup and audio kinds are
        # accepted from the application; anything else, or empty audio, ends the call.
        audio_kind = _AUDIO_KIND_BY_VALUE.get(kind)
        if audio_kind is None:
            self._fail(f"received AudioSocket message other than hangup or audio (kind 0x{kind:02x})")
            return
        if not payload:
            self._fail(f"audio kind 0x{kind:02x} with empty payload")
            return
        self._events.append(Audio(audio_kind, payload, AUDIO_KIND_RATE_HZ[audio_kind]))

    # --- sending ----------------------------------------------------------------------------

    def _queue(self, kind: int, payload: bytes) -> None:
        if self._hangup_sent:
            raise AudioSocketError("cannot send after hangup")
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
        self._outgoing.append(_HEADER.pack(kind, len(payload)) + payload)

    def send_audio(self, payload: bytes, kind: Kind = Kind.AUDIO) -> None:
        """Queue one audio frame. The caller paces frames (Asterisk writes each one at once)."""
        if kind not in AUDIO_KIND_RATE_HZ:
            raise ValueError(f"{kind!r} is not an audio kind")
        if not payload:
            # Asterisk ends the call on a zero-length audio frame ("Invalid message length").
            raise ValueError("audio payload must not be empty")
        self._queue(kind, payload)

    def send_hangup(self) -> None:
        """Queue a HANGUP frame; afterwards nothing more may be sent and input is ignored."""
        self._queue(Kind.HANGUP, b"")
        self._hangup_sent = True
        self._state = State.CLOSED
        self._buffer.clear()

    def send_uuid(self, value: uuid_module.UUID) -> None:
        """Client side only: the first message Asterisk sends."""
        self._require_client("UUID")
        self._queue(Kind.UUID, value.bytes)

    def send_dtmf(self, digit: str) -> None:
        """Client side only: one DTMF digit as Asterisk forwards it."""
        self._require_client("DTMF")
        if len(digit) != 1 or digit not in DTMF_DIGITS:
            raise ValueError(f"DTMF digit must be one of 0-9*#A-D, got {digit!r}")
        self._queue(Kind.DTMF, digit.encode("ascii"))

    def _require_client(self, what: str) -> None:
        # Asterisk accepts only hangup and audio from the application; any other kind makes it log
        # "Received AudioSocket message other than hangup or audio" and end the call.
        if self.side is not Side.CLIENT:
            raise ValueError(f"a server never sends {what}: Asterisk would end the call")

    def data_to_send(self) -> list[bytes]:
        """Return and forget the frames queued for the socket."""
        out, self._outgoing = self._outgoing, []
        return out
