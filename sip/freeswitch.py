"""FreeSWITCH streaming-module messages: mod_audio_fork (drachtio / jambonz) and mod_audio_stream.

Both modules are WebSocket *clients* started from FreeSWITCH (``uuid_audio_fork <uuid> start <url>
<mono|mixed|stereo> <rate> [metadata]``, ``uuid_audio_stream ...`` with the same arguments). On the
wire:

- the first TEXT frame is the ``metadata`` argument, sent once on connect. callbridge reads it as a
  JSON object (see :func:`parse_metadata` for the keys it understands); BINARY frames that follow
  are L16 little-endian audio at the requested rate;
- mod_audio_fork offers WebSocket subprotocol ``audio.drachtio.org`` (jambonz ``listen``:
  ``audio.jambonz.org``) and accepts JSON commands ``{"type": ..., "data": {...}}``: ``playAudio``,
  ``killAudio``, ``disconnect``, ``transcription``, ``transfer``, ``error``, and in the jambonz fork
  ``mark`` / ``clearMarks`` (``mod_audio_fork/lws_glue.cpp`` ``processIncomingMessage``). The jambonz
  fork echoes each mark as ``{"type": "mark", "data": {"name": ..., "event": "playout"|"cleared"}}``
  once the audio queued before it has played or was cleared (``send_mark_event``);
- mod_audio_stream accepts only ``{"type": "streamAudio", "data": {"audioDataType", "sampleRate",
  "audioData"}}`` (``audio_streamer_glue.cpp`` ``processMessage``). The community edition writes the
  audio to a file for the application to play; the voxcom-us fork plays it as a stream.

``playAudio`` / ``streamAudio`` with raw audio accept only 8, 16, 24, 32, 48 and 64 kHz: other rates
are refused (mod_audio_stream) or silently mislabelled as 16 kHz (mod_audio_fork), so the builders
here refuse them.

How agent audio reaches the caller depends on the module build (:class:`Playback`):

============================ ============ ===================================================
build                        playback     what the daemon sends back
============================ ============ ===================================================
jambonz mod_audio_fork,      ``stream``   BINARY L16; ``killAudio`` empties the fork's buffer,
started with its three                    ``mark`` echoes say what has played
bidirectional arguments
drachtio mod_audio_fork,     ``files``    ``playAudio`` chunks; the module writes each to a
jambonz without them                      file and raises ``mod_audio_fork::play_audio``; the
                                          dialplan script plays the files and echoes the
                                          chunk's ``mark`` field as a mark; ``killAudio``
amigniter mod_audio_stream   ``files``    ``streamAudio`` chunks, the same way
                                          (``mod_audio_stream::play``); ``killAudio`` reaches
                                          the script as ``mod_audio_stream::json``
streaming mod_audio_stream   ``stream``   ``streamAudio`` in 20 ms messages, played as a stream
forks (voxcom-us)
============================ ============ ===================================================

The drachtio build logs and discards every BINARY frame (``lws_glue.cpp`` "received binary frame,
discarding"), and amigniter's community build plays nothing itself: whatever is sent, a build
that does not play it gives a silent call. :class:`PlaybackCheck` holds the rule that tells: a
far end that plays the audio echoes the first mark placed after it within a few seconds.

Parsing never raises for peer input: malformed frames give :class:`InvalidMessage`, unknown message
types give :class:`Unknown`.
"""

from __future__ import annotations

import binascii
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

AUDIO_FORK_SUBPROTOCOL = "audio.drachtio.org"
JAMBONZ_SUBPROTOCOL = "audio.jambonz.org"

# Raw-audio rates both modules map to a playable file type (.r8 ... .r64).
RAW_RATES_HZ = frozenset({8000, 16000, 24000, 32000, 48000, 64000})
PLAY_AUDIO_CONTENT_TYPES = frozenset({"raw", "wave", "wav"})  # mod_audio_fork
STREAM_AUDIO_DATA_TYPES = frozenset({"raw", "wav", "mp3", "ogg", "pcmu", "pcma"})  # mod_audio_stream

# Metadata keys read, first present wins. "to"/"from"/"callSid"/"sampleRate"/"mixType" are what the
# jambonz listen verb sends (call attributes plus sampleRate and mixType); the drachtio example
# sends {"to", "from", "callid"}; the FreeSWITCH-variable spellings suit a hand-written dialplan.
DIALLED_KEYS = ("to", "dialled", "destination_number", "called")
CALLER_KEYS = ("from", "caller_id_number", "caller", "ani")
CALL_ID_KEYS = ("callSid", "callId", "callid", "call_id", "uuid")
SAMPLE_RATE_KEYS = ("sampleRate", "sample_rate")
MIX_TYPE_KEYS = ("mixType", "mix_type")
PLAYBACK_KEY = "playback"  # written by deploy/freeswitch/scripts/callbridge.lua


class Playback(enum.StrEnum):
    """How the far end plays agent audio (the metadata's ``playback`` key)."""

    STREAM = "stream"  # played as it arrives: BINARY (mod_audio_fork) or 20 ms streamAudio
    FILES = "files"  # written to files the dialplan script plays, each chunk's mark echoed


class Unplayed(enum.StrEnum):
    """Why a call's agent audio was not (or could not be shown to be) played: a metric label."""

    BINARY_DISCARDED = "binary_discarded"  # no mark came back after BINARY audio
    FILES_NOT_PLAYED = "files_not_played"  # no mark came back after audio sent as files
    UNCONFIRMED = "unconfirmed"  # streamAudio as a stream: the far end cannot confirm playback


class _Invalid(ValueError):
    pass


def _load(text: str | bytes) -> dict[str, Any]:
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        raise _Invalid("not valid JSON") from None
    if not isinstance(message, dict):
        raise _Invalid("not a JSON object")
    return message


def _b64decode(text: object, field: str) -> bytes:
    if not isinstance(text, str):
        raise _Invalid(f"{field!r} must be a base64 string")
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise _Invalid(f"{field!r} is not valid base64") from None


def _b64encode(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _dump(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class InvalidMessage:
    reason: str


@dataclass(frozen=True, slots=True)
class Unknown:
    type: str
    message: dict[str, Any]


# --- metadata (first TEXT frame, FreeSWITCH -> daemon) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamMetadata:
    dialled: str | None
    caller: str | None
    call_id: str | None
    sample_rate_hz: int | None
    mix_type: str | None
    fields: dict[str, Any]  # the whole object, extras included
    playback: Playback | None = None  # None: not said (or not understood)


def _first_text(fields: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = fields.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # a number written without quotes
    return None


def _rate(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str):
        text = value.strip().lower()
        try:
            # The module command line spells rates "8k" / "16k"; metadata may copy that.
            rate = int(text[:-1]) * 1000 if text.endswith("k") else int(text)
        except ValueError:
            return None
        return rate if rate > 0 else None
    return None


def parse_metadata(text: str | bytes) -> StreamMetadata | InvalidMessage:
    """Read the first TEXT frame. Missing keys give ``None``; extra keys are kept in ``fields``."""
    try:
        fields = _load(text)
    except _Invalid as exc:
        return InvalidMessage(f"metadata: {exc}")
    sample_rate = None
    for key in SAMPLE_RATE_KEYS:
        if key in fields:
            sample_rate = _rate(fields[key])
            break
    playback = fields.get(PLAYBACK_KEY)
    return StreamMetadata(
        dialled=_first_text(fields, DIALLED_KEYS),
        caller=_first_text(fields, CALLER_KEYS),
        call_id=_first_text(fields, CALL_ID_KEYS),
        sample_rate_hz=sample_rate,
        mix_type=_first_text(fields, MIX_TYPE_KEYS),
        fields=fields,
        playback=Playback(playback) if playback in tuple(Playback) else None,
    )


def metadata_message(fields: Mapping[str, Any]) -> str:
    """FreeSWITCH side: the metadata frame (what a dialplan passes as the ``metadata`` argument)."""
    return _dump(fields)


# --- events (FreeSWITCH -> daemon TEXT frames after the metadata) ------------------------------------


@dataclass(frozen=True, slots=True)
class MarkEcho:
    """jambonz mod_audio_fork: the audio queued before mark ``name`` played, or was cleared."""

    name: str
    cleared: bool


@dataclass(frozen=True, slots=True)
class Dtmf:
    """A digit forwarded as text (jambonz ``listen`` with ``passDtmf``: ``{"event":"dtmf","dtmf":"1"}``)."""

    digit: str
    duration: int | None  # samples at 8 kHz when given


Event = MarkEcho | Dtmf | Unknown | InvalidMessage


def parse_event(text: str | bytes) -> Event:
    """Decode a TEXT frame FreeSWITCH sends after the metadata. Never raises."""
    try:
        message = _load(text)
        kind = message.get("type", message.get("event"))
        if not isinstance(kind, str):
            raise _Invalid("neither 'type' nor 'event' is a string")
        if kind == "mark":
            data = message.get("data")
            if not isinstance(data, dict) or not isinstance(data.get("name"), str):
                raise _Invalid("mark without data.name")
            return MarkEcho(data["name"], data.get("event") == "cleared")
        if kind == "dtmf":
            return _parse_dtmf(message)
        return Unknown(kind, message)
    except _Invalid as exc:
        return InvalidMessage(str(exc))


def parse_events(text: str | bytes) -> list[Event]:
    """Every message in one TEXT frame. Never raises.

    drachtio's mod_audio_fork queues outgoing text by appending it to one string
    (``audio_pipe.cpp`` ``bufferForSending``), so messages sent close together (a dialplan's
    ``send_text`` bursts) arrive as one frame holding JSON objects back to back. A frame that
    does not split into whole JSON objects gives one :class:`InvalidMessage`.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return [InvalidMessage("not valid UTF-8")]
    decoder = json.JSONDecoder()
    events: list[Event] = []
    end = len(text)
    i = 0
    while True:
        while i < end and text[i] in " \t\r\n":
            i += 1
        if i >= end:
            break
        try:
            _, stop = decoder.raw_decode(text, i)
        except (ValueError, RecursionError):
            return [InvalidMessage("not valid JSON")]
        events.append(parse_event(text[i:stop]))
        i = stop
    return events or [InvalidMessage("not valid JSON")]


def _parse_dtmf(message: dict[str, Any]) -> Dtmf:
    data = message.get("data")
    source = data if isinstance(data, dict) else message
    digit = source.get("dtmf", source.get("digit"))
    if not isinstance(digit, str) or len(digit) != 1:
        raise _Invalid("dtmf without a one-character digit")
    duration = source.get("duration")
    if isinstance(duration, str) and duration.isdigit():
        duration = int(duration)
    if not isinstance(duration, int) or isinstance(duration, bool):
        duration = None
    return Dtmf(digit, duration)


def mark_echo_message(name: str, *, cleared: bool = False) -> str:
    """FreeSWITCH side (jambonz fork): the mark echo."""
    return _dump({"type": "mark", "data": {"name": name, "event": "cleared" if cleared else "playout"}})


def dtmf_message(digit: str, duration: int | None = None) -> str:
    """FreeSWITCH side: a digit as jambonz ``listen`` forwards it."""
    return _dump({"event": "dtmf", "dtmf": digit, **({} if duration is None else {"duration": duration})})


# --- commands (daemon -> FreeSWITCH) -----------------------------------------------------------------


def _check_raw_rate(sample_rate_hz: int) -> None:
    if sample_rate_hz not in RAW_RATES_HZ:
        raise ValueError(f"raw audio must be one of {sorted(RAW_RATES_HZ)} Hz, not {sample_rate_hz}")


def _check_mark_name(name: str) -> None:
    # Echoed back without JSON escaping (jambonz ``send_mark_event``), and read by the dialplan
    # script with a string pattern: plain names only.
    if not name or any(c in '"\\' or ord(c) < 0x20 for c in name):
        raise ValueError("mark names must be non-empty without quotes, backslashes or control characters")


def play_audio_message(
    audio: bytes,
    sample_rate_hz: int,
    *,
    content_type: str = "raw",
    text_content: str | None = None,
    mark: str | None = None,
) -> str:
    """mod_audio_fork ``playAudio``: raw L16 little-endian (or a WAV file) to play to the caller.

    ``mark`` rides in the ``data`` object, which the module passes on in its ``play_audio``
    event (less the audio, plus the file's path); the dialplan script echoes it once played.
    """
    if content_type not in PLAY_AUDIO_CONTENT_TYPES:
        raise ValueError(f"audioContentType must be one of {sorted(PLAY_AUDIO_CONTENT_TYPES)}")
    data: dict[str, Any] = {"audioContentType": content_type}
    if content_type == "raw":
        _check_raw_rate(sample_rate_hz)
        data["sampleRate"] = sample_rate_hz
    data["audioContent"] = _b64encode(audio)
    if text_content is not None:
        data["textContent"] = text_content
    if mark is not None:
        _check_mark_name(mark)
        data["mark"] = mark
    return _dump({"type": "playAudio", "data": data})


def kill_audio_message() -> str:
    """mod_audio_fork ``killAudio``: stop playback now (jambonz also empties its streaming buffer)."""
    return '{"type":"killAudio"}'


def mark_message(name: str) -> str:
    """jambonz mod_audio_fork ``mark``.

    The fork echoes the name back without JSON escaping (``lws_glue.cpp`` ``send_mark_event``), so
    names with quotes, backslashes or control characters would come back as broken JSON: refused.
    """
    _check_mark_name(name)
    return _dump({"type": "mark", "data": {"name": name}})


def clear_marks_message() -> str:
    """jambonz mod_audio_fork ``clearMarks``: pending marks are echoed with ``"event":"cleared"``."""
    return '{"type":"clearMarks"}'


def disconnect_message() -> str:
    """mod_audio_fork ``disconnect``: raises an event; the FreeSWITCH application ends the call."""
    return '{"type":"disconnect"}'


def stream_audio_message(
    audio: bytes, sample_rate_hz: int, *, data_type: str = "raw", mark: str | None = None
) -> str:
    """mod_audio_stream ``streamAudio``; ``mark`` as in :func:`play_audio_message` (the
    ``mod_audio_stream::play`` event carries the data object less the audio)."""
    if data_type not in STREAM_AUDIO_DATA_TYPES:
        raise ValueError(f"audioDataType must be one of {sorted(STREAM_AUDIO_DATA_TYPES)}")
    if data_type == "raw":
        _check_raw_rate(sample_rate_hz)
    data: dict[str, Any] = {"audioDataType": data_type, "sampleRate": sample_rate_hz}
    if mark is not None:
        _check_mark_name(mark)
        data["mark"] = mark
    data["audioData"] = _b64encode(audio)
    return _dump({"type": "streamAudio", "data": data})


# --- does the far end play what it is sent? ------------------------------------------------------------


class PlaybackCheck:
    """The rule that tells a far end that plays agent audio from one that drops it.

    A far end that plays the audio echoes every mark placed after it (jambonz mod_audio_fork
    once the audio before the mark has played, or cleared by ``killAudio``; the dialplan script
    once a file has played, or was stopped). The first mark placed starts a deadline of
    ``within`` seconds; any echo before it confirms playback for the rest of the stream, and a
    deadline that passes without one is the verdict that nothing is played. A clear (barge-in)
    before any echo restarts the wait at the next mark: a far end may drop cleared marks.

    Pure state: times are monotonic seconds passed in.
    """

    def __init__(self, within: float) -> None:
        self.within = within
        self.confirmed = False
        self._deadline: float | None = None

    def mark_placed(self, now: float) -> None:
        if not self.confirmed and self._deadline is None:
            self._deadline = now + self.within

    def echoed(self) -> None:
        self.confirmed = True
        self._deadline = None

    def cleared(self) -> None:
        if not self.confirmed:
            self._deadline = None

    def restart(self) -> None:
        """Check again from the next mark (after switching how the audio is sent)."""
        self.confirmed = False
        self._deadline = None

    def failed(self, now: float) -> bool:
        """True once the deadline has passed with no echo."""
        return self._deadline is not None and now >= self._deadline


# --- commands as FreeSWITCH reads them (test side) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlayAudio:
    audio: bytes
    sample_rate_hz: int | None
    content_type: str
    text_content: str | None = None
    mark: str | None = None


@dataclass(frozen=True, slots=True)
class StreamAudio:
    audio: bytes
    sample_rate_hz: int | None
    data_type: str
    mark: str | None = None


@dataclass(frozen=True, slots=True)
class KillAudio:
    pass


@dataclass(frozen=True, slots=True)
class MarkCommand:
    name: str


@dataclass(frozen=True, slots=True)
class ClearMarks:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    pass


Command = (
    PlayAudio | StreamAudio | KillAudio | MarkCommand | ClearMarks | Disconnect | Unknown | InvalidMessage
)


def parse_command(text: str | bytes) -> Command:
    """Decode a JSON command as the FreeSWITCH modules read it. Never raises."""
    try:
        message = _load(text)
        kind = message.get("type")
        if not isinstance(kind, str):
            raise _Invalid("'type' must be a string")
        data = message.get("data")
        if kind in ("playAudio", "streamAudio"):
            if not isinstance(data, dict):
                raise _Invalid(f"{kind} without a data object")
            rate = data.get("sampleRate")
            rate = rate if isinstance(rate, int) and not isinstance(rate, bool) else None
            mark = data.get("mark")
            mark = mark if isinstance(mark, str) else None
            if kind == "playAudio":
                content_type = data.get("audioContentType")
                text_content = data.get("textContent")
                if not isinstance(content_type, str):
                    raise _Invalid("playAudio without audioContentType")
                return PlayAudio(
                    _b64decode(data.get("audioContent"), "audioContent"),
                    rate,
                    content_type,
                    text_content if isinstance(text_content, str) else None,
                    mark,
                )
            data_type = data.get("audioDataType")
            if not isinstance(data_type, str):
                raise _Invalid("streamAudio without audioDataType")
            return StreamAudio(_b64decode(data.get("audioData"), "audioData"), rate, data_type, mark)
        if kind == "killAudio":
            return KillAudio()
        if kind == "mark":
            if not isinstance(data, dict) or not isinstance(data.get("name"), str):
                raise _Invalid("mark without data.name")
            return MarkCommand(data["name"])
        if kind == "clearMarks":
            return ClearMarks()
        if kind == "disconnect":
            return Disconnect()
        return Unknown(kind, message)
    except _Invalid as exc:
        return InvalidMessage(str(exc))
