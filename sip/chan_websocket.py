"""Asterisk WebSocket media channel (chan_websocket) control messages, sans-I/O.

ARI ``externalMedia`` with ``transport=websocket, encapsulation=none`` creates a ``WebSocket/...``
channel. BINARY frames carry raw media in the channel's codec; TEXT frames carry the control
messages handled here. Their shape is taken from Asterisk ``channels/chan_websocket.c`` (line numbers
at commit f0c1c1a7b7):

- events are written by ``_create_event_*`` (lines 195-428), either as compact JSON
  ``{"event": "MEDIA_START", ...}`` when the channel uses ``f(json)`` / ``control_message_format =
  json``, or as plain text ``MEDIA_START connection_id:... channel:...`` (the configuration default
  is ``plain-text``). :func:`parse_event` accepts both and tells them apart by the leading ``{``;
- commands are read by ``process_text_message`` (line 931) and ``handle_command`` (line 728): a
  TEXT frame longer than ``MAX_TEXT_MESSAGE_LEN`` = 128 bytes (line 144) is dropped with only a log
  line, so every builder here refuses to produce one. In JSON mode the command is
  ``{"command": "MARK_MEDIA", "correlation_id": "..."}``; in plain mode ``MARK_MEDIA <id>``.
  ``SET_MEDIA_DIRECTION`` exists only in JSON mode (line 866).

Plain-text quirks worth knowing: ``MEDIA_MARK_PROCESSED`` and ``MEDIA_BUFFERING_COMPLETED`` carry the
correlation id positionally (``MEDIA_MARK_PROCESSED turn-3``, lines 283, 313); ``MEDIA_XON`` /
``MEDIA_XOFF`` / ``QUEUE_DRAINED`` carry nothing, not even the channel id (line 212); ``ERROR``'s
``error_text`` runs to the end of the message and may contain spaces (line 422).

Parsing never raises for peer input: malformed frames give :class:`InvalidMessage`, unknown events
:class:`Unknown`.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

SUBPROTOCOL = "media"
MAX_COMMAND_BYTES = 128  # chan_websocket.c:144 MAX_TEXT_MESSAGE_LEN
QUEUE_XOFF_FRAMES = 900  # chan_websocket.c QUEUE_LENGTH_XOFF_LEVEL
QUEUE_XON_FRAMES = 800  # QUEUE_LENGTH_XON_LEVEL
QUEUE_MAX_FRAMES = 1000  # QUEUE_LENGTH_MAX: binary beyond this is dropped
MEDIA_DIRECTIONS = frozenset({"both", "in", "out"})


class ControlFormat(enum.Enum):
    JSON = "json"
    PLAIN = "plain-text"


# --- events (Asterisk -> daemon) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaStart:
    connection_id: str
    channel: str
    channel_id: str
    format: str
    optimal_frame_size: int  # bytes Asterisk re-frames media into (ptime x bytes per ms)
    ptime_ms: int
    channel_variables: dict[str, str] = field(default_factory=dict)  # JSON mode only


@dataclass(frozen=True, slots=True)
class MediaXoff:
    """Asterisk's queue reached 900 frames: stop sending media until :class:`MediaXon`."""

    channel_id: str | None = None  # JSON mode only


@dataclass(frozen=True, slots=True)
class MediaXon:
    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class QueueDrained:
    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class MediaBufferingCompleted:
    correlation_id: str
    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class MediaMarkProcessed:
    """All media sent before ``MARK_MEDIA <correlation_id>`` has been played."""

    correlation_id: str
    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class DtmfEnd:
    digit: str
    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class Status:
    queue_length: int
    xon_level: int
    xoff_level: int
    queue_full: bool
    bulk_media: bool
    media_paused: bool
    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class Error:
    text: str
    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class Unknown:
    event: str
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class InvalidMessage:
    reason: str


Event = (
    MediaStart
    | MediaXoff
    | MediaXon
    | QueueDrained
    | MediaBufferingCompleted
    | MediaMarkProcessed
    | DtmfEnd
    | Status
    | Error
    | Unknown
    | InvalidMessage
)


class _Invalid(ValueError):
    pass


def _text(fields: dict[str, Any], key: str) -> str:
    value = fields.get(key)
    if not isinstance(value, str):
        raise _Invalid(f"{key!r} must be a string")
    return value


def _opt_text(fields: dict[str, Any], key: str) -> str | None:
    value = fields.get(key)
    return value if isinstance(value, str) else None


def _int(fields: dict[str, Any], key: str) -> int:
    value = fields.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise _Invalid(f"{key!r} must be an integer")


def _bool(fields: dict[str, Any], key: str) -> bool:
    value = fields.get(key)
    if isinstance(value, bool):
        return value
    if value == "true":
        return True
    if value == "false":
        return False
    raise _Invalid(f"{key!r} must be true or false")


def _build(event: str, fields: dict[str, Any]) -> Event:
    channel_id = _opt_text(fields, "channel_id")
    if event == "MEDIA_START":
        variables = fields.get("channel_variables", {})
        if variables is None:
            variables = {}
        if not isinstance(variables, dict):
            raise _Invalid("'channel_variables' must be an object")
        return MediaStart(
            connection_id=_text(fields, "connection_id"),
            channel=_text(fields, "channel"),
            channel_id=_text(fields, "channel_id"),
            format=_text(fields, "format"),
            optimal_frame_size=_int(fields, "optimal_frame_size"),
            ptime_ms=_int(fields, "ptime"),
            channel_variables={
                str(k): v if isinstance(v, str) else json.dumps(v) for k, v in variables.items()
            },
        )
    if event == "MEDIA_XOFF":
        return MediaXoff(channel_id)
    if event == "MEDIA_XON":
        return MediaXon(channel_id)
    if event == "QUEUE_DRAINED":
        return QueueDrained(channel_id)
    if event == "MEDIA_MARK_PROCESSED":
        return MediaMarkProcessed(_opt_text(fields, "correlation_id") or "", channel_id)
    if event == "MEDIA_BUFFERING_COMPLETED":
        return MediaBufferingCompleted(_opt_text(fields, "correlation_id") or "", channel_id)
    if event == "DTMF_END":
        digit = _text(fields, "digit")
        if len(digit) != 1:
            raise _Invalid("'digit' must be one character")
        return DtmfEnd(digit, channel_id)
    if event == "STATUS":
        return Status(
            queue_length=_int(fields, "queue_length"),
            xon_level=_int(fields, "xon_level"),
            xoff_level=_int(fields, "xoff_level"),
            queue_full=_bool(fields, "queue_full"),
            bulk_media=_bool(fields, "bulk_media"),
            media_paused=_bool(fields, "media_paused"),
            channel_id=channel_id,
        )
    if event == "ERROR":
        return Error(_opt_text(fields, "error_text") or "", channel_id)
    return Unknown(event, fields)


def _plain_fields(event: str, rest: str) -> dict[str, Any]:
    if event in ("MEDIA_MARK_PROCESSED", "MEDIA_BUFFERING_COMPLETED"):
        return {"correlation_id": rest} if rest else {}
    fields: dict[str, Any] = {}
    if event == "ERROR":
        # error_text is free text and comes last: split it off before tokenising.
        head, sep, error_text = rest.partition("error_text:")
        if sep:
            fields["error_text"] = error_text.strip()
        rest = head
    for token in rest.split():
        key, sep, value = token.partition(":")
        if not sep:
            raise _Invalid(f"plain-text field without ':' in {event}")
        fields[key] = value
    return fields


def parse_event(text: str | bytes) -> Event:
    """Decode one TEXT frame from Asterisk, JSON or plain text. Never raises."""
    try:
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise _Invalid("not UTF-8") from None
        stripped = text.strip()
        if stripped.startswith("{"):
            try:
                fields = json.loads(stripped)
            except (ValueError, RecursionError):
                raise _Invalid("not valid JSON") from None
            if not isinstance(fields, dict):
                raise _Invalid("not a JSON object")
            event = fields.get("event")
            if not isinstance(event, str):
                raise _Invalid("'event' must be a string")
            return _build(event, fields)
        event, _, rest = stripped.partition(" ")
        if not event:
            raise _Invalid("empty message")
        return _build(event, _plain_fields(event, rest.strip()))
    except _Invalid as exc:
        return InvalidMessage(str(exc))


# --- commands (daemon -> Asterisk) ------------------------------------------------------------------


def _check_length(message: str) -> str:
    size = len(message.encode("utf-8"))
    if size > MAX_COMMAND_BYTES:
        raise ValueError(f"command of {size} bytes exceeds {MAX_COMMAND_BYTES}: Asterisk would ignore it")
    return message


def control_command(
    name: str,
    *,
    fmt: ControlFormat,
    correlation_id: str | None = None,
    direction: str | None = None,
) -> str:
    """Any control command; the named builders below cover each one."""
    if fmt is ControlFormat.JSON:
        body: dict[str, str] = {"command": name}
        if correlation_id is not None:
            body["correlation_id"] = correlation_id
        if direction is not None:
            body["direction"] = direction
        return _check_length(json.dumps(body, separators=(",", ":")))
    if direction is not None:
        raise ValueError(f"{name} with a direction exists only in JSON format")
    if correlation_id is None:
        return _check_length(name)
    # Asterisk strips the message and takes everything after the first space as the id.
    if not correlation_id or any(c.isspace() or not c.isprintable() for c in correlation_id):
        raise ValueError("a plain-text correlation id must be non-empty, printable and without spaces")
    return _check_length(f"{name} {correlation_id}")


def answer(fmt: ControlFormat = ControlFormat.JSON) -> str:
    return control_command("ANSWER", fmt=fmt)


def hangup(fmt: ControlFormat = ControlFormat.JSON) -> str:
    return control_command("HANGUP", fmt=fmt)


def flush_media(fmt: ControlFormat = ControlFormat.JSON) -> str:
    """Drop all queued media at once: the barge-in command."""
    return control_command("FLUSH_MEDIA", fmt=fmt)


def mark_media(correlation_id: str, fmt: ControlFormat = ControlFormat.JSON) -> str:
    """Ask for MEDIA_MARK_PROCESSED once everything queued before this point has played."""
    return control_command("MARK_MEDIA", fmt=fmt, correlation_id=correlation_id)


def start_media_buffering(fmt: ControlFormat = ControlFormat.JSON) -> str:
    return control_command("START_MEDIA_BUFFERING", fmt=fmt)


def stop_media_buffering(correlation_id: str | None = None, fmt: ControlFormat = ControlFormat.JSON) -> str:
    return control_command("STOP_MEDIA_BUFFERING", fmt=fmt, correlation_id=correlation_id)


def report_queue_drained(fmt: ControlFormat = ControlFormat.JSON) -> str:
    return control_command("REPORT_QUEUE_DRAINED", fmt=fmt)


def get_status(fmt: ControlFormat = ControlFormat.JSON) -> str:
    return control_command("GET_STATUS", fmt=fmt)


def pause_media(fmt: ControlFormat = ControlFormat.JSON) -> str:
    return control_command("PAUSE_MEDIA", fmt=fmt)


def continue_media(fmt: ControlFormat = ControlFormat.JSON) -> str:
    return control_command("CONTINUE_MEDIA", fmt=fmt)


def set_media_direction(direction: str) -> str:
    """JSON only (chan_websocket.c:866)."""
    if direction not in MEDIA_DIRECTIONS:
        raise ValueError(f"direction must be one of {sorted(MEDIA_DIRECTIONS)}")
    return control_command("SET_MEDIA_DIRECTION", fmt=ControlFormat.JSON, direction=direction)


# --- Asterisk's side (tests and load generators) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    correlation_id: str | None = None
    direction: str | None = None


def parse_command(text: str | bytes, fmt: ControlFormat) -> Command | InvalidMessage:
    """Read a command as chan_websocket does, including its 128-byte limit. Never raises."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    if not raw:
        return InvalidMessage("empty command")
    if len(raw) > MAX_COMMAND_BYTES:
        return InvalidMessage(f"command of {len(raw)} bytes exceeds {MAX_COMMAND_BYTES}")
    try:
        body = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return InvalidMessage("not UTF-8")
    if fmt is ControlFormat.PLAIN:
        name, _, data = body.partition(" ")
        return Command(name, data or None)
    try:
        fields = json.loads(body)
    except (ValueError, RecursionError):
        return InvalidMessage("Unable to parse JSON command")
    if not isinstance(fields, dict) or not isinstance(fields.get("command"), str):
        return InvalidMessage("no 'command' string")
    return Command(fields["command"], _opt_text(fields, "correlation_id"), _opt_text(fields, "direction"))


def _event_text(event: str, fmt: ControlFormat, json_fields: dict[str, Any], plain: str) -> str:
    if fmt is ControlFormat.JSON:
        return json.dumps({"event": event, **json_fields}, separators=(",", ":"))
    return plain


def media_start_event(start: MediaStart, fmt: ControlFormat) -> str:
    return _event_text(
        "MEDIA_START",
        fmt,
        {
            "connection_id": start.connection_id,
            "channel": start.channel,
            "channel_id": start.channel_id,
            "format": start.format,
            "optimal_frame_size": start.optimal_frame_size,
            "ptime": start.ptime_ms,
            "channel_variables": start.channel_variables,
        },
        f"MEDIA_START connection_id:{start.connection_id} channel:{start.channel} "
        f"channel_id:{start.channel_id} format:{start.format} "
        f"optimal_frame_size:{start.optimal_frame_size} ptime:{start.ptime_ms}",
    )


def simple_event(event: str, channel_id: str, fmt: ControlFormat) -> str:
    """MEDIA_XON, MEDIA_XOFF or QUEUE_DRAINED."""
    return _event_text(event, fmt, {"channel_id": channel_id}, event)


def mark_processed_event(correlation_id: str, channel_id: str, fmt: ControlFormat) -> str:
    return _event_text(
        "MEDIA_MARK_PROCESSED",
        fmt,
        {"channel_id": channel_id, "correlation_id": correlation_id},
        f"MEDIA_MARK_PROCESSED {correlation_id}" if correlation_id else "MEDIA_MARK_PROCESSED",
    )


def buffering_completed_event(correlation_id: str, channel_id: str, fmt: ControlFormat) -> str:
    return _event_text(
        "MEDIA_BUFFERING_COMPLETED",
        fmt,
        {"channel_id": channel_id, "correlation_id": correlation_id},
        f"MEDIA_BUFFERING_COMPLETED {correlation_id}" if correlation_id else "MEDIA_BUFFERING_COMPLETED",
    )


def dtmf_end_event(digit: str, channel_id: str, fmt: ControlFormat) -> str:
    return _event_text(
        "DTMF_END",
        fmt,
        {"channel_id": channel_id, "digit": digit},
        f"DTMF_END digit:{digit} channel_id:{channel_id}",
    )


def status_event(status: Status, channel_id: str, fmt: ControlFormat) -> str:
    def flag(value: bool) -> str:
        return "true" if value else "false"

    return _event_text(
        "STATUS",
        fmt,
        {
            "channel_id": channel_id,
            "queue_length": status.queue_length,
            "xon_level": status.xon_level,
            "xoff_level": status.xoff_level,
            "queue_full": status.queue_full,
            "bulk_media": status.bulk_media,
            "media_paused": status.media_paused,
        },
        f"STATUS channel_id:{channel_id} queue_length:{status.queue_length} xon_level:{status.xon_level} "
        f"xoff_level:{status.xoff_level} queue_full:{flag(status.queue_full)} "
        f"bulk_media:{flag(status.bulk_media)} media_paused:{flag(status.media_paused)}",
    )


def error_event(text: str, channel_id: str, fmt: ControlFormat) -> str:
    return _event_text(
        "ERROR",
        fmt,
        {"channel_id": channel_id, "error_text": text},
        f"ERROR channel_id:{channel_id} error_text:{text}",
    )
