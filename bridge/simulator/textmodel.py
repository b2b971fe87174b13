"""The simulator's text model: the Chat Completions and Responses endpoints the ``openai`` SDK
calls for structured output, answering with a deterministic, schema-valid JSON document.

Routes (same keys as the realtime endpoint)::

    POST /v1/chat/completions                              (OpenAI; Azure OpenAI v1 surface below)
    POST /openai/v1/chat/completions
    POST /openai/deployments/{deployment}/chat/completions?api-version=...   (AzureOpenAI client)
    POST /v1/responses, /openai/v1/responses

The request must ask for JSON-schema output (``response_format: {"type": "json_schema", ...}``
in Chat Completions, ``text.format: {"type": "json_schema", ...}`` in Responses). The answer fills
the schema from the conversation text: integers named ``overall_score`` / ``score`` grow with the
number of agent and caller lines, drop with lines marked "cut off by the caller", and each
criterion gets its own deterministic offset; ``agent_ended_call`` is true when a line starting
"Call outcome:" says the agent ended the call; strings and string lists say what was counted. Same input, same output.

Failure modes, chosen by the model (deployment) name, for tests:

* contains ``refusal``: the model refuses (``message.refusal`` / a ``refusal`` content part);
* contains ``malformed``: the content is not the schema's JSON (cut short);
* contains ``error``: HTTP 500 with an error body, as the service fails;
* contains ``slow-<seconds>``: the answer comes after that many seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

from bridge.simulator.conversation import random_tag

Json = dict[str, Any]

CHAT_PATHS = ("/v1/chat/completions", "/openai/v1/chat/completions",
              "/openai/deployments/{deployment}/chat/completions")
RESPONSES_PATHS = ("/v1/responses", "/openai/v1/responses")
REFUSAL_TEXT = "I'm sorry, but I can't help with evaluating this conversation."
_KEPT_REQUESTS = 1000
_SLOW = re.compile(r"slow-(\d+(?:\.\d+)?)")
_ENDED = re.compile(r"call outcome:[^\n]*the agent ended the call", re.IGNORECASE)
_LINE = re.compile(r"^\[[\d:.]+\]\s+(agent|caller)\b(.*)$", re.MULTILINE)


class TextModel:
    """Request handlers; ``requests`` and ``paths`` keep what each request sent, for tests."""

    def __init__(self, auth_error: Callable[[web.Request], str | None]) -> None:
        self._auth_error = auth_error
        # The latest requests only: a simulator serving a daemon for days must not grow without end.
        self.requests: deque[Json] = deque(maxlen=_KEPT_REQUESTS)
        self.paths: deque[str] = deque(maxlen=_KEPT_REQUESTS)  # each request's path (Azure routes too)
        self.active = 0  # requests being answered now, and the most at once
        self.peak_active = 0

    def install(self, app: web.Application) -> None:
        for path in CHAT_PATHS:
            app.router.add_post(path, self._chat)
        for path in RESPONSES_PATHS:
            app.router.add_post(path, self._responses)

    async def _body(self, request: web.Request) -> Json:
        problem = self._auth_error(request)
        if problem is not None:
            raise _error(401, problem, "invalid_api_key")
        try:
            body = json.loads(await request.read())
        except ValueError:
            raise _error(400, "We could not parse the JSON body of your request.", "invalid_json") from None
        if not isinstance(body, dict):
            raise _error(400, "The request body must be a JSON object.", None)
        if "deployment" in request.match_info:
            body["model"] = request.match_info["deployment"]  # Azure: the deployment names the model
        self.requests.append(body)
        self.paths.append(request.path)
        model = str(body.get("model") or "")
        if not model:
            raise _error(400, "Missing required parameter: 'model'.", "missing_required_parameter")
        slow = _SLOW.search(model)
        if slow:
            self.active += 1
            self.peak_active = max(self.peak_active, self.active)
            try:
                await asyncio.sleep(float(slow.group(1)))
            finally:
                self.active -= 1
        if "error" in model:
            raise _error(500, "The server had an error while processing your request.", "server_error")
        return body

    async def _chat(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _error(400, "Missing required parameter: 'messages'.", "missing_required_parameter")
        fmt = body.get("response_format") or {}
        schema = (fmt.get("json_schema") or {}).get("schema") if isinstance(fmt, dict) else None
        if fmt.get("type") != "json_schema" or not isinstance(schema, dict):
            raise _error(400, "This simulator answers only response_format json_schema requests.", None)
        text = "\n".join(_content_text(m.get("content")) for m in messages if isinstance(m, dict))
        model = str(body["model"])
        message: Json = {"role": "assistant", "content": None, "refusal": None}
        if "refusal" in model:
            message["refusal"] = REFUSAL_TEXT
        else:
            message["content"] = _render(fill(schema, text), model)
        return web.json_response({
            "id": f"chatcmpl-{random_tag(24)}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "system_fingerprint": "fp_simulator",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
            "usage": _usage(text, message["content"] or REFUSAL_TEXT),
        })

    async def _responses(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        fmt = (body.get("text") or {}).get("format") or {}
        schema = fmt.get("schema") if isinstance(fmt, dict) else None
        if fmt.get("type") != "json_schema" or not isinstance(schema, dict):
            raise _error(400, "This simulator answers only text.format json_schema requests.", None)
        raw = body.get("input")
        parts = [str(body.get("instructions") or "")]
        if isinstance(raw, str):
            parts.append(raw)
        elif isinstance(raw, list):
            parts += [_content_text(m.get("content")) for m in raw if isinstance(m, dict)]
        text = "\n".join(parts)
        model = str(body["model"])
        if "refusal" in model:
            content: Json = {"type": "refusal", "refusal": REFUSAL_TEXT}
            out_text = REFUSAL_TEXT
        else:
            out_text = _render(fill(schema, text), model)
            content = {"type": "output_text", "text": out_text, "annotations": [], "logprobs": []}
        usage = _usage(text, out_text)
        return web.json_response({
            "id": f"resp_{random_tag(24)}", "object": "response", "created_at": int(time.time()),
            "status": "completed", "model": model, "error": None, "incomplete_details": None,
            "instructions": body.get("instructions"), "metadata": {}, "parallel_tool_calls": True,
            "temperature": 1.0, "top_p": 1.0, "tool_choice": "auto", "tools": [], "text": {"format": fmt},
            "output": [{"type": "message", "id": f"msg_{random_tag(24)}", "status": "completed",
                        "role": "assistant", "content": [content]}],
            "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"],
                      "total_tokens": usage["total_tokens"],
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}},
        })


def _error(status: int, message: str, code: str | None) -> web.HTTPException:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})
    cls: type[web.HTTPException] = {400: web.HTTPBadRequest, 401: web.HTTPUnauthorized,
                                    500: web.HTTPInternalServerError}[status]
    return cls(text=body, content_type="application/json")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return ""


def _usage(prompt: str, completion: str) -> Json:
    p, c = max(1, len(prompt) // 4), max(1, len(completion) // 4)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _render(value: Any, model: str) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if "malformed" in model:
        return text[: max(1, len(text) // 2)]  # cut short, as a response that hit its token limit
    return text


# ------------------------------------------------------------------------ the deterministic answer


class _Reading:
    """What the simulator 'understood' of the conversation text."""

    def __init__(self, text: str) -> None:
        lines = _LINE.findall(text)
        self.agent = sum(1 for who, _ in lines if who == "agent")
        self.caller = sum(1 for who, _ in lines if who == "caller")
        self.cut = sum(1 for who, rest in lines if who == "agent" and "cut off" in rest)
        self.ended = _ENDED.search(text) is not None
        base = 50 + 10 * min(self.agent, 3) + 5 * min(self.caller, 2) - 10 * self.cut + (5 if self.ended else 0)
        self.score = max(0, min(100, base))

    def offset(self, name: str) -> int:
        return int(hashlib.sha256(name.encode()).hexdigest()[:4], 16) % 11 - 5


def fill(schema: Json, text: str) -> Any:
    """A value of ``schema`` (the subset structured output allows) derived from ``text``."""
    return _fill(schema, _Reading(text), name="", owner="", defs=schema.get("$defs") or {})


def _fill(schema: Json, reading: _Reading, name: str, owner: str, defs: Json) -> Any:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return _fill(defs[ref.split("/")[-1]], reading, name, owner, defs)
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"] or schema["anyOf"]
        return _fill(options[0], reading, name, owner, defs)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        return {key: _fill(sub, reading, key, name, defs) for key, sub in props.items()}
    if kind == "array":
        items = schema.get("items") or {"type": "string"}
        count = max(int(schema.get("minItems", 0)), 2)
        return [_fill(items, reading, name, owner, defs) if items.get("type") != "string"
                else _phrase(name, reading, i) for i in range(count)]
    if kind in ("integer", "number"):
        value = reading.score if name == "overall_score" else reading.score + reading.offset(owner or name)
        low = schema.get("minimum", 0)
        high = schema.get("maximum", 100)
        return max(low, min(high, value))
    if kind == "boolean":
        return reading.ended if "ended" in name else False
    if kind == "string":
        return _phrase(name, reading, 0, owner)
    return None


def _phrase(name: str, r: _Reading, index: int, owner: str = "") -> str:
    if name == "strengths":
        return ["The agent answered every caller turn." if r.agent >= r.caller
                else "The agent spoke when addressed.",
                "The agent closed the call itself." if r.ended else "The agent kept its turns short."][index % 2]
    if name == "weaknesses":
        return [f"The caller cut the agent off {r.cut} time(s)." if r.cut else "Few caller questions were explored.",
                "The call was short."][index % 2]
    if name == "rationale":
        return f"{owner}: {r.agent} agent line(s), {r.caller} caller line(s), {r.cut} cut off."
    if name == "summary":
        ended = "the agent ended the call" if r.ended else "the call ended without the agent closing it"
        return f"A call of {r.agent} agent and {r.caller} caller line(s); {ended}."
    return f"{name or 'value'} {index + 1}"
