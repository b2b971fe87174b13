"""Logging set-up: text or JSON lines, a level per module. Call lines carry call id and tenant.

A call's transport task binds the call id and tenant slug in a context variable (``bind_call``);
asyncio copies the context into every task started from there, so any record logged while the
call runs — whatever module logs it — gets ``call_id`` and ``tenant`` from ``CallContextFilter``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Mapping

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

_call: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "callbridge_call", default=None
)


def bind_call(call_id: str, tenant: str) -> contextvars.Token[tuple[str, str] | None]:
    """Name the call (and its tenant slug) on every record logged from the current task on, and
    in the tasks it starts. Only in a task of that one call; ``unbind_call`` when it is over."""
    return _call.set((call_id, tenant))


def unbind_call(token: contextvars.Token[tuple[str, str] | None]) -> None:
    _call.reset(token)


def current_call() -> tuple[str, str] | None:
    return _call.get()


class CallContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        bound = _call.get()
        if bound is not None:
            if not hasattr(record, "call_id"):
                record.call_id = bound[0]
            if not hasattr(record, "tenant"):
                record.tenant = bound[1]
        return True


def _call_tag(record: logging.LogRecord) -> str | None:
    call_id = getattr(record, "call_id", None)
    if not isinstance(call_id, str):
        return None
    return f"[{call_id[:8]} {getattr(record, 'tenant', '')}]"


def _without_call_tag(record: logging.LogRecord) -> str:
    """The message without the per-call adapter's tag: JSON lines carry the fields instead."""
    message = record.getMessage()
    tag = _call_tag(record)
    if tag is not None and message.startswith(tag):
        return message[len(tag):].lstrip()
    return message


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": _without_call_tag(record),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """Plain lines; a record logged inside a call names it as ``[<call id prefix> <tenant>]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        tag = _call_tag(record)
        # The per-call adapter already puts the tag in front of its own messages.
        if tag is not None and not record.message.startswith(tag):
            record.message = f"{tag} {record.message}"
        return super().formatMessage(record)


def configure(level: str = "INFO", json_lines: bool = False, levels: Mapping[str, str] | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CallContextFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name, module_level in (levels or {}).items():
        logging.getLogger(name).setLevel(module_level.upper())
    # The SDK and websockets log frame sizes at DEBUG; never audio, but keep them quiet by default.
    for noisy in ("websockets", "openai", "httpx", "httpcore", "aiohttp.access"):
        if noisy not in (levels or {}):
            logging.getLogger(noisy).setLevel(max(logging.getLogger().level, logging.WARNING))
