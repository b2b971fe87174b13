"""An energy voice-activity detector with turn capture, standing in for a realtime model's server VAD.

Sans-I/O and synchronous: ``InputAudioBuffer.feed(samples)`` returns the turn events the input
produced (``SpeechStarted``, ``SpeechStopped`` carrying the captured ``Turn``).
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from media.codec import FRAME_MS

log = logging.getLogger(__name__)

Samples = npt.NDArray[np.int16]
Json = dict[str, Any]

ECHO_CAP_MS = 10_000
# Energy VAD: threshold 0.5 -> -45 dBFS, 5 dB per 0.1; hysteresis while a turn is open.
_VAD_DB_AT_ZERO = -70.0
_VAD_DB_PER_UNIT = 50.0
_VAD_HOLD_DB = 6.0
_VAD_ONSET_FRAMES = 3
# semantic_vad is approximated with a fixed silence wait per eagerness.
_SEMANTIC_SILENCE_MS = {"low": 1500, "medium": 800, "auto": 800, "high": 400}
_SEMANTIC_PREFIX_MS = 300

# --------------------------------------------------------------------------- turn detection

_NO_SAMPLES: Samples = np.zeros(0, dtype=np.int16)


@dataclass(frozen=True, slots=True)
class Turn:
    """A committed stretch of input audio (positions in ms from the session's first audio)."""

    start_ms: int
    end_ms: int
    speech_end_ms: int
    audio: Samples
    rate_hz: int


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    turn: Turn


@dataclass(frozen=True, slots=True)
class VadParams:
    on_db: float
    prefix_padding_ms: int
    silence_duration_ms: int

    @classmethod
    def from_config(cls, td: Json) -> VadParams:
        if td["type"] == "semantic_vad":
            return cls(_VAD_DB_AT_ZERO + _VAD_DB_PER_UNIT * 0.5, _SEMANTIC_PREFIX_MS,
                       _SEMANTIC_SILENCE_MS[td.get("eagerness") or "auto"])
        return cls(_VAD_DB_AT_ZERO + _VAD_DB_PER_UNIT * float(td["threshold"]),
                   int(td["prefix_padding_ms"]), int(td["silence_duration_ms"]))


class InputAudioBuffer:
    """The input audio buffer of one session: framing, energy turn detection and turn capture.

    Sans-I/O: ``feed(samples)`` returns the detector's events in order. Audio is retained only for
    the uncommitted stretch (while idle, just the prefix padding) and at most ``ECHO_CAP_MS`` of it.
    """

    def __init__(self, rate_hz: int, vad: VadParams | None, stream_ms: int = 0) -> None:
        self.rate_hz = rate_hz
        self._frame_len = rate_hz * FRAME_MS // 1000
        self._carry: Samples = _NO_SAMPLES
        self.vad: VadParams | None = None
        self._on_energy = self._hold_energy = 0.0
        self.set_vad(vad)
        self.stream_ms = stream_ms  # whole frames seen since the session's first audio
        self.pending_start_ms = stream_ms  # start of the uncommitted stretch
        self._frames: deque[Samples] = deque()
        self._frames_start_ms = stream_ms  # position of self._frames[0]
        self._cap_frames = ECHO_CAP_MS // FRAME_MS
        self.speaking = False
        self._run = 0
        self._silence_ms = 0
        self._speech_end_ms = 0

    @property
    def pending_ms(self) -> int:
        return self.stream_ms - self.pending_start_ms

    def set_vad(self, vad: VadParams | None) -> None:
        if vad is None or self.vad is None:
            self.speaking = False
            self._run = 0
        self.vad = vad
        if vad is not None:
            # Levels are compared as frame energies (sum of squares), so no logarithm per frame:
            # energy = frame_len * full_scale^2 * 10^(dBFS / 10).
            full = self._frame_len * 32768.0 * 32768.0
            self._on_energy = full * 10.0 ** (vad.on_db / 10.0)
            self._hold_energy = full * 10.0 ** ((vad.on_db - _VAD_HOLD_DB) / 10.0)

    def feed(self, samples: Samples) -> list[SpeechStarted | SpeechStopped]:
        if self._carry.size:
            samples = np.concatenate((self._carry, samples))
        size = self._frame_len
        n = len(samples) // size
        self._carry = samples[n * size:].copy() if len(samples) > n * size else _NO_SAMPLES
        if n == 0:
            return []
        events: list[SpeechStarted | SpeechStopped] = []
        if n == 1:
            # The usual case: one 20 ms frame per append.
            frame = samples if len(samples) == size else samples[:size]
            flat = frame.astype(np.float32)
            self._frame(frame, float(flat @ flat), events)
            return events
        frames = samples[: n * size].reshape(n, size)
        squares = frames.astype(np.float32)
        squares *= squares
        energies = squares.sum(axis=1).tolist()
        for i in range(n):
            self._frame(frames[i], energies[i], events)
        return events

    def _frame(self, frame: Samples, energy: float, events: list[SpeechStarted | SpeechStopped]) -> None:
        self.stream_ms += FRAME_MS
        self._frames.append(frame)
        vad = self.vad
        if vad is None or not self.speaking:
            # Idle (or no detector): keep the prefix padding plus the onset run, or with no detector
            # the first seconds of the manual-commit stretch.
            limit = (vad.prefix_padding_ms // FRAME_MS + _VAD_ONSET_FRAMES) if vad else self._cap_frames
            if vad is not None:
                while len(self._frames) > limit:
                    self._frames.popleft()
                    self._frames_start_ms += FRAME_MS
            elif len(self._frames) > limit:
                self._frames.pop()
        elif len(self._frames) > self._cap_frames:
            self._frames.pop()
        if vad is None:
            return
        if not self.speaking:
            if energy >= self._on_energy:
                self._run += 1
            else:
                self._run = 0
            if self._run >= _VAD_ONSET_FRAMES:
                onset_ms = self.stream_ms - self._run * FRAME_MS
                start_ms = max(self.pending_start_ms, onset_ms - vad.prefix_padding_ms, self._frames_start_ms)
                while self._frames_start_ms < start_ms:
                    self._frames.popleft()
                    self._frames_start_ms += FRAME_MS
                self.pending_start_ms = start_ms
                self.speaking = True
                self._silence_ms = 0
                self._speech_end_ms = self.stream_ms
                events.append(SpeechStarted(start_ms))
            return
        if energy >= self._hold_energy:
            self._silence_ms = 0
            self._speech_end_ms = self.stream_ms
            return
        self._silence_ms += FRAME_MS
        if self._silence_ms >= vad.silence_duration_ms:
            self.speaking = False
            self._run = 0
            events.append(SpeechStopped(self._take(self._speech_end_ms)))

    def commit(self) -> Turn:
        """Commit everything not yet committed (manual ``input_audio_buffer.commit``)."""
        self.speaking = False
        self._run = 0
        return self._take(self.stream_ms)

    def clear(self) -> None:
        self._carry = _NO_SAMPLES
        self.speaking = False
        self._run = 0
        self._frames.clear()
        self.pending_start_ms = self._frames_start_ms = self.stream_ms

    def _take(self, speech_end_ms: int) -> Turn:
        keep = max(0, (speech_end_ms - self._frames_start_ms) // FRAME_MS)
        frames = list(itertools.islice(self._frames, 0, keep))
        audio = np.concatenate(frames) if frames else np.zeros(0, dtype=np.int16)
        turn = Turn(self.pending_start_ms, self.stream_ms, speech_end_ms, audio, self.rate_hz)
        self._frames.clear()
        self.pending_start_ms = self._frames_start_ms = self.stream_ms
        return turn
