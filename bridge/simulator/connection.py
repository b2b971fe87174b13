"""One client connection to the simulator: protocol state, input audio, conversation items."""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import itertools
import json
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from aiohttp import WSMsgType, web

from bridge.simulator.audio import codec_for
from bridge.simulator.conversation import Item, Response, SimulatedSession, random_tag
from bridge.simulator.responses import ResponseStreaming
from media.codec import MODEL_RATE_HZ, SLIN_24K
from media.vad import ECHO_CAP_MS, InputAudioBuffer, SpeechStarted, Turn, VadParams
from sip.realtime_session import (
    SERVER_VAD_DEFAULTS,
    InvalidRequest,
    apply_session_update,
    check_keys,
    default_session,
    expect_choice,
    expect_dict,
    expect_int,
    expect_str,
)
from sip.voicelive_session import apply_voicelive_update, default_voicelive_session, ga_view

if TYPE_CHECKING:
    from bridge.simulator.server import SimulatorServer

log = logging.getLogger(__name__)

Samples = npt.NDArray[np.int16]
Json = dict[str, Any]

REALTIME_PATHS = ("/v1/realtime", "/openai/v1/realtime")
VOICE_LIVE_PATH = "/voice-live/realtime"
# GA server event names -> Voice Live's (beta-era) names.
_VOICE_LIVE_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
}
_VOICE_LIVE_RENAME = re.compile(r'"type":"(' + "|".join(re.escape(k) for k in _VOICE_LIVE_NAMES) + r')"')
DEFAULT_MODEL = "gpt-realtime"
# The service limits one append to 15 MiB of base64.
MAX_APPEND_BYTES = 15 * 1024 * 1024
_MAX_MESSAGE_BYTES = MAX_APPEND_BYTES + 64 * 1024
MAX_SESSION_SECONDS = 3600.0
# A manual commit needs at least this much audio (the service's "buffer too small" rule).
MIN_COMMIT_MS = 100
# Bounded observability records.
_MAX_EVENTS_RECORDED = 100_000
# Appends remembered for the timing log: a turn ends silence_duration_ms after its last speech frame.
_ARRIVALS_KEPT = 1024

_CLIENT_EVENT_TYPES = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
)
_APPEND_PREFIX = '{"type":"input_audio_buffer.append","audio":"'
_PCM16_LE = np.dtype("<i2")

def _voice_live_name(match: re.Match[str]) -> str:
    return f'"type":"{_VOICE_LIVE_NAMES[match.group(1)]}"'


# --------------------------------------------------------------------------- one connection


class SimulatedConnection(ResponseStreaming):
    """Protocol state and event loop of one client connection."""

    def __init__(self, server: SimulatorServer, ws: web.WebSocketResponse, record: SimulatedSession,
                 *, voice_live: bool = False) -> None:
        self.voice_live = voice_live
        self._server = server
        self._ws = ws
        self.record = record
        self._clock = server.clock
        self._tag = random_tag()
        self._seq = itertools.count(1)
        self._out_lock = asyncio.Lock()
        self._session = default_session(record.id, record.model, int(time.time() + MAX_SESSION_SECONDS))
        # Voice Live: the session in the service's own shape; self._session is its GA view.
        self._vl_session = default_voicelive_session(record.id, record.model) if voice_live else None
        if self._vl_session is not None:
            self._session = ga_view(self._vl_session, self._session)
        record.session_config = self._session
        record.service_config = self._public_session()
        self._in_codec = SLIN_24K
        self._input = InputAudioBuffer(MODEL_RATE_HZ, VadParams.from_config(SERVER_VAD_DEFAULTS))
        self._items: list[Item] = []
        self._by_id: dict[str, Item] = {}
        self._active: Response | None = None
        self._voice_locked = False
        self._next_turn_item_id = self._new_id("item")
        self._timing = server.timing_log
        # (stream position after the append in ms, arrival time), only while timing is logged.
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=_ARRIVALS_KEPT)
        self._tg: asyncio.TaskGroup | None = None
        self._idle_task: asyncio.Task[None] | None = None
        self._limit_task: asyncio.Task[None] | None = None
        self._peer_gone = False
        self._handlers: dict[str, Callable[[Json], Awaitable[None]]] = {
            "session.update": self._on_session_update,
            "input_audio_buffer.append": self._on_append,
            "input_audio_buffer.commit": self._on_commit,
            "input_audio_buffer.clear": self._on_clear,
            "conversation.item.create": self._on_item_create,
            "conversation.item.retrieve": self._on_item_retrieve,
            "conversation.item.truncate": self._on_item_truncate,
            "conversation.item.delete": self._on_item_delete,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
            "output_audio_buffer.clear": self._on_output_audio_buffer_clear,
        }

    # -- plumbing ------------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{self._tag}{next(self._seq):x}"

    async def _send(self, *events: Json) -> None:
        await self._send_raw([json.dumps(self._stamp(e), separators=(",", ":")) for e in events])

    def _stamp(self, event: Json) -> Json:
        return {"event_id": self._new_id("event"), **event}

    async def _send_raw(self, frames: list[str]) -> None:
        if self.voice_live:
            frames = [_VOICE_LIVE_RENAME.sub(_voice_live_name, f, count=1) for f in frames]
        async with self._out_lock:
            for frame in frames:
                if self._peer_gone or self._ws.closed:
                    self._peer_gone = True
                    return
                try:
                    await self._ws.send_str(frame)
                except ConnectionResetError:
                    # The client went away; the receive loop ends on its own.
                    self._peer_gone = True
                    return

    async def _send_error(self, exc: InvalidRequest, client_event_id: Any) -> None:
        error: Json = {
            "type": exc.error_type,
            "code": exc.code,
            "message": exc.message,
            "param": exc.param,
            "event_id": client_event_id if isinstance(client_event_id, str) else None,
        }
        self.record.errors_sent.append(error)
        await self._send({"type": "error", "error": error})

    def _record_event(self, event_type: str) -> None:
        events = self.record.events_in
        if len(events) < _MAX_EVENTS_RECORDED:
            events.append(event_type)

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                if self._server.max_session_seconds > 0:
                    self._limit_task = tg.create_task(self._session_limit())
                await self._send({"type": "session.created", "session": self._public_session()})
                async for msg in self._ws:
                    if msg.type is WSMsgType.TEXT:
                        await self._receive_text(msg.data)
                    elif msg.type is WSMsgType.BINARY:
                        self._record_event("<binary>")
                        await self._send_error(InvalidRequest(
                            "Binary frames are not supported; send events as JSON text frames.",
                            code="invalid_json"), None)
                    else:
                        break
            finally:
                self._teardown()

    def _teardown(self) -> None:
        self._peer_gone = True
        if self._active is not None:
            self._stop_streaming(self._active)
            self._active = None
        for task in (self._idle_task, self._limit_task):
            if task is not None:
                task.cancel()

    async def close(self, code: int, message: str) -> None:
        if self.record.close_code is None:
            self.record.close_code = code
        await self._ws.close(code=code, message=message.encode())

    async def _session_limit(self) -> None:
        limit = self._server.max_session_seconds
        await asyncio.sleep(limit)
        self._limit_task = None  # from here on the close handshake must not be cancelled by teardown
        minutes = limit / 60
        shown = f"{minutes:.0f}" if minutes == int(minutes) else f"{minutes:g}"
        await self.close(1001, f"Your session hit the maximum duration of {shown} minutes.")

    async def _receive_text(self, data: str) -> None:
        if data.startswith(_APPEND_PREFIX) and data.endswith('"}'):
            # Fast path for the audio stream (50 events a second per call), as bridges serialise it:
            # base64 contains neither quotes nor backslashes, so the payload is the whole middle.
            audio = data[len(_APPEND_PREFIX):-2]
            if '"' not in audio and "\\" not in audio:
                self._record_event("input_audio_buffer.append")
                try:
                    await self._on_append({"audio": audio})
                except InvalidRequest as exc:
                    await self._send_error(exc, None)
                return
        try:
            event = json.loads(data)
        except ValueError:
            self._record_event("<invalid json>")
            await self._send_error(InvalidRequest("We could not parse the JSON body of your request.",
                                                  code="invalid_json"), None)
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            self._record_event("<no type>")
            await self._send_error(InvalidRequest("Missing required parameter: 'type'.",
                                                  code="missing_required_parameter", param="type"), None)
            return
        kind = event["type"]
        self._record_event(kind)
        handler = self._handlers.get(kind)
        try:
            if handler is None:
                listed = ", ".join(f"'{t}'" for t in _CLIENT_EVENT_TYPES)
                raise InvalidRequest(f"Invalid value: '{kind}'. Supported values are: {listed}.",
                                     param="type")
            await handler(event)
        except InvalidRequest as exc:
            await self._send_error(exc, event.get("event_id"))

    # -- session -------------------------------------------------------------------------------

    async def _on_session_update(self, event: Json) -> None:
        if "session" not in event:
            raise InvalidRequest("Missing required parameter: 'session'.",
                                 code="missing_required_parameter", param="session")
        self.record.session_updates.append(copy.deepcopy(event["session"]))
        if self._vl_session is not None:
            vl_new = apply_voicelive_update(self._vl_session, event["session"], voice_locked=self._voice_locked)
            new = ga_view(vl_new, self._session)
            self._vl_session = vl_new
        else:
            new = apply_session_update(self._session, event["session"], voice_locked=self._voice_locked)
        old_input = self._session["audio"]["input"]
        self._session = new
        self.record.session_config = new
        self.record.service_config = self._public_session()
        new_input = new["audio"]["input"]
        td = new_input["turn_detection"]
        vad = VadParams.from_config(td) if td is not None else None
        if new_input["format"] != old_input["format"]:
            # A new input format starts a new buffer; positions keep counting.
            self._in_codec = codec_for(new_input["format"])
            self._input = InputAudioBuffer(self._in_codec.rate_hz, vad, self._input.stream_ms)
        else:
            self._input.set_vad(vad)
        await self._send({"type": "session.updated", "session": self._public_session()})
        self._arm_idle_timer(0.0)

    def _public_session(self) -> Json:
        return self._vl_session if self._vl_session is not None else self._session

    # -- input audio ---------------------------------------------------------------------------

    async def _on_append(self, event: Json) -> None:
        arrived = self._clock() if self._timing is not None else 0.0
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise InvalidRequest("Missing required parameter: 'audio'.", code="missing_required_parameter",
                                 param="audio")
        if len(audio) > MAX_APPEND_BYTES:
            raise InvalidRequest(f"Invalid 'audio': string too long. Expected a string with maximum length "
                                 f"{MAX_APPEND_BYTES}, but got a string with length {len(audio)} instead.",
                                 code="string_above_max_length", param="audio")
        try:
            payload = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("Invalid 'audio'. Expected base64-encoded audio.", param="audio") from None
        codec = self._in_codec
        if codec.bytes_per_sample == 2:
            # A trailing odd byte cannot be half a sample of the next append; it is dropped.
            samples = np.frombuffer(payload, dtype=_PCM16_LE, count=len(payload) // 2)
            if _PCM16_LE != np.int16:
                samples = samples.astype(np.int16)
        else:
            samples = codec.decode(payload)
        self.record.input_audio_ms += len(samples) * 1000.0 / codec.rate_hz
        self.record.input_sha256.update(payload)
        detected = self._input.feed(samples)
        if self._timing is not None:
            self._arrivals.append((self._input.stream_ms, arrived))
        for ev in detected:
            if isinstance(ev, SpeechStarted):
                await self._speech_started(ev)
            else:
                await self._speech_stopped(ev.turn)

    async def _speech_started(self, ev: SpeechStarted) -> None:
        now = self._clock()
        self.record.speech_started_at.append(now)
        if self._timing is not None:
            active = self._active
            self._timing.write("speech_started", self.record.id, now,
                               agent=active is not None and active.first_audio_at is not None)
        self._cancel_idle_timer()
        await self._send({"type": "input_audio_buffer.speech_started", "audio_start_ms": ev.audio_start_ms,
                          "item_id": self._next_turn_item_id})
        td = self._session["audio"]["input"]["turn_detection"]
        active = self._active
        if active is not None and active.conversation and td is not None and td["interrupt_response"]:
            await self._finish(active, "cancelled", "turn_detected")

    async def _speech_stopped(self, turn: Turn) -> None:
        now = self._clock()
        self.record.speech_stopped_at.append(now)
        if self._timing is not None:
            arrived = next((t for end_ms, t in self._arrivals if end_ms >= turn.speech_end_ms), None)
            if arrived is not None:
                self._timing.write("speech_end", self.record.id, arrived, stopped=now)
        await self._send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": turn.end_ms,
                          "item_id": self._next_turn_item_id})
        await self._commit_turn(turn)
        td = self._session["audio"]["input"]["turn_detection"]
        if td is not None and td["create_response"] and self._active is None:
            await self._start_response(None)
        else:
            self._arm_idle_timer(0.0)

    async def _on_commit(self, event: Json) -> None:
        pending = self._input.pending_ms
        if pending < MIN_COMMIT_MS:
            raise InvalidRequest(
                f"Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {pending:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty")
        await self._commit_turn(self._input.commit())

    async def _on_clear(self, event: Json) -> None:
        self._input.clear()
        await self._send({"type": "input_audio_buffer.cleared"})

    async def _commit_turn(self, turn: Turn) -> None:
        item_id = self._next_turn_item_id
        self._next_turn_item_id = self._new_id("item")
        # Speech span: from the (padded) start to the last speech frame; the trailing silence the
        # detector waited for is not echoed.
        span_ms = max(0, min(turn.speech_end_ms, turn.end_ms) - turn.start_ms)
        item = Item(item_id, "message", role="user", content=[{"type": "input_audio", "transcript": None}])
        item.audio = turn.audio[: turn.rate_hz * min(span_ms, ECHO_CAP_MS) // 1000]
        item.audio_rate_hz = turn.rate_hz
        item.audio_ms = span_ms
        previous = self._items[-1].id if self._items else None
        self._insert(item, previous)
        await self._send(
            {"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous},
            {"type": "conversation.item.added", "item": item.to_json(), "previous_item_id": previous},
            {"type": "conversation.item.done", "item": item.to_json(), "previous_item_id": previous},
        )
        transcription = self._session["audio"]["input"]["transcription"]
        if transcription is not None:
            transcript = f"[caller speech {span_ms / 1000:.1f} s]"
            item.content[0]["transcript"] = transcript
            await self._send(
                {"type": "conversation.item.input_audio_transcription.delta", "item_id": item_id,
                 "content_index": 0, "delta": transcript},
                {"type": "conversation.item.input_audio_transcription.completed", "item_id": item_id,
                 "content_index": 0, "transcript": transcript,
                 "usage": {"type": "duration", "seconds": round(span_ms / 1000, 3)}},
            )

    # -- idle timeout (server_vad idle_timeout_ms) ---------------------------------------------

    def _arm_idle_timer(self, playback_remaining: float) -> None:
        self._cancel_idle_timer()
        td = self._session["audio"]["input"]["turn_detection"]
        if td is None or td.get("idle_timeout_ms") is None or self._tg is None or self._peer_gone:
            return
        if self._active is not None or self._input.speaking:
            return
        delay = playback_remaining + td["idle_timeout_ms"] / 1000
        self._idle_task = self._tg.create_task(self._idle_timeout(delay))

    def _cancel_idle_timer(self) -> None:
        if self._idle_task is not None:
            self._idle_task.cancel()
            self._idle_task = None

    async def _idle_timeout(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._idle_task = None
        if self._active is not None or self._input.speaking:
            return
        turn = self._input.commit()
        await self._send({"type": "input_audio_buffer.timeout_triggered", "audio_start_ms": turn.start_ms,
                          "audio_end_ms": turn.end_ms, "item_id": self._next_turn_item_id})
        await self._commit_turn(Turn(turn.start_ms, turn.end_ms, turn.start_ms,
                                      np.zeros(0, dtype=np.int16), turn.rate_hz))
        await self._start_response(None, kind_override="idle")

    # -- conversation items --------------------------------------------------------------------

    def _insert(self, item: Item, previous_item_id: str | None) -> None:
        if item.audio is not None:
            for older in self._items:
                older.audio = None  # only the latest caller audio is kept
        if previous_item_id is None:
            self._items.append(item)
        elif previous_item_id == "root":
            self._items.insert(0, item)
        else:
            index = next(i for i, it in enumerate(self._items) if it.id == previous_item_id)
            self._items.insert(index + 1, item)
        self._by_id[item.id] = item

    def _parse_item(self, raw: Any) -> Item:
        data = expect_dict(raw, "item")
        kind = expect_choice(data.get("type"), "item.type",
                              ("message", "function_call", "function_call_output"))
        item_id = data.get("id")
        if item_id is None:
            item_id = self._new_id("item")
        elif not isinstance(item_id, str) or not item_id or len(item_id) > 32:
            raise InvalidRequest("Invalid 'item.id': expected a string of at most 32 characters.",
                                 param="item.id")
        elif item_id in self._by_id:
            raise InvalidRequest(f"Item with id '{item_id}' already exists.", code="item_already_exists",
                                 param="item.id")
        if kind == "function_call_output":
            check_keys(data, ("type", "id", "object", "status", "call_id", "output"), "item")
            for key in ("call_id", "output"):
                if key not in data:
                    raise InvalidRequest(f"Missing required parameter: 'item.{key}'.",
                                         code="missing_required_parameter", param=f"item.{key}")
                expect_str(data[key], f"item.{key}")
            return Item(item_id, kind, call_id=data["call_id"], output=data["output"])
        if kind == "function_call":
            check_keys(data, ("type", "id", "object", "status", "call_id", "name", "arguments"), "item")
            for key in ("name", "arguments"):
                if key not in data:
                    raise InvalidRequest(f"Missing required parameter: 'item.{key}'.",
                                         code="missing_required_parameter", param=f"item.{key}")
                expect_str(data[key], f"item.{key}")
            return Item(item_id, kind, name=data["name"], arguments=data["arguments"],
                         call_id=str(data.get("call_id") or self._new_id("call")))
        check_keys(data, ("type", "id", "object", "status", "role", "content"), "item")
        role = expect_choice(data.get("role"), "item.role", ("user", "assistant", "system"))
        content = data.get("content")
        if not isinstance(content, list) or not content:
            raise InvalidRequest("Invalid 'item.content': expected a non-empty array.", param="item.content")
        allowed = {"user": ("input_text", "input_audio", "input_image"), "system": ("input_text",),
                   "assistant": ("output_text", "output_audio")}[role]
        parts: list[Json] = []
        item = Item(item_id, kind, role=role)
        for i, raw_part in enumerate(content):
            part = expect_dict(raw_part, f"item.content[{i}]")
            ptype = expect_choice(part.get("type"), f"item.content[{i}].type", allowed)
            if ptype in ("input_text", "output_text"):
                text = expect_str(part.get("text"), f"item.content[{i}].text")
                parts.append({"type": ptype, "text": text})
            elif ptype == "input_audio":
                audio_b64 = expect_str(part.get("audio"), f"item.content[{i}].audio")
                try:
                    payload = base64.b64decode(audio_b64, validate=True)
                except (binascii.Error, ValueError):
                    raise InvalidRequest("Invalid 'audio'. Expected base64-encoded audio.",
                                         param=f"item.content[{i}].audio") from None
                samples = self._in_codec.decode(payload)
                item.audio = samples[: self._in_codec.rate_hz * ECHO_CAP_MS // 1000]
                item.audio_rate_hz = self._in_codec.rate_hz
                item.audio_ms = len(samples) * 1000 // self._in_codec.rate_hz
                parts.append({"type": ptype, "transcript": part.get("transcript")})
            elif ptype == "output_audio":
                parts.append({"type": ptype, "transcript": part.get("transcript")})
            else:
                parts.append({"type": ptype, "image_url": part.get("image_url"),
                              "detail": part.get("detail")})
        item.content = parts
        return item

    async def _on_item_create(self, event: Json) -> None:
        if "item" not in event:
            raise InvalidRequest("Missing required parameter: 'item'.", code="missing_required_parameter",
                                 param="item")
        previous = event.get("previous_item_id")
        if previous is not None and previous != "root" and previous not in self._by_id:
            raise InvalidRequest(f"Previous item with id '{previous}' not found.", param="previous_item_id")
        item = self._parse_item(event["item"])
        self.record.items_created.append(copy.deepcopy(event["item"]))
        if previous is None:
            previous_id = self._items[-1].id if self._items else None
        else:
            previous_id = None if previous == "root" else previous
        self._insert(item, previous)
        body = item.to_json()
        await self._send(
            {"type": "conversation.item.added", "item": body, "previous_item_id": previous_id},
            {"type": "conversation.item.done", "item": body, "previous_item_id": previous_id},
        )

    def _lookup(self, event: Json, action: str) -> Item:
        if "item_id" not in event:
            raise InvalidRequest("Missing required parameter: 'item_id'.", code="missing_required_parameter",
                                 param="item_id")
        item_id = event["item_id"]
        item = self._by_id.get(item_id) if isinstance(item_id, str) else None
        if item is None:
            raise InvalidRequest(f"Error {action} item: the item with id '{item_id}' does not exist.",
                                 code="item_not_found", param="item_id")
        return item

    async def _on_item_retrieve(self, event: Json) -> None:
        item = self._lookup(event, "retrieving")
        await self._send({"type": "conversation.item.retrieved", "item": item.to_json()})

    async def _on_item_delete(self, event: Json) -> None:
        item = self._lookup(event, "deleting")
        self._items.remove(item)
        del self._by_id[item.id]
        await self._send({"type": "conversation.item.deleted", "item_id": item.id})

    async def _on_item_truncate(self, event: Json) -> None:
        for key in ("item_id", "content_index", "audio_end_ms"):
            if key not in event:
                raise InvalidRequest(f"Missing required parameter: '{key}'.",
                                     code="missing_required_parameter", param=key)
        audio_end_ms = expect_int(event["audio_end_ms"], "audio_end_ms", 0)
        content_index = expect_int(event["content_index"], "content_index", 0)
        entry: Json = {"item_id": event["item_id"], "content_index": content_index,
                       "audio_end_ms": audio_end_ms, "at": self._clock(), "accepted": False,
                       "produced_ms": None}
        self.record.truncates.append(entry)
        item = self._lookup(event, "truncating")
        is_audio = (item.type == "message" and item.role == "assistant"
                    and any(c.get("type") == "output_audio" for c in item.content) and item.produced_ms > 0)
        if not is_audio:
            raise InvalidRequest("Only model output audio messages can be truncated",
                                 code="unsupported_content_type", param="item_id")
        entry["produced_ms"] = item.produced_ms
        if content_index != 0:
            raise InvalidRequest(
                f"Invalid 'content_index': the item has no content at index {content_index}.",
                param="content_index")
        if audio_end_ms > item.produced_ms:
            raise InvalidRequest(f"Audio content of {item.produced_ms}ms is already shorter than "
                                 f"{audio_end_ms}ms", param="audio_end_ms")
        entry["accepted"] = True
        item.produced_ms = audio_end_ms
        item.truncated = True
        # The model forgets what the caller never heard, transcript included.
        for part in item.content:
            if part.get("type") == "output_audio":
                part["transcript"] = ""
        await self._send({"type": "conversation.item.truncated", "item_id": item.id,
                          "content_index": content_index, "audio_end_ms": audio_end_ms})

    async def _on_output_audio_buffer_clear(self, event: Json) -> None:
        raise InvalidRequest("output_audio_buffer.clear is only supported for WebRTC and SIP sessions.",
                             code="unsupported_event", param="type")

    # -- responses -----------------------------------------------------------------------------
