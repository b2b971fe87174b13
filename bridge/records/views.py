"""How a call record is shown (ops API, webhook payloads) and how its transcript file is read back."""


from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.records.callstore import (
    CallRecord,
)

if TYPE_CHECKING:
    pass


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_view(record: CallRecord) -> dict[str, Any]:
    """What the API and the webhook show of a record (no storage paths)."""
    return {
        "call_id": record.call_id,
        "tenant": record.tenant,
        "transport": record.transport,
        "dialled": record.dialled,
        "caller_id": record.caller_id,
        "started_at": iso(record.started_at),
        "answered_at": iso(record.answered_at),
        "ended_at": iso(record.ended_at),
        "duration": None if record.duration is None else round(record.duration, 3),
        "outcome": record.outcome,
        "status": record.status.value,
        "barge_ins": record.barge_ins,
        "model": record.model,
        "voice": record.voice,
        "transfer_target": record.transfer_target,
        "transcript_entries": record.transcript_entries,
        "evaluation": None if record.evaluation_status is None else {
            "status": record.evaluation_status,
            "overall_score": record.overall_score,
            "error": record.evaluation_error,
        },
        "recording": {
            "available": record.recorded,
            "seconds": record.recording_seconds,
            "bytes": record.recording_bytes,
            "sample_rate": record.sample_rate,
            "channels": ["caller", "agent"],
            "storage": "s3" if record.object_key else "local",
        },
    }


def read_transcript_file(path: Path) -> list[dict[str, Any]]:
    """Entries of a transcript file; a torn last line (a killed writer) is skipped."""
    entries: list[dict[str, Any]] = []
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                entries.append(item)
    return entries


def cut_torn_line(path: Path) -> None:
    """Truncate a transcript after its last complete line."""
    with open(path, "r+b") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            f.truncate(end)
