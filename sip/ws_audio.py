"""The plain WebSocket audio protocol of ``/ws/audio/{sip_number}``, sans-I/O.

Deployments of this kind already have clients in the field, so the protocol is kept as they speak
it:

* the last path segment is the dialled number, which picks the tenant;
* the client's audio arrives as TEXT frames carrying the base64 of the audio, or as BINARY frames
  carrying the audio itself. The default format is PCM16 little-endian, 24 kHz, mono; 40 ms
  (960 samples) per frame is typical, but any whole number of samples is accepted;
* the query parameter ``format`` selects another format for telephony clients: ``pcm16_24k``
  (the default), ``pcm16_16k``, ``pcm16_8k`` or ``ulaw_8k`` (G.711 mu-law);
* the agent's audio goes back in the same format and in the same kind of frame as the client's
  audio. Before the client's first audio frame, TEXT is used unless the query says
  ``frames=binary``;
* the daemon ends the connection with a close code saying why (:class:`CloseCode`).

Parsing never raises for peer input: a frame that is not audio comes back as
:class:`InvalidMessage` naming the problem (never the payload).
"""

from __future__ import annotations

import binascii
import enum
from collections.abc import Mapping
from dataclasses import dataclass


class CloseCode(enum.IntEnum):
    """WebSocket close codes the media endpoints use (RFC 6455 section 7.4, IANA registry)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # the daemon is shutting down
    POLICY_VIOLATION = 1008  # malformed or abusive frame
    MESSAGE_TOO_BIG = 1009  # a frame over the size limit (RFC 6455 7.4.1 prefers it to 1008)
    INTERNAL_ERROR = 1011  # the model is unreachable or failed, or the tenant store did
    TRY_AGAIN_LATER = 1013  # over capacity or draining
    UNKNOWN_NUMBER = 4004  # the dialled number has no active tenant (private-use range 4000-4999)
    UNAUTHORIZED = 4401  # missing or invalid media token (4000 + the HTTP status, as graphql-ws does)
    IDLE = 4408  # the client sent no audio for too long


class FrameKind(enum.StrEnum):
    TEXT = "text"
    BINARY = "binary"


class SampleEncoding(enum.StrEnum):
    PCM16 = "pcm16"  # signed 16-bit little-endian
    ULAW = "ulaw"  # G.711 mu-law, one byte per sample


@dataclass(frozen=True, slots=True)
class StreamFormat:
    name: str
    encoding: SampleEncoding
    rate_hz: int

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding is SampleEncoding.PCM16 else 1


DEFAULT_FORMAT = StreamFormat("pcm16_24k", SampleEncoding.PCM16, 24000)
FORMATS: Mapping[str, StreamFormat] = {
    f.name: f
    for f in (
        DEFAULT_FORMAT,
        StreamFormat("pcm16_16k", SampleEncoding.PCM16, 16000),
        StreamFormat("pcm16_8k", SampleEncoding.PCM16, 8000),
        StreamFormat("ulaw_8k", SampleEncoding.ULAW, 8000),
    )
}
FORMAT_PARAMETER = "format"
FRAMES_PARAMETER = "frames"


@dataclass(frozen=True, slots=True)
class Audio:
    payload: bytes  # audio in the stream's format
    kind: FrameKind


@dataclass(frozen=True, slots=True)
class InvalidMessage:
    reason: str


@dataclass(frozen=True, slots=True)
class StreamOptions:
    format: StreamFormat
    reply_kind: FrameKind  # frame kind for agent audio until the client has sent audio


def parse_options(query: Mapping[str, str]) -> StreamOptions | InvalidMessage:
    """Read the query parameters of the connection request."""
    name = query.get(FORMAT_PARAMETER, DEFAULT_FORMAT.name).strip().lower()
    fmt = FORMATS.get(name)
    if fmt is None:
        return InvalidMessage(f"unsupported format {name[:40]!r}; use one of {', '.join(FORMATS)}")
    frames = query.get(FRAMES_PARAMETER, FrameKind.TEXT.value).strip().lower()
    if frames not in (FrameKind.TEXT.value, FrameKind.BINARY.value):
        return InvalidMessage(f"unsupported frames {frames[:40]!r}; use text or binary")
    return StreamOptions(fmt, FrameKind(frames))


def _whole_samples(payload: bytes, fmt: StreamFormat) -> bool:
    return len(payload) % fmt.bytes_per_sample == 0


def parse_text(text: str, fmt: StreamFormat = DEFAULT_FORMAT) -> Audio | InvalidMessage:
    """A TEXT frame: base64 of the audio. Surrounding whitespace is tolerated, nothing else."""
    try:
        payload = binascii.a2b_base64(text.strip().encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError):  # UnicodeEncodeError is a ValueError
        return InvalidMessage("text frame is not valid base64")
    if not _whole_samples(payload, fmt):
        return InvalidMessage(f"{len(payload)} bytes is not a whole number of {fmt.name} samples")
    return Audio(payload, FrameKind.TEXT)


def parse_binary(data: bytes, fmt: StreamFormat = DEFAULT_FORMAT) -> Audio | InvalidMessage:
    """A BINARY frame: the audio itself."""
    if not _whole_samples(data, fmt):
        return InvalidMessage(f"{len(data)} bytes is not a whole number of {fmt.name} samples")
    return Audio(bytes(data), FrameKind.BINARY)


def audio_text(payload: bytes) -> str:
    """Agent audio as a TEXT frame."""
    return binascii.b2a_base64(payload, newline=False).decode("ascii")
