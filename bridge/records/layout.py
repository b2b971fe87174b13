"""Where a call's files live in the recordings directory, and how they are written safely."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bridge.records.callstore import valid_call_id
from media.wav import envelope, read_frames

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

Clock = Callable[[], float]

PEAK_POINTS = 1000
UNFINISHED_DIR = ".unfinished"
UPLOADS_DIR = ".uploads"
_INT16 = np.dtype(np.int16)
SUFFIXES = (".wav", ".jsonl", ".peaks.json", ".json", ".evaluation.json")



class RecordingError(Exception):
    """A recording could not be written (disk full, permissions)."""


class ArchiveLayout:
    """Where a call's files live under the recordings root; no path escapes the root."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    @staticmethod
    def stem_for(tenant: str, call_id: str, started_at: float) -> str:
        if not valid_call_id(call_id):
            raise RecordingError(f"unusable call id {call_id!r}")
        day = time.gmtime(started_at)
        return f"{tenant}/{day.tm_year:04d}/{day.tm_mon:02d}/{day.tm_mday:02d}/{call_id}"

    def path(self, stem: str, suffix: str) -> Path:
        if suffix not in SUFFIXES:
            raise RecordingError(f"unknown recording file kind {suffix!r}")
        candidate = (self.root / (stem + suffix)).resolve()
        if not candidate.is_relative_to(self.root) or candidate.parent == self.root:
            raise RecordingError("path outside the recordings root")
        return candidate

    def unfinished_marker(self, call_id: str) -> Path:
        if not valid_call_id(call_id):
            raise RecordingError(f"unusable call id {call_id!r}")
        return self.root / UNFINISHED_DIR / call_id

    def upload_marker(self, call_id: str) -> Path:
        if not valid_call_id(call_id):
            raise RecordingError(f"unusable call id {call_id!r}")
        return self.root / UPLOADS_DIR / call_id


def write_json_atomic(path: Path, data: Any, *, durable: bool = True) -> None:
    """Write and rename: readers see the old file or the new one, never a torn one. ``durable``
    also fsyncs, for power loss; a killed process loses nothing the kernel already has, so the
    in-progress records written at call start skip that wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, separators=(",", ":"))
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def write_peaks(wav_path: Path, peaks_path: Path, points: int = PEAK_POINTS) -> None:
    frames, fmt = read_frames(wav_path)
    env = envelope(frames, points)
    write_json_atomic(peaks_path, {
        "rate": fmt.rate_hz,
        "frames": len(frames),
        "channels": ["caller", "agent"][: fmt.channels],
        "peaks": env.tolist(),
    })
    del frames


