"""Twilio Media Streams messages (WebSocket TEXT frames carrying JSON), sans-I/O.

Reference: Twilio "Media Streams - WebSocket Messages" (twilio.com/docs/voice/media-streams/
websocket-messages). Every frame is one JSON object with an ``event`` field. Numbers that Twilio
sends as strings (``sequenceNumber``, ``chunk``, ``timestamp``) are turned into ``int``; audio is
base64 of headerless µ-law 8 kHz mono, decoded to ``bytes`` here.

Errors: :func:`parse_message` never raises for peer input. Malformed JSON, a frame that is not a
JSON object, a known event missing a required field or carrying a field of the wrong type, and bad
base64 all come back as an :class:`InvalidMessage` event naming the problem (never the payload).
The caller decides whether one bad frame ends the call. Unknown ``event`` values become
:class:`Unknown` so a new Twilio event cannot break the receive loop.

Both directions are here: the daemon's side (parse what Twilio sends, build ``media`` / ``mark`` /
``clear``), and the carrier's side (build what Twilio sends, parse what the daemon sends) for tests
and load generators that play Twilio. Parsing uses only the standard library (``json`` and
``binascii``); no per-frame model validation.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MULAW_ENCODING = "audio/x-mulaw"
TWILIO_RATE_HZ = 8000


class _Invalid(ValueError):
    pass


# --- events (Twilio -> daemon) ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaFormat:
    encoding: str = MULAW_ENCODING
    sample_rate: int = TWILIO_RATE_HZ
    channels: int = 1


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str = "Call"
    version: str = "1.0.0"


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...] = ("inbound",)
    custom_parameters: dict[str, str] = field(default_factory=dict)
    media_format: MediaFormat = MediaFormat()
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Media:
    track: str
    chunk: int | None
    timestamp_ms: int | None  # since the stream started
    payload: bytes
    stream_sid: str = ""
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str
    track: str = "inbound_track"
    stream_sid: str = ""
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Mark:
    """Twilio played (or ``clear`` dropped) everything queued before the mark of this name."""

    name: str
    stream_sid: str = ""
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Stop:
    account_sid: str = ""
    call_sid: str = ""
    stream_sid: str = ""
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Unknown:
    event: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class InvalidMessage:
    reason: str


Event = Connected | Start | Media | Dtmf | Mark | Stop | Unknown | InvalidMessage


# --- field readers ------------------------------------------------------------------------------------


def _obj(container: Mapping[str, Any], key: str, *, required: bool = True) -> dict[str, Any]:
    value = container.get(key)
    if isinstance(value, dict):
        return value
    if value is None and not required:
        return {}
    raise _Invalid(f"{key!r} must be an object")


def _str(container: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = container.get(key)
    if isinstance(value, str):
        return value
    if value is None and default is not None:
        return default
    raise _Invalid(f"{key!r} must be a string")


def _int(container: Mapping[str, Any], key: str) -> int | None:
    # Twilio sends these numbers as decimal strings; accept real integers too.
    value = container.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        raise _Invalid(f"{key!r} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:  # also the over-long digit strings int() refuses
            pass
    raise _Invalid(f"{key!r} must be an integer")


def _b64(text: str) -> bytes:
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise _Invalid("payload is not valid base64") from None


def _load(text: str | bytes) -> dict[str, Any]:
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _Invalid("not valid JSON") from None
    if not isinstance(message, dict):
        raise _Invalid("not a JSON object")
    return message


# --- daemon side --------------------------------------------------------------------------------------


def parse_message(text: str | bytes) -> Event:
    """Decode one TEXT frame from Twilio. Never raises; see the module docstring for errors."""
    try:
        message = _load(text)
        event = message.get("event")
        if not isinstance(event, str):
            raise _Invalid("'event' must be a string")
        parser = _PARSERS.get(event)
        if parser is None:
            return Unknown(event, message)
        return parser(message)
    except _Invalid as exc:
        return InvalidMessage(str(exc))


def _parse_media(message: dict[str, Any]) -> Media:
    # Fifty a second per call: positional arguments, which a frozen dataclass takes faster.
    media = _obj(message, "media")
    payload = media.get("payload")
    if not isinstance(payload, str):
        raise _Invalid("media 'payload' must be a string")
    return Media(
        _str(media, "track", "inbound"),
        _int(media, "chunk"),
        _int(media, "timestamp"),
        _b64(payload),
        _str(message, "streamSid", ""),
        _int(message, "sequenceNumber"),
    )


def _parse_start(message: dict[str, Any]) -> Start:
    start = _obj(message, "start")
    stream_sid = _str(start, "streamSid", "") or _str(message, "streamSid", "")
    if not stream_sid:
        raise _Invalid("start without a streamSid")
    tracks = start.get("tracks", ["inbound"])
    if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
        raise _Invalid("'tracks' must be a list of strings")
    params = _obj(start, "customParameters", required=False)
    fmt = _obj(start, "mediaFormat", required=False)
    return Start(
        stream_sid=stream_sid,
        call_sid=_str(start, "callSid", ""),
        account_sid=_str(start, "accountSid", ""),
        tracks=tuple(tracks),
        # <Parameter> values are strings; anything else is kept in its JSON spelling.
        custom_parameters={k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()},
        media_format=MediaFormat(
            encoding=_str(fmt, "encoding", MULAW_ENCODING),
            sample_rate=_int(fmt, "sampleRate") or TWILIO_RATE_HZ,
            channels=_int(fmt, "channels") or 1,
        ),
        sequence_number=_int(message, "sequenceNumber"),
    )


def _parse_connected(message: dict[str, Any]) -> Connected:
    return Connected(protocol=_str(message, "protocol", ""), version=_str(message, "version", ""))


def _parse_dtmf(message: dict[str, Any]) -> Dtmf:
    dtmf = _obj(message, "dtmf")
    return Dtmf(
        digit=_str(dtmf, "digit"),
        track=_str(dtmf, "track", "inbound_track"),
        stream_sid=_str(message, "streamSid", ""),
        sequence_number=_int(message, "sequenceNumber"),
    )


def _parse_mark(message: dict[str, Any]) -> Mark:
    return Mark(
        name=_str(_obj(message, "mark"), "name"),
        stream_sid=_str(message, "streamSid", ""),
        sequence_number=_int(message, "sequenceNumber"),
    )


def _parse_stop(message: dict[str, Any]) -> Stop:
    stop = _obj(message, "stop", required=False)
    return Stop(
        account_sid=_str(stop, "accountSid", ""),
        call_sid=_str(stop, "callSid", ""),
        stream_sid=_str(message, "streamSid", ""),
        sequence_number=_int(message, "sequenceNumber"),
    )


_PARSERS: dict[str, Callable[[dict[str, Any]], Event]] = {
    "media": _parse_media,
    "start": _parse_start,
    "connected": _parse_connected,
    "dtmf": _parse_dtmf,
    "mark": _parse_mark,
    "stop": _parse_stop,
}


def _sid(value: str) -> str:
    return json.dumps(value)


def media_message_parts(stream_sid: str) -> tuple[bytes, bytes]:
    """The ASCII text around the base64 payload of a ``media_message`` for this stream."""
    return b'{"event":"media","streamSid":' + _sid(stream_sid).encode("ascii") + b',"media":{"payload":"', b'"}}'


def media_message(stream_sid: str, payload: bytes) -> str:
    """Outbound audio (µ-law 8 kHz, headerless); played after what is already queued."""
    head, tail = media_message_parts(stream_sid)
    return (head + binascii.b2a_base64(payload, newline=False) + tail).decode("ascii")


def mark_message(stream_sid: str, name: str) -> str:
    """Ask Twilio to echo a ``mark`` event once the audio queued before it has played."""
    return json.dumps(
        {"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}, separators=(",", ":")
    )


def clear_message(stream_sid: str) -> str:
    """Drop all queued outbound audio (barge-in); pending marks are echoed back."""
    return '{"event":"clear","streamSid":' + _sid(stream_sid) + "}"


# --- carrier side (tests and load generators playing Twilio) --------------------------------------------


@dataclass(frozen=True, slots=True)
class AppMedia:
    stream_sid: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class AppMark:
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class Clear:
    stream_sid: str


AppEvent = AppMedia | AppMark | Clear | Unknown | InvalidMessage


def parse_app_message(text: str | bytes) -> AppEvent:
    """Decode a frame the daemon sent to Twilio. Never raises; errors as :class:`InvalidMessage`."""
    try:
        message = _load(text)
        event = message.get("event")
        if not isinstance(event, str):
            raise _Invalid("'event' must be a string")
        if event == "media":
            payload = _obj(message, "media").get("payload")
            if not isinstance(payload, str):
                raise _Invalid("media 'payload' must be a string")
            return AppMedia(_str(message, "streamSid"), _b64(payload))
        if event == "mark":
            return AppMark(_str(message, "streamSid"), _str(_obj(message, "mark"), "name"))
        if event == "clear":
            return Clear(_str(message, "streamSid"))
        return Unknown(event, message)
    except _Invalid as exc:
        return InvalidMessage(str(exc))


def _dump(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def _seq(sequence_number: int | None) -> dict[str, str]:
    return {} if sequence_number is None else {"sequenceNumber": str(sequence_number)}


def connected_message(protocol: str = "Call", version: str = "1.0.0") -> str:
    return _dump({"event": "connected", "protocol": protocol, "version": version})


def start_message(
    stream_sid: str,
    call_sid: str,
    account_sid: str,
    *,
    tracks: Iterable[str] = ("inbound",),
    custom_parameters: Mapping[str, str] | None = None,
    media_format: MediaFormat = MediaFormat(),
    sequence_number: int | None = 1,
) -> str:
    return _dump(
        {
            "event": "start",
            **_seq(sequence_number),
            "start": {
                "accountSid": account_sid,
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": list(tracks),
                "customParameters": dict(custom_parameters or {}),
                "mediaFormat": {
                    "encoding": media_format.encoding,
                    "sampleRate": media_format.sample_rate,
                    "channels": media_format.channels,
                },
            },
            "streamSid": stream_sid,
        }
    )


def carrier_media_message(
    stream_sid: str,
    payload: bytes,
    *,
    chunk: int,
    timestamp_ms: int,
    track: str = "inbound",
    sequence_number: int | None = None,
) -> str:
    b64 = binascii.b2a_base64(payload, newline=False).decode("ascii")
    seq = "" if sequence_number is None else f'"sequenceNumber":"{sequence_number}",'
    return (
        '{"event":"media",' + seq + '"media":{"track":' + json.dumps(track) + f',"chunk":"{chunk}",'
        f'"timestamp":"{timestamp_ms}","payload":"{b64}"}},"streamSid":' + _sid(stream_sid) + "}"
    )


def dtmf_message(
    stream_sid: str, digit: str, *, track: str = "inbound_track", sequence_number: int | None = None
) -> str:
    return _dump(
        {
            "event": "dtmf",
            "streamSid": stream_sid,
            **_seq(sequence_number),
            "dtmf": {"track": track, "digit": digit},
        }
    )


def carrier_mark_message(stream_sid: str, name: str, *, sequence_number: int | None = None) -> str:
    return _dump({"event": "mark", **_seq(sequence_number), "streamSid": stream_sid, "mark": {"name": name}})


def stop_message(
    stream_sid: str, call_sid: str = "", account_sid: str = "", *, sequence_number: int | None = None
) -> str:
    return _dump(
        {
            "event": "stop",
            **_seq(sequence_number),
            "streamSid": stream_sid,
            "stop": {"accountSid": account_sid, "callSid": call_sid},
        }
    )


class TwilioCarrier:
    """Plays Twilio's side of one stream: numbers messages the way Twilio does.

    ``sequenceNumber`` counts every message from 1; ``chunk`` counts media messages from 1; the media
    ``timestamp`` advances by the audio duration (µ-law 8 kHz: 8 bytes per ms).
    """

    def __init__(self, stream_sid: str, call_sid: str, account_sid: str) -> None:
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.account_sid = account_sid
        self._sequence = 0
        self._chunk = 0
        self._timestamp_ms = 0.0

    def _next(self) -> int:
        self._sequence += 1
        return self._sequence

    def connected(self) -> str:
        return connected_message()

    def start(
        self, custom_parameters: Mapping[str, str] | None = None, tracks: Iterable[str] = ("inbound",)
    ) -> str:
        return start_message(
            self.stream_sid,
            self.call_sid,
            self.account_sid,
            tracks=tracks,
            custom_parameters=custom_parameters,
            sequence_number=self._next(),
        )

    def media(self, payload: bytes, track: str = "inbound") -> str:
        self._chunk += 1
        text = carrier_media_message(
            self.stream_sid,
            payload,
            chunk=self._chunk,
            timestamp_ms=int(self._timestamp_ms),
            track=track,
            sequence_number=self._next(),
        )
        self._timestamp_ms += len(payload) * 1000 / TWILIO_RATE_HZ
        return text

    def dtmf(self, digit: str) -> str:
        return dtmf_message(self.stream_sid, digit, sequence_number=self._next())

    def mark(self, name: str) -> str:
        return carrier_mark_message(self.stream_sid, name, sequence_number=self._next())

    def stop(self) -> str:
        return stop_message(self.stream_sid, self.call_sid, self.account_sid, sequence_number=self._next())
