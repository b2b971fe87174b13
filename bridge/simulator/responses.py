"""Responses of the simulated model: planning what to say, streaming it at real-time pace, finishing."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from bridge.simulator.audio import (
    GREETING_TRANSCRIPT,
    GREETINGS,
    SimulatorError,
    codec_for,
    encode,
    encoded_clip,
    format_json,
    session_language,
    voiced_span_ms,
)
from bridge.simulator.conversation import Item, Response, SimulatedSession, resolve_future
from media.pacing import Pacer
from sip.realtime_session import (
    InvalidRequest,
    audio_format,
    check_keys,
    expect_dict,
    expect_str,
    max_output_tokens,
    output_modalities,
    parse_tools,
    tool_choice,
)

if TYPE_CHECKING:
    from bridge.simulator.server import SimulatorServer, TimingLog

log = logging.getLogger(__name__)

Samples = npt.NDArray[np.int16]
Json = dict[str, Any]

# Audio sent at once when a response starts, before real-time pacing: the service also runs
# ahead of playback, and the client's playout buffer is primed against event-loop jitter.
LEAD_MS = 200
_TOOL_HOOK = re.compile(r"call_tool:([A-Za-z0-9_.\-]+)[ \t]*(.*)", re.DOTALL)


class ResponseStreaming:
    """The response half of a ``SimulatedConnection`` (a mixin: state lives on the connection)."""

    # Declared for the type checker; SimulatedConnection sets them and defines the methods below.
    _server: SimulatorServer
    _clock: Callable[[], float]
    _tag: str
    _session: Json
    _items: list[Item]
    _active: Response | None
    _timing: TimingLog | None
    _tg: asyncio.TaskGroup | None
    _peer_gone: bool
    record: SimulatedSession

    def _new_id(self, prefix: str) -> str:
        raise NotImplementedError

    async def _send(self, *events: Json) -> None:
        raise NotImplementedError

    async def _send_raw(self, frames: list[str]) -> None:
        raise NotImplementedError

    def _insert(self, item: Item, previous_item_id: str | None) -> None:
        raise NotImplementedError

    def _arm_idle_timer(self, playback_remaining: float) -> None:
        raise NotImplementedError

    def _cancel_idle_timer(self) -> None:
        raise NotImplementedError


    async def _on_response_create(self, event: Json) -> None:
        params = event.get("response")
        if params is not None:
            params = expect_dict(params, "response")
            check_keys(params, ("audio", "conversation", "input", "instructions", "max_output_tokens",
                                 "metadata", "output_modalities", "prompt", "tool_choice", "tools",
                                 "parallel_tool_calls", "reasoning"), "response")
            if "instructions" in params:
                expect_str(params["instructions"], "response.instructions")
            if "output_modalities" in params:
                output_modalities(params["output_modalities"], "response.output_modalities")
            if "tools" in params:
                parse_tools(params["tools"], "response.tools")
            if "tool_choice" in params:
                tool_choice(params["tool_choice"], "response.tool_choice")
            if "max_output_tokens" in params:
                max_output_tokens(params["max_output_tokens"], "response.max_output_tokens")
            if "audio" in params:
                audio = expect_dict(params["audio"], "response.audio")
                check_keys(audio, ("output",), "response.audio")
                out = expect_dict(audio.get("output", {}), "response.audio.output")
                check_keys(out, ("format", "voice"), "response.audio.output")
                if "format" in out:
                    audio_format(out["format"], "response.audio.output.format")
        self.record.response_requests.append(copy.deepcopy(params) if params else {})
        if self._active is not None:
            raise InvalidRequest(
                f"Conversation already has an active response in progress: {self._active.id}. "
                "Wait until the response is finished before creating a new one.",
                code="conversation_already_has_active_response")
        await self._start_response(params)

    async def _on_response_cancel(self, event: Json) -> None:
        active = self._active
        wanted = event.get("response_id")
        entry: Json = {"response_id": wanted, "at": self._clock(), "active": active is not None}
        self.record.cancels.append(entry)
        if active is None or (wanted is not None and wanted != active.id):
            raise InvalidRequest("Cancellation failed: no active response found",
                                 code="response_cancel_not_active")
        entry["cancelled_response_id"] = active.id
        await self._finish(active, "cancelled", "client_cancelled")

    def _language(self, params: Json) -> str:
        """The language of the recorded clips: see ``session_language``."""
        transcription = self._session["audio"]["input"].get("transcription") or {}
        instructions = [params.get("instructions") or "", self._session.get("instructions") or ""]
        return session_language(transcription.get("language"), instructions)

    def _plan(
        self, params: Json, kind_override: str | None
    ) -> tuple[str, str, Samples | None, int, Json | None]:
        """What the next response says: (kind, transcript, source audio, its rate, tool call)."""
        if kind_override == "idle":
            return "idle", "[are you still there?]", None, 0, None
        last: Item | None = None
        for item in reversed(self._items):
            if item.type == "function_call_output" or (item.type == "message" and item.role == "user"):
                last = item
                break
        if last is not None and last.type == "function_call_output":
            return "confirmation", "[tool result received]", None, 0, None
        if last is not None and not last.hook_used:
            match = _TOOL_HOOK.search(last.text())
            if match is not None:
                name, args = match.group(1), match.group(2).strip() or "{}"
                tools = params.get("tools", self._session["tools"]) or []
                choice = params.get("tool_choice", self._session["tool_choice"])
                declared = any(t.get("type") == "function" and t.get("name") == name for t in tools)
                if declared and choice != "none":
                    last.hook_used = True
                    return "tool_call", "", None, 0, {"name": name, "arguments": args}
                return "text_reply", f"[tool {name} is not available]", None, 0, None
        heard = [it for it in self._items if it.type == "message" and it.role == "user" and it.audio_ms > 0]
        if not heard:
            return "greeting", GREETING_TRANSCRIPT, None, 0, None
        if last is not None and last.audio_ms > 0 and last.audio is not None and len(last.audio):
            seconds = len(last.audio) / last.audio_rate_hz
            return "echo", f"[echo of caller speech {seconds:.1f} s]", last.audio, last.audio_rate_hz, None
        return "text_reply", "[reply to text message]", None, 0, None

    async def _start_response(self, params: Json | None, kind_override: str | None = None) -> None:
        params = params or {}
        self._cancel_idle_timer()
        if self._peer_gone:
            return
        kind, transcript, source, source_rate, tool = self._plan(params, kind_override)
        language = self._language(params)
        if kind == "greeting":
            transcript = GREETINGS[language].transcript
        modality = (params.get("output_modalities") or self._session["output_modalities"])[0]
        out_cfg = self._session["audio"]["output"]
        override = (params.get("audio") or {}).get("output") or {}
        codec = codec_for(audio_format(override["format"], "response.audio.output.format")
                       if "format" in override else out_cfg["format"])
        conversation = params.get("conversation", "auto") != "none"
        response_id = self._new_id("resp")
        item_id = self._new_id("item")
        if tool is not None:
            item = Item(item_id, "function_call", status="in_progress", name=tool["name"],
                         call_id=self._new_id("call"), arguments="")
        else:
            item = Item(item_id, "message", role="assistant", status="in_progress")
        voice = override.get("voice", out_cfg["voice"])
        resp = Response(response_id, kind, conversation, modality, codec, voice, item, transcript,
                         metadata=params.get("metadata"))
        if tool is None and modality == "audio":
            if source is not None:
                resp.audio = encode(source, source_rate, codec)
            else:
                resp.audio = encoded_clip("greeting" if kind == "greeting" else "short", codec, language)
        self._active = resp
        self.record.responses.append({"id": response_id, "kind": kind, "status": "in_progress",
                                      "item_id": item_id, "audio_ms": 0, "created_at": self._clock()})
        previous = self._items[-1].id if (conversation and self._items) else None
        if conversation:
            self._insert(item, None)
        created: list[Json] = [
            {"type": "response.created", "response": self._response_json(resp)},
            {"type": "rate_limits.updated", "rate_limits": [
                {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                {"name": "tokens", "limit": 400000, "remaining": 395000, "reset_seconds": 0.75}]},
            {"type": "response.output_item.added", "response_id": response_id, "output_index": 0,
             "item": item.to_json()},
        ]
        if conversation:
            created.append({"type": "conversation.item.added", "item": item.to_json(),
                            "previous_item_id": previous})
        if tool is not None:
            await self._send(*created)
            await self._emit_tool_call(resp, tool["arguments"])
            return
        if modality == "audio":
            part: Json = {"type": "audio", "transcript": ""}
            item.content = [{"type": "output_audio", "transcript": ""}]
        else:
            part = {"type": "text", "text": ""}
            item.content = [{"type": "output_text", "text": ""}]
        created.append({"type": "response.content_part.added", "response_id": response_id,
                        "item_id": item_id, "output_index": 0, "content_index": 0, "part": part})
        await self._send(*created)
        if modality == "text":
            await self._emit_text(resp)
            return
        if self._tg is None:
            raise SimulatorError("response started outside the connection's task group")
        resp.task = self._tg.create_task(self._stream_audio(resp))

    async def _emit_tool_call(self, resp: Response, arguments: str) -> None:
        item = resp.item
        base = {"response_id": resp.id, "item_id": item.id, "output_index": 0, "call_id": item.call_id}
        half = max(1, len(arguments) // 2)
        deltas = [arguments[:half], arguments[half:]] if len(arguments) > 1 else [arguments]
        await self._send(*[{"type": "response.function_call_arguments.delta", **base, "delta": d}
                           for d in deltas if d])
        item.arguments = arguments
        await self._send({"type": "response.function_call_arguments.done", **base, "name": item.name,
                          "arguments": arguments})
        await self._finish(resp, "completed", None)

    async def _emit_text(self, resp: Response) -> None:
        base = {"response_id": resp.id, "item_id": resp.item.id, "output_index": 0, "content_index": 0}
        words = resp.transcript.split(" ")
        await self._send(*[{"type": "response.output_text.delta", **base,
                            "delta": w if i == 0 else " " + w} for i, w in enumerate(words)])
        resp.transcript_sent = resp.transcript
        await self._finish(resp, "completed", None)

    async def _stream_audio(self, resp: Response) -> None:
        codec = resp.codec
        chunk = codec.bytes_for_ms(self._server.delta_ms)
        audio = resp.audio
        nchunks = max(1, math.ceil(len(audio) / chunk))
        words = resp.transcript.split(" ") if resp.transcript else []
        prefix = (f'{{"type":"response.output_audio.delta","response_id":"{resp.id}",'
                  f'"item_id":"{resp.item.id}","output_index":0,"content_index":0,"event_id":"')
        base = {"response_id": resp.id, "item_id": resp.item.id, "output_index": 0, "content_index": 0}
        period = self._server.delta_ms / 1000 / self._server.pace
        lead = max(1, LEAD_MS // self._server.delta_ms)  # chunks sent at once
        # Chunk number ``lead`` is due one period after the start, the next one period later, ...
        pacer = Pacer(self._clock() + period, period=period)
        word_index = 0
        for n in range(nchunks):
            if n >= lead:
                delay = pacer.delay(self._clock())
                if delay > 0:
                    await self._pause(resp, delay)
            if resp.finished or self._peer_gone:
                return
            frames: list[str] = []
            # Transcript words are spread evenly over the audio, each ahead of the audio it names.
            while word_index < len(words) and word_index * nchunks <= n * len(words):
                text = words[word_index] if word_index == 0 else " " + words[word_index]
                resp.transcript_sent += text
                frames.append(json.dumps({"event_id": self._new_id("event"),
                                          "type": "response.output_audio_transcript.delta", **base,
                                          "delta": text}, separators=(",", ":")))
                word_index += 1
            piece = audio[n * chunk:(n + 1) * chunk]
            if piece:
                resp.sent_bytes += len(piece)
                if not resp.item.truncated:
                    resp.item.produced_ms = int(codec.duration_ms(resp.sent_bytes))
                if resp.first_audio_at is None:
                    resp.first_audio_at = self._clock()
                    self._voice_locked = True
                    if self._timing is not None:
                        self._timing.write("first_audio", self.record.id, resp.first_audio_at,
                                           r=resp.id, kind=resp.kind)
                frames.append(prefix + self._new_id("event") + '","delta":"'
                              + base64.b64encode(piece).decode("ascii") + '"}')
            await self._send_raw(frames)
            if n >= lead:
                pacer.frame_sent(self._clock())
        await self._finish(resp, "completed", None)

    async def _pause(self, resp: Response, delay: float) -> None:
        # A sleep that _stop_streaming can cut short, without cancelling a task mid-send.
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        handle = loop.call_later(delay, resolve_future, fut)
        resp.wake = fut
        try:
            await fut
        finally:
            handle.cancel()
            resp.wake = None

    def _stop_streaming(self, resp: Response) -> None:
        resp.finished = True
        if resp.wake is not None:
            resolve_future(resp.wake)

    async def _finish(self, resp: Response, status: str, reason: str | None) -> None:
        """Close a response: its parts, its item, then ``response.done``."""
        if resp.status != "in_progress" or self._peer_gone:
            return
        self._stop_streaming(resp)
        if self._active is resp:
            self._active = None
        resp.status = status
        resp.status_reason = reason
        item = resp.item
        item.status = "completed" if status == "completed" else "incomplete"
        events: list[Json] = []
        base = {"response_id": resp.id, "item_id": item.id, "output_index": 0}
        if item.type == "message":
            transcript = resp.transcript if status == "completed" else resp.transcript_sent
            if resp.modality == "audio":
                item.content = [{"type": "output_audio", "transcript": transcript}]
                events += [
                    {"type": "response.output_audio.done", **base, "content_index": 0},
                    {"type": "response.output_audio_transcript.done", **base, "content_index": 0,
                     "transcript": transcript},
                    {"type": "response.content_part.done", **base, "content_index": 0,
                     "part": {"type": "audio", "transcript": transcript}},
                ]
            else:
                item.content = [{"type": "output_text", "text": transcript}]
                events += [
                    {"type": "response.output_text.done", **base, "content_index": 0, "text": transcript},
                    {"type": "response.content_part.done", **base, "content_index": 0,
                     "part": {"type": "text", "text": transcript}},
                ]
        body = item.to_json()
        events.append({"type": "response.output_item.done", "response_id": resp.id, "output_index": 0,
                       "item": body})
        if resp.conversation:
            index = next((i for i, it in enumerate(self._items) if it is item), None)
            previous = self._items[index - 1].id if index else None
            events.append({"type": "conversation.item.done", "item": body, "previous_item_id": previous})
        events.append({"type": "response.done", "response": self._response_json(resp)})
        summary = next((r for r in reversed(self.record.responses) if r["id"] == resp.id), None)
        if summary is not None:
            summary.update(status=status, reason=reason, audio_ms=item.produced_ms, done_at=self._clock())
        if self._timing is not None and resp.first_audio_at is not None:
            self._timing.write("done", self.record.id, self._clock(), r=resp.id, status=status,
                               audio_ms=item.produced_ms,
                               voiced_ms=voiced_span_ms(resp.audio[:resp.sent_bytes], resp.codec))
        await self._send(*events)
        playback_remaining = 0.0
        if resp.first_audio_at is not None and status == "completed":
            playback_remaining = max(0.0, item.produced_ms / 1000 - (self._clock() - resp.first_audio_at))
        self._arm_idle_timer(playback_remaining)

    def _response_json(self, resp: Response) -> Json:
        out: Json = {
            "object": "realtime.response",
            "id": resp.id,
            "status": resp.status,
            "status_details": None,
            "output": [],
            "conversation_id": f"conv_{self._tag}" if resp.conversation else None,
            "output_modalities": [resp.modality],
            "max_output_tokens": self._session["max_output_tokens"],
            "audio": {"output": {"format": format_json(resp.codec), "voice": resp.voice}},
            "usage": None,
            "metadata": resp.metadata,
        }
        if resp.status == "in_progress":
            return out
        if resp.status == "cancelled":
            out["status_details"] = {"type": "cancelled", "reason": resp.status_reason}
        else:
            out["status_details"] = {"type": resp.status}
        out["output"] = [resp.item.to_json()]
        audio_tokens = resp.item.produced_ms // 50  # roughly 20 audio tokens per second
        text_tokens = max(1, len(resp.transcript_sent or resp.item.arguments or "") // 4)
        input_audio = sum(it.audio_ms for it in self._items if it.role == "user") // 100
        input_text = len(self._session["instructions"]) // 4 + sum(len(it.text()) for it in self._items) // 4
        out["usage"] = {
            "total_tokens": audio_tokens + text_tokens + input_audio + input_text,
            "input_tokens": input_audio + input_text,
            "output_tokens": audio_tokens + text_tokens,
            "input_token_details": {"text_tokens": input_text, "audio_tokens": input_audio, "image_tokens": 0,
                                    "cached_tokens": 0,
                                    "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0,
                                                              "image_tokens": 0}},
            "output_token_details": {"text_tokens": text_tokens, "audio_tokens": audio_tokens},
        }
        return out
