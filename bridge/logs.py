"""Logging set-up: text or JSON lines, a level per module. Call lines carry call id and tenant."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(level: str = "INFO", json_lines: bool = False, levels: Mapping[str, str] | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name, module_level in (levels or {}).items():
        logging.getLogger(name).setLevel(module_level.upper())
    # The SDK and websockets log frame sizes at DEBUG; never audio, but keep them quiet by default.
    for noisy in ("websockets", "openai", "httpx", "httpcore", "aiohttp.access"):
        if noisy not in (levels or {}):
            logging.getLogger(noisy).setLevel(max(logging.getLogger().level, logging.WARNING))
