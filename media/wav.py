"""Crash-safe streaming WAV (RIFF/WAVE, PCM) writing, repair, the two-track call timeline and a
min/max envelope for drawing waveforms.

A WAV file states its own length twice in the header (RIFF chunk size at byte 4, data chunk size
at byte 40 for the canonical 44-byte header). A writer that fills those in only when it closes
leaves a file that most players report as empty when the process dies first. ``WavWriter``
therefore rewrites both sizes every ``header_interval_frames`` of audio, always *after* the audio
they describe has been handed to the file, so the header never claims bytes that are not there.
A process killed without warning (SIGKILL) leaves a valid file that plays to within one header
interval of the kill; ``repair`` then recomputes the sizes from the file's length.

Layout written (Microsoft RIFF/WAVE, WAVE_FORMAT_PCM = 1, little-endian)::

    0  "RIFF" | 4 riff size = file length - 8 | 8 "WAVE"
    12 "fmt " | 16 chunk size 16 | 20 format 1 | 22 channels | 24 rate | 28 byte rate
              | 32 block align | 34 bits per sample 16
    36 "data" | 40 data size | 44 samples, interleaved, int16 little-endian

Nothing here reads a clock or knows about asyncio: callers hand in file objects and positions.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.int16]

WAVE_FORMAT_PCM = 1
SAMPLE_BYTES = 2  # int16
HEADER_BYTES = 44
_RIFF_SIZE_OFFSET = 4
_DATA_SIZE_OFFSET = 40
# RIFF sizes are unsigned 32-bit: a file's data must stay below 4 GiB minus the header.
MAX_DATA_BYTES = 0xFFFFFFFF - (HEADER_BYTES - 8)
_HEADER_SCAN_BYTES = 64 * 1024


class WavError(ValueError):
    """A file that is not a PCM WAV this module can write or repair."""


class WavFull(WavError):
    """The data chunk reached the 4 GiB RIFF limit; nothing more can be appended."""


@dataclass(frozen=True, slots=True)
class WavFormat:
    rate_hz: int
    channels: int = 2

    @property
    def block_align(self) -> int:
        return self.channels * SAMPLE_BYTES

    @property
    def byte_rate(self) -> int:
        return self.rate_hz * self.block_align


def header(fmt: WavFormat, data_bytes: int) -> bytes:
    """The canonical 44-byte PCM header for ``data_bytes`` of samples."""
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        HEADER_BYTES - 8 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        WAVE_FORMAT_PCM,
        fmt.channels,
        fmt.rate_hz,
        fmt.byte_rate,
        fmt.block_align,
        SAMPLE_BYTES * 8,
        b"data",
        data_bytes,
    )


class WavWriter:
    """Appends interleaved int16 frames to ``file`` and keeps its header playable.

    ``file`` must be seekable and positioned at its start. For the crash-safety promise to hold
    the file must be unbuffered (``open(path, "wb", buffering=0)``) or flushed by the caller:
    bytes still in a user-space buffer die with the process.
    """

    def __init__(self, file: BinaryIO, fmt: WavFormat, *, header_interval_frames: int | None = None) -> None:
        if fmt.rate_hz <= 0 or fmt.channels <= 0:
            raise WavError("rate and channel count must be positive")
        self.file = file
        self.format = fmt
        # Default: half a second of audio between header updates.
        self.header_interval_frames = header_interval_frames or max(1, fmt.rate_hz // 2)
        self.frames_written = 0
        self._synced_frames = -1
        self._closed = False
        file.write(header(fmt, 0))
        self._synced_frames = 0

    @property
    def data_bytes(self) -> int:
        return self.frames_written * self.format.block_align

    @property
    def duration_seconds(self) -> float:
        return self.frames_written / self.format.rate_hz

    def write(self, frames: Samples) -> int:
        """Append frames: shape ``(n, channels)`` or interleaved 1-D. Returns bytes appended."""
        if self._closed:
            raise WavError("writer is closed")
        data = np.ascontiguousarray(frames, dtype="<i2")
        if data.ndim == 2 and data.shape[1] != self.format.channels:
            raise WavError(f"expected {self.format.channels} channels, got {data.shape[1]}")
        if data.size % self.format.channels:
            raise WavError("interleaved samples are not a whole number of frames")
        payload = data.tobytes()
        if not payload:
            return 0
        if self.data_bytes + len(payload) > MAX_DATA_BYTES:
            raise WavFull("WAV data chunk would exceed 4 GiB")
        self.file.write(payload)
        self.frames_written += data.size // self.format.channels
        if self.frames_written - self._synced_frames >= self.header_interval_frames:
            self.sync_header()
        return len(payload)

    def sync_header(self) -> None:
        """Rewrite the RIFF and data sizes for what has been appended so far."""
        size = self.data_bytes
        file = self.file
        file.flush()
        file.seek(_RIFF_SIZE_OFFSET)
        file.write(struct.pack("<I", HEADER_BYTES - 8 + size))
        file.seek(_DATA_SIZE_OFFSET)
        file.write(struct.pack("<I", size))
        file.seek(0, os.SEEK_END)
        file.flush()
        self._synced_frames = self.frames_written

    def close(self) -> None:
        """Final header; the caller closes (and, if it wants durability, fsyncs) the file."""
        if self._closed:
            return
        self.sync_header()
        self._closed = True


@dataclass(frozen=True, slots=True)
class WavInfo:
    format: WavFormat
    data_offset: int
    data_bytes: int

    @property
    def frames(self) -> int:
        return self.data_bytes // self.format.block_align

    @property
    def duration_seconds(self) -> float:
        return self.frames / self.format.rate_hz


@dataclass(frozen=True, slots=True)
class RepairResult:
    info: WavInfo
    changed: bool  # the header (or a trailing partial frame) had to be fixed


def _parse(head: bytes) -> tuple[WavFormat, int, int]:
    """(format, data offset, declared data size) from the first bytes of a RIFF/WAVE file."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise WavError("not a RIFF/WAVE file")
    pos = 12
    fmt: WavFormat | None = None
    while pos + 8 <= len(head):
        chunk_id, size = struct.unpack_from("<4sI", head, pos)
        body = pos + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(head):
                raise WavError("truncated fmt chunk")
            tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", head, body)
            if tag != WAVE_FORMAT_PCM or bits != 16 or channels == 0 or rate == 0:
                raise WavError(f"unsupported WAV format (tag {tag}, {bits} bits, {channels} channels)")
            if block_align != channels * SAMPLE_BYTES:
                raise WavError("inconsistent block alignment")
            fmt = WavFormat(rate, channels)
        elif chunk_id == b"data":
            if fmt is None:
                raise WavError("data chunk before fmt chunk")
            return fmt, body, size
        # RIFF chunks are padded to an even length.
        pos = body + size + (size & 1)
    raise WavError("no data chunk in the file's first bytes")


def read_info(file: BinaryIO) -> WavInfo:
    """Format and data extent as the header declares them (clamped to the file's length)."""
    file.seek(0)
    head = file.read(_HEADER_SCAN_BYTES)
    fmt, offset, declared = _parse(head)
    length = file.seek(0, os.SEEK_END)
    available = max(0, length - offset)
    usable = min(declared, available)
    return WavInfo(fmt, offset, usable - usable % fmt.block_align)


def repair_file(file: BinaryIO, fallback: WavFormat | None = None) -> RepairResult:
    """Make the header agree with the audio actually in ``file`` (opened ``r+b``).

    The data chunk is taken to run to the end of the file, which holds for files this module
    writes (the data chunk is last). A trailing partial frame is cut off. A file too short to
    hold a header gets a fresh one in ``fallback`` format (or WavError without one).
    """
    length = file.seek(0, os.SEEK_END)
    file.seek(0)
    head = file.read(_HEADER_SCAN_BYTES)
    try:
        fmt, offset, declared = _parse(head)
    except WavError:
        # Our header goes out in one write: a file holding a whole header that does not parse
        # was not written here and is left alone.
        if fallback is None or length >= HEADER_BYTES:
            raise
        # Killed before the header was complete: no audio can have followed it.
        file.seek(0)
        file.truncate(0)
        file.write(header(fallback, 0))
        file.flush()
        return RepairResult(WavInfo(fallback, HEADER_BYTES, 0), True)
    data = min(max(0, length - offset), MAX_DATA_BYTES)
    data -= data % fmt.block_align
    riff = offset + data - 8
    file.seek(_RIFF_SIZE_OFFSET)
    (declared_riff,) = struct.unpack("<I", file.read(4))
    changed = declared != data or declared_riff != riff or length != offset + data
    if changed:
        if length != offset + data:
            file.truncate(offset + data)
        file.seek(_RIFF_SIZE_OFFSET)
        file.write(struct.pack("<I", riff))
        file.seek(offset - 4)
        file.write(struct.pack("<I", data))
        file.flush()
    return RepairResult(WavInfo(fmt, offset, data), changed)


def repair(path: str | os.PathLike[str], fallback: WavFormat | None = None) -> RepairResult:
    with open(path, "r+b") as file:
        return repair_file(file, fallback)


def read_frames(path: str | os.PathLike[str]) -> tuple[Samples, WavFormat]:
    """All frames of a PCM WAV as ``(n, channels)`` int16 (memory-mapped, read-only)."""
    with open(path, "rb") as file:
        info = read_info(file)
    if info.frames == 0:
        return np.zeros((0, info.format.channels), dtype=np.int16), info.format
    data = np.memmap(path, dtype="<i2", mode="r", offset=info.data_offset,
                     shape=(info.frames, info.format.channels))
    return data, info.format


def envelope(frames: Samples, points: int) -> npt.NDArray[np.int16]:
    """Min/max per bucket for drawing: shape ``(channels, buckets, 2)``, buckets <= points.

    Buckets split the frames as evenly as integer division allows; fewer frames than points give
    one bucket per frame.
    """
    if points <= 0:
        raise ValueError("points must be positive")
    frames = np.asarray(frames)
    if frames.ndim == 1:
        frames = frames[:, None]
    n, channels = frames.shape
    if n == 0:
        return np.zeros((channels, 0, 2), dtype=np.int16)
    buckets = min(points, n)
    starts = (np.arange(buckets, dtype=np.int64) * n) // buckets
    out = np.empty((channels, buckets, 2), dtype=np.int16)
    for ch in range(channels):
        column = np.ascontiguousarray(frames[:, ch])
        out[ch, :, 0] = np.minimum.reduceat(column, starts)
        out[ch, :, 1] = np.maximum.reduceat(column, starts)
    return out


class _Gap:
    """Silence on a track, held as a count so that it can shrink until it is handed out."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n


class StereoTimeline:
    """Places two mono tracks on one sample timeline and hands out aligned stereo frames.

    Each chunk arrives with the timeline position where it should start (the caller computes it
    from a clock: for audio just received, ``now - duration``; for audio just sent, ``now``).
    Chunks are appended back to back while their stated start stays within ``gap_tolerance``
    samples of where the track already is, so arrival jitter never cuts holes in speech. A chunk
    that starts later than that leaves a gap, filled with silence (nobody spoke).

    Audio held up and then delivered in a burst (a stalled event loop, a network hiccup) shows up
    as a gap followed by chunks stated to start *before* the track's end: the gap was not silence
    but late audio, so the burst takes back the gap's silence, as far as it has not been handed
    out yet, and lands where it belongs. Beyond that, a track running more than ``max_lead``
    samples ahead of its stated positions (a sender faster than real time, clock drift) loses the
    oldest part of the chunk, so the tracks cannot drift apart without bound.

    ``take`` returns the frames both tracks have reached; ``advance_to`` pads a track that has
    gone quiet so that the other one is not held back.
    """

    def __init__(self, *, gap_tolerance: int, max_lead: int, channels: int = 2) -> None:
        if gap_tolerance < 0 or max_lead < 0:
            raise ValueError("tolerances must not be negative")
        self.gap_tolerance = gap_tolerance
        self.max_lead = max_lead
        self.channels = channels
        self.emitted = 0  # frames already handed out by take()
        self.positions = [0] * channels  # samples placed per track (emitted + pending)
        self.padded = [0] * channels  # silence inserted per track (net of what bursts took back)
        self.reclaimed = [0] * channels  # gap silence taken back by late audio
        self.dropped = [0] * channels  # samples dropped per track (lead cap)
        self._pending: list[list[Samples | _Gap]] = [[] for _ in range(channels)]
        self._last_gap: list[_Gap | None] = [None] * channels

    def place(self, channel: int, samples: Samples, start: int) -> None:
        n = len(samples)
        pos = self.positions[channel]
        if start > pos + self.gap_tolerance:
            self._gap(channel, start - pos)
        elif pos > start:
            gap = self._last_gap[channel]
            if gap is not None and gap.n > 0:
                back = min(pos - start, gap.n)
                gap.n -= back
                pos = self.positions[channel] = pos - back
                self.padded[channel] -= back
                self.reclaimed[channel] += back
            if pos > start + self.max_lead:
                drop = min(n, pos - start - self.max_lead)
                samples = samples[drop:]
                self.dropped[channel] += drop
        if len(samples):
            self._pending[channel].append(np.asarray(samples, dtype=np.int16))
            self.positions[channel] += len(samples)

    def place_many(self, chunks: Iterable[tuple[int, Samples, int]]) -> None:
        """``place(channel, samples, start)`` for each chunk in order, with the same result.

        A chunk that ``place`` would append as it is (it starts no earlier than where its track
        is, and within ``gap_tolerance`` after) joins the run of such chunks before it on its
        track; each run goes to the track's pending audio as one piece. A writer pass hands over
        a few hundred milliseconds of 20 ms chunks per call, nearly all of them such chunks."""
        positions = self.positions
        tolerance = self.gap_tolerance
        runs: list[list[Samples]] = [[] for _ in range(self.channels)]
        for channel, samples, start in chunks:
            pos = positions[channel]
            if pos <= start <= pos + tolerance and len(samples):
                runs[channel].append(samples)
                positions[channel] = pos + len(samples)
                continue
            self._join(channel, runs[channel])
            self.place(channel, samples, start)
        for channel, run in enumerate(runs):
            self._join(channel, run)

    def _join(self, channel: int, run: list[Samples]) -> None:
        if run:
            joined = run[0] if len(run) == 1 else np.concatenate(run)
            self._pending[channel].append(np.asarray(joined, dtype=np.int16))
            run.clear()

    def advance_to(self, position: int) -> None:
        """Pad every track that is behind ``position - gap_tolerance`` up to that point."""
        target = position - self.gap_tolerance
        for ch in range(self.channels):
            short = target - self.positions[ch]
            if short > 0:
                self._gap(ch, short)

    def take(self, *, final: bool = False) -> Samples:
        """Frames every track has reached, shape ``(n, channels)``; ``final`` pads to the longest."""
        if final:
            longest = max(self.positions)
            for ch in range(self.channels):
                if self.positions[ch] < longest:
                    self._gap(ch, longest - self.positions[ch])
        ready = min(self.positions) - self.emitted
        out = np.zeros((max(0, ready), self.channels), dtype=np.int16)
        if ready <= 0:
            return out
        for ch in range(self.channels):
            self._consume(ch, out[:, ch])
        self.emitted += ready
        return out

    def _gap(self, channel: int, n: int) -> None:
        gap = _Gap(n)
        self._pending[channel].append(gap)
        self._last_gap[channel] = gap
        self.positions[channel] += n
        self.padded[channel] += n

    def _consume(self, channel: int, out: npt.NDArray[np.int16]) -> None:
        """Fill ``out`` (zeros already) from the front of the track's pending audio."""
        # The pieces that fill ``out`` are joined first and copied in once: a writer pass takes
        # a few hundred milliseconds of 20 ms chunks per call, and a copy per chunk into a strided
        # column of ``out`` costs more than the data.
        pending = self._pending[channel]
        parts: list[Samples] = []
        filled = 0
        need = len(out)
        used = 0
        for head in pending:
            if filled >= need:
                break
            if isinstance(head, _Gap):
                take = min(head.n, need - filled)
                head.n -= take
                if take:
                    parts.append(np.zeros(take, dtype=np.int16))
                if head.n == 0:
                    used += 1
            else:
                take = min(len(head), need - filled)
                if take == len(head):
                    parts.append(head)
                    used += 1
                else:
                    parts.append(head[:take])
                    pending[used] = head[take:]
            filled += take
        del pending[:used]
        if len(parts) == 1:
            out[:] = parts[0]
        elif parts:
            out[:] = np.concatenate(parts)
