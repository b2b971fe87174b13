"""Per-call recording: a stereo WAV (left: the caller as received, right: the agent as played to
the caller), the transcript as JSON lines and the call's metadata record, written as the call goes.

Theory of operation
-------------------
``CallRecorder`` is the call's tap. Its methods run on the event loop and only stamp and queue:
each audio chunk gets its place on the call's timeline from the monotonic clock (caller audio
just received started ``len / rate`` ago; an agent frame just sent starts now) and goes into a
bounded per-call queue (oldest dropped and counted when the writer falls behind). One
``RecordingWriter`` thread per process serves every recorder every ``flush_interval``: it drains
the queues, places the chunks on a ``StereoTimeline`` (silence where nobody spoke, arrival jitter
absorbed, drift capped) and appends aligned frames to the WAV through ``WavWriter``, which keeps
the header valid every ``header_interval`` of audio. Nothing on the loop touches a file.

Crash safety: before any audio is written, a marker ``.unfinished/<call id>`` holding the record
is created in the recordings root, then ``<stem>.json`` with status ``in_progress``. The marker
goes only after the finished call is in the index. On start the archive repairs the files of
every marker it finds and marks those calls ``interrupted`` (see ``CallArchive``).

Files of one call, relative to the root (``stem`` = ``<tenant>/<yyyy>/<mm>/<dd>/<call id>``)::

    <stem>.wav          stereo int16 PCM at the caller leg's rate
    <stem>.jsonl        {"role", "text", "at", "offset"} per finished utterance
    <stem>.json         the CallRecord
    <stem>.peaks.json   min/max envelope of both channels, for drawing
    <stem>.evaluation.json  the post-call evaluation, when the tenant has one (written by the archive)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from bridge.records.callstore import CallRecord, CallStatus, TranscriptEntry
from bridge.records.layout import (
    SUFFIXES,
    ArchiveLayout,
    write_json_atomic,
    write_peaks,
)
from media.wav import StereoTimeline, WavError, WavFormat, WavWriter

if TYPE_CHECKING:
    from bridge.core.call import CallInfo
    from bridge.ops.metrics import Metrics

log = logging.getLogger(__name__)

Clock = Callable[[], float]

GROUP_SECONDS = 0.005
SETTLE_SECONDS = 0.05
_INT16 = np.dtype(np.int16)

CALLER, AGENT = 0, 1
# Chunks stated to start up to this much after where their track already is are appended back
# to back: transport and event-loop jitter must not cut holes into speech.
GAP_TOLERANCE_SECONDS = 0.1
# A track may run this far ahead of its chunks' stated positions before the oldest audio of a
# chunk is dropped (a sender faster than real time, clock drift between PBX and host).
MAX_LEAD_SECONDS = 0.5
# A track that receives nothing (a transport that stops sending in silence) is padded up to this
# far behind the present so that the other track keeps reaching the disk.
QUIET_PAD_SECONDS = 0.5
# Chunks handed over within this of each other belong to one delivery (a burst read after a
# stall). The newest delivery is left for the next pass until it is SETTLE_SECONDS old, so that a
# burst is never split between passes: its audio can then still take back the gap before it.



def _kept(samples: np.ndarray) -> np.ndarray:
    """What the writer keeps of a frame handed over: the array itself when it is int16, since a
    tap's audio is never written to afterwards (``bridge.core.call.CallTap``); else an int16 copy."""
    return samples if samples.dtype is _INT16 else np.array(samples, dtype=np.int16)


@dataclass(slots=True)
class _Chunk:
    channel: int
    start: int  # timeline position in samples at the recording rate
    samples: np.ndarray
    at: int  # when it was handed over, same units


class CallRecorder:
    """The tap of one call (``bridge.core.call.CallTap``); see the module docstring."""

    def __init__(
        self,
        info: CallInfo,
        record: CallRecord,
        layout: ArchiveLayout,
        *,
        record_audio: bool,
        clock: Clock,
        max_backlog_seconds: float = 10.0,
        header_interval: float = 0.5,
        metrics: Metrics | None = None,
        on_end: Callable[[CallRecorder], None] | None = None,
    ) -> None:
        self.info = info
        self.record = record
        self.layout = layout
        self.record_audio = record_audio
        self.metrics = metrics
        self._clock = clock
        self._t0 = clock()
        self._on_end = on_end
        # 20 ms chunks from both directions: 100 per second of call.
        self._max_chunks = max(2, int(max_backlog_seconds * 100))
        self._chunks: deque[_Chunk] = deque()
        self._pending_transcript: deque[TranscriptEntry] = deque()
        self.entries: list[TranscriptEntry] = []
        self._cut_pending = False
        self.rate_hz: int | None = None
        self.ended = False
        self.final: CallRecord | None = None  # the record as the call ended (loop side)
        self.dropped_chunks = 0
        self._rate_mismatch_logged = False
        # Writer-thread state.
        self.header_interval = header_interval
        self._timeline: StereoTimeline | None = None
        self._latest_at = 0  # newest hand-over position placed on the timeline
        self._wav_file: IO[bytes] | None = None
        self._wav: WavWriter | None = None
        self._jsonl: IO[bytes] | None = None
        self.failed: str | None = None
        self.finished = threading.Event()
        self._marker_fd: int | None = None

    # ------------------------------------------------------------------ CallTap (event loop)
    def caller_audio(self, samples: np.ndarray, rate_hz: int) -> None:
        if self.ended or not self.record_audio or not self._accept_rate(rate_hz):
            return
        at = round((self._clock() - self._t0) * rate_hz)
        self._push(_Chunk(CALLER, at - len(samples), _kept(samples), at))

    def agent_audio(self, samples: np.ndarray, rate_hz: int) -> None:
        if self.ended or not self.record_audio or not self._accept_rate(rate_hz):
            return
        at = round((self._clock() - self._t0) * rate_hz)
        self._push(_Chunk(AGENT, at, _kept(samples), at))

    def transcript(self, role: str, text: str, at: float) -> None:
        if self.ended or not self.record_audio:
            return
        text = text.strip()
        if not text:
            return
        interrupted = role == "agent" and self._cut_pending
        if role == "agent":
            self._cut_pending = False
        entry = TranscriptEntry(role, text, at, round(max(0.0, at - self.record.started_at), 3), interrupted)
        self.entries.append(entry)
        self._pending_transcript.append(entry)

    def event(self, name: str, **fields: Any) -> None:
        if name == "barge_in":
            # The agent's turn in progress was cut off: its transcript line, next, says so.
            self._cut_pending = True
            return
        if name != "ended" or self.ended:
            return
        outcome = fields.get("outcome")
        self.end(str(outcome) if outcome is not None else None)

    def end(self, outcome: str | None) -> None:
        """The call is over: freeze the record; the writer thread finishes the files."""
        if self.ended:
            return
        info = self.info
        ended_at = info.ended_at if info.ended_at is not None else time.time()
        self.final = self.record.evolve(
            answered_at=info.answered_at,
            ended_at=ended_at,
            outcome=outcome if outcome is not None else (info.outcome.value if info.outcome else None),
            barge_ins=info.barge_ins,
            transfer_target=info.transfer_target,
            transcript_entries=len(self.entries),
            status=CallStatus.COMPLETE,
        )
        self.ended = True
        if self._on_end is not None:
            self._on_end(self)

    def _accept_rate(self, rate_hz: int) -> bool:
        if self.rate_hz is None:
            self.rate_hz = rate_hz
            return True
        if rate_hz == self.rate_hz:
            return True
        if not self._rate_mismatch_logged:
            self._rate_mismatch_logged = True
            log.warning("call %s: audio at %d Hz on a %d Hz recording is not recorded",
                        self.record.call_id, rate_hz, self.rate_hz)
        return False

    def _push(self, chunk: _Chunk) -> None:
        chunks = self._chunks
        if len(chunks) >= self._max_chunks:
            with contextlib.suppress(IndexError):  # the writer may have just emptied it
                chunks.popleft()
                self.dropped_chunks += 1
                if self.metrics is not None:
                    self.metrics.frames_dropped.labels("recording", "writer_backlog").inc()
        chunks.append(chunk)

    # ------------------------------------------------------------------ writer thread
    def paths(self) -> dict[str, Path]:
        return {s: self.layout.path(self.record.path, s) for s in SUFFIXES}

    def begin(self) -> None:
        """Marker and in-progress metadata, before any audio (writer thread)."""
        marker = self.layout.unfinished_marker(self.record.call_id)
        write_json_atomic(marker, self.record.to_json(), durable=False)
        # Held until the call is finished: another daemon sharing this directory (a rolling
        # restart) sees the call is alive and leaves it alone; the kernel drops the lock when
        # this process dies, however it dies.
        fd = os.open(marker, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._marker_fd = fd
        write_json_atomic(self.layout.path(self.record.path, ".json"), self.record.to_json(), durable=False)

    def service(self, now: float, final: bool = False) -> int:
        """Move queued audio and transcript to disk; returns bytes written (writer thread)."""
        if self.failed is not None:
            self._chunks.clear()
            self._pending_transcript.clear()
            return 0
        try:
            return self._service(now, final)
        except (OSError, WavError) as exc:
            self._fail(exc)
            return 0

    def _drain(self, now: float, final: bool) -> list[_Chunk]:
        """Queued chunks, less the newest delivery while it may still be growing."""
        chunks = self._chunks
        batch: list[_Chunk] = []
        while True:
            try:
                batch.append(chunks.popleft())
            except IndexError:
                break
        if final or not batch or not self.rate_hz:
            return batch
        rate = self.rate_hz
        if batch[-1].at > (now - self._t0 - SETTLE_SECONDS) * rate:
            group = int(GROUP_SECONDS * rate)
            cut = len(batch) - 1
            while cut > 0 and batch[cut].at - batch[cut - 1].at <= group:
                cut -= 1
            # Back to the front of the queue, oldest first: the loop only appends at the end.
            chunks.extendleft(reversed(batch[cut:]))
            del batch[cut:]
        return batch

    def _service(self, now: float, final: bool) -> int:
        written = 0
        batch = self._drain(now, final)
        if batch and self._wav is None:
            self._open_wav()
        timeline = self._timeline
        if batch:
            assert timeline is not None
            timeline.place_many((chunk.channel, chunk.samples, chunk.start) for chunk in batch)
            self._latest_at = max(self._latest_at, max(chunk.at for chunk in batch))
        if timeline is not None and self._wav is not None and self.rate_hz:
            if not final:
                # Quiet is judged against the newest audio handed over, not the wall clock: while
                # the event loop stalls nothing is "quiet", and what arrives late still fits.
                quiet = int(QUIET_PAD_SECONDS * self.rate_hz)
                timeline.advance_to(self._latest_at - quiet + timeline.gap_tolerance)
            rows = timeline.take(final=final)
            if len(rows):
                written += self._wav.write(rows)
        if self._pending_transcript:
            if self._jsonl is None:
                self._jsonl = open(self.layout.path(self.record.path, ".jsonl"), "ab", buffering=0)
            lines = []
            while self._pending_transcript:
                e = self._pending_transcript.popleft()
                line: dict[str, Any] = {"role": e.role, "text": e.text, "at": e.at, "offset": e.offset}
                if e.interrupted:
                    line["interrupted"] = True
                lines.append(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
            # One write per batch of whole lines: a kill leaves at most a torn last line.
            self._jsonl.write("".join(lines).encode("utf-8"))
        return written

    def _open_wav(self) -> None:
        rate = self.rate_hz
        assert rate is not None
        path = self.layout.path(self.record.path, ".wav")
        path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: every batch reaches the kernel at once, so a killed process loses nothing
        # it has already handed over.
        self._wav_file = open(path, "wb", buffering=0)
        self._wav = WavWriter(self._wav_file, WavFormat(rate, 2),
                              header_interval_frames=max(1, int(rate * self.header_interval)))
        self._timeline = StereoTimeline(gap_tolerance=int(rate * GAP_TOLERANCE_SECONDS),
                                        max_lead=int(rate * MAX_LEAD_SECONDS))
        self.record = self.record.evolve(recorded=True, sample_rate=rate)
        write_json_atomic(self.layout.path(self.record.path, ".json"), self.record.to_json(), durable=False)

    def _fail(self, exc: BaseException) -> None:
        self.failed = str(exc)
        log.error("call %s: recording failed: %s", self.record.call_id, exc)
        if self.metrics is not None:
            self.metrics.recordings.labels("failed").inc()
        self._close_files(sync=False)

    def _close_files(self, *, sync: bool) -> None:
        for name in ("_wav_file", "_jsonl"):
            f = getattr(self, name)
            if f is None:
                continue
            setattr(self, name, None)
            try:
                if sync:
                    os.fsync(f.fileno())
            except OSError as exc:
                log.warning("call %s: fsync failed: %s", self.record.call_id, exc)
            finally:
                f.close()

    def finish(self, now: float) -> CallRecord:
        """Last audio, final header, peaks, final metadata (writer thread). Returns the record."""
        self.service(now, final=True)
        final = self.final or self.record.evolve(status=CallStatus.COMPLETE, ended_at=time.time())
        wav = self._wav
        timeline = self._timeline
        if timeline is not None and self.rate_hz:
            rate = self.rate_hz
            log.debug("call %s: recording timeline: silence inserted %.2f/%.2f s, taken back by late "
                      "audio %.2f/%.2f s, dropped %.2f/%.2f s (caller/agent)", self.record.call_id,
                      timeline.padded[0] / rate, timeline.padded[1] / rate, timeline.reclaimed[0] / rate,
                      timeline.reclaimed[1] / rate, timeline.dropped[0] / rate, timeline.dropped[1] / rate)
        if wav is not None and self.failed is None:
            try:
                wav.close()
                self._close_files(sync=True)
                paths = self.paths()
                write_peaks(paths[".wav"], paths[".peaks.json"])
                final = final.evolve(recorded=True, sample_rate=wav.format.rate_hz,
                                     recording_bytes=paths[".wav"].stat().st_size,
                                     recording_seconds=round(wav.duration_seconds, 3))
                if self.metrics is not None:
                    self.metrics.recordings.labels("written").inc()
            except (OSError, WavError) as exc:
                self._fail(exc)
        self._close_files(sync=self.failed is None)
        if self.failed is not None:
            final = final.evolve(recorded=False, extra={**final.extra, "recording_error": self.failed})
        try:
            write_json_atomic(self.layout.path(final.path, ".json"), final.to_json())
        except OSError as exc:
            # The archive writes it again until it lands (a full disk frees up).
            log.error("call %s: cannot write metadata: %s", final.call_id, exc)
            if self.metrics is not None:
                self.metrics.archive_write_errors.labels("metadata").inc()
        self.final = final
        self.release_marker()
        self.finished.set()
        return final

    def release_marker(self) -> None:
        fd, self._marker_fd = self._marker_fd, None
        if fd is not None:
            os.close(fd)
