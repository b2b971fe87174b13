"""Logging set-up: text or JSON lines, a level per module. Call lines carry call id and tenant.

Secrets never reach the output, whichever module logs and at whatever level: every line (message,
arguments, exception text, JSON fields) goes through :class:`Redactor` in the one root handler,
which libraries' records reach too (websockets logs each upgrade header at DEBUG, the model's
``Authorization`` and ``api-key`` among them). It masks the values of credential headers and
query parameters, bearer tokens, key-shaped strings, passwords in URLs, and every secret value
the daemon was configured with (``register_secrets``).

A call's transport task binds the call id and tenant slug in a context variable (``bind_call``);
asyncio copies the context into every task started from there, so any record logged while the
call runs — whatever module logs it — gets ``call_id`` and ``tenant`` from ``CallContextFilter``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

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


MASK = "[redacted]"

# Header and field names whose values are credentials, as "Name: value", "'name': 'value'",
# "name=value" or ("name", "value").
_SECRET_FIELDS = re.compile(
    r"(?i)\b(authorization|proxy-authorization|api[-_]key|x-api-key|ocp-apim-subscription-key|"
    r"x-twilio-signature|x-callbridge-signature|sec-websocket-protocol|cookie|set-cookie|"
    r"password|passwd|secret|media_token|auth_token|access_token|service_role_key)"
    r"(['\"]?\s*[:=,]\s*(?-i:b)?['\"]?)([^\r\n'\",}\]]+)"
)
# Credential query parameters in URLs and request lines.
_SECRET_PARAMS = re.compile(r"(?i)([?&;](?:token|sig|signature|api-key|api_key|key|access_token|code)=)[^&\s'\"#]+")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")
_SUBPROTOCOL_TOKEN = re.compile(r"(callbridge\.bearer\.)[^\s,'\"]+")
_KEY_SHAPED = re.compile(r"\b(sk-(?:proj-|svcacct-)?)[A-Za-z0-9_-]{16,}")
_URL_PASSWORD = re.compile(r"(://[^/\s:@'\"]*:)[^@/\s'\"]+(@)")


class Redactor:
    """Masks credentials in a log line (see the module docstring for what counts as one)."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def register(self, values: Iterable[str | None]) -> None:
        """Values to mask wherever they appear (secrets from the settings); short ones are not
        taken, as they would mask ordinary words."""
        self._values.update(v for v in values if v and len(v) >= 6)
        if self._values:
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(v) for v in ordered))

    def redact(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        text = _SECRET_FIELDS.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
        text = _SECRET_PARAMS.sub(lambda m: m.group(1) + MASK, text)
        text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
        text = _SUBPROTOCOL_TOKEN.sub(lambda m: m.group(1) + MASK, text)
        text = _KEY_SHAPED.sub(lambda m: m.group(1) + MASK, text)
        return _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + m.group(2), text)


REDACTOR = Redactor()


def register_secrets(values: Iterable[str | None]) -> None:
    REDACTOR.register(values)


class RedactingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler whose every formatted line has been through the redactor."""

    def __init__(self, stream: Any = None, redactor: Redactor = REDACTOR) -> None:
        super().__init__(stream)
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor.redact(super().format(record))


def configure(level: str = "INFO", json_lines: bool = False, levels: Mapping[str, str] | None = None,
              secrets: Iterable[str | None] = ()) -> None:
    register_secrets(secrets)
    handler = RedactingHandler(sys.stderr)
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
    # The Voice Live SDK logs whole received frames (audio included) at DEBUG, and azure-core
    # request details at INFO: "azure" stays at WARNING unless named in ``levels``.
    for noisy in ("websockets", "openai", "httpx", "httpcore", "aiohttp.access", "azure"):
        if noisy not in (levels or {}):
            logging.getLogger(noisy).setLevel(max(logging.getLogger().level, logging.WARNING))
