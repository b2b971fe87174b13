"""What lets a call outlive its model session: the reconnect policy, the conversation so far, prompts.

A realtime session can end under a call for reasons the caller has nothing to do with: the
provider drops the connection, stops answering (a stalled session), or closes it at its session
limit (60 minutes on OpenAI's Realtime API, close code 1001). A carrier does not hang up on a
caller because one element of the path restarted: the call opens a new session, configures it
as the first one (the tenant's instructions, voice, tools), hands it the conversation so far and
carries on. The caller hears a short silence, or the tenant's "one moment" prompt when the new
session is slow to come; only when ``reconnect_attempts`` attempts in a row fail does the call
end (``model_error``), after the tenant's announcement.

The conversation is replayed as text items (``conversation.item.create``): the caller's turns
from their transcriptions, the agent's from its audio transcripts. The most recent
``VERBATIM_TURNS`` go over as they were; older ones are condensed into one system item of at most
``SUMMARY_CHARS`` characters (the latest part kept), so a long call costs the new session a
bounded context and this process bounded memory.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from media.resample import StreamResampler
from media.wav import read_frames

Samples = npt.NDArray[np.int16]

VERBATIM_TURNS = 24
SUMMARY_CHARS = 4000
TURN_CHARS = 2000  # one turn's text as kept (a transcript is rarely longer)
MAX_BACKOFF = 2.0
PROMPT_SECONDS_MAX = 30.0

RESTORED_NOTE = (
    "[The connection to the phone call was interrupted and is restored now. The conversation so "
    "far is below. Continue it where it stopped; do not greet the caller again.]"
)


@dataclass(frozen=True, slots=True)
class ModelPolicy:
    """How a call treats its model session failing (from ``model.*`` settings)."""

    reconnect_attempts: int = 3  # connection attempts in a row before the call gives up
    reconnect_backoff: float = 0.25  # seconds before the second attempt; doubled up to MAX_BACKOFF
    stall_timeout: float = 8.0  # seconds without any model event while the caller waits for an answer
    prompt_after: float = 1.0  # seconds of outage before the tenant's reconnect prompt plays

    def backoff(self, failed_attempts: int) -> float:
        """Seconds to wait after ``failed_attempts`` (>= 1) failed attempts in a row."""
        if failed_attempts <= 0:
            return 0.0
        return float(min(MAX_BACKOFF, self.reconnect_backoff * 2 ** (failed_attempts - 1)))


@dataclass(slots=True)
class Turn:
    role: str  # "user" or "assistant"
    text: str
    item_id: str | None = None
    interrupted: bool = False


class ConversationHistory:
    """The call's conversation as text, bounded, for replay into a new model session."""

    def __init__(self, verbatim_turns: int = VERBATIM_TURNS, summary_chars: int = SUMMARY_CHARS) -> None:
        self.verbatim_turns = verbatim_turns
        self.summary_chars = summary_chars
        self._turns: deque[Turn] = deque()
        self._summary = ""

    def __len__(self) -> int:
        return len(self._turns)

    @property
    def summary(self) -> str:
        return self._summary

    def turns(self) -> list[Turn]:
        return list(self._turns)

    def add(self, role: str, text: str, item_id: str | None = None) -> None:
        text = text.strip()
        if not text:
            return
        self._turns.append(Turn(role, text[:TURN_CHARS], item_id))
        while len(self._turns) > self.verbatim_turns:
            self._fold(self._turns.popleft())

    def add_partial(self, item_id: str, text: str) -> None:
        """What an agent item had said when its session was lost: kept, marked as cut off."""
        if any(turn.item_id == item_id for turn in self._turns):
            return
        self.add("assistant", text, item_id)
        self.mark_interrupted(item_id)

    def mark_interrupted(self, item_id: str) -> None:
        """The caller cut the agent's item short: it was not all heard."""
        for turn in reversed(self._turns):
            if turn.item_id == item_id:
                turn.interrupted = True
                return

    def _fold(self, turn: Turn) -> None:
        line = f"{_speaker(turn.role)}: {turn.text}{' (interrupted)' if turn.interrupted else ''}"
        joined = f"{self._summary}\n{line}" if self._summary else line
        self._summary = joined[-self.summary_chars :]

    def replay_events(self) -> list[dict[str, Any]]:
        """``conversation.item.create`` events that give a new session this conversation."""
        events = [_item_event("system", "input_text", RESTORED_NOTE)]
        if self._summary:
            events.append(_item_event("system", "input_text",
                                      "Earlier in this call (condensed):\n" + self._summary))
        for turn in self._turns:
            text = turn.text + (" [interrupted by the caller]" if turn.interrupted else "")
            if turn.role == "assistant":
                events.append(_item_event("assistant", "output_text", text))
            else:
                events.append(_item_event("user", "input_text", text))
        return events


def _speaker(role: str) -> str:
    return "agent" if role == "assistant" else "caller"


def _item_event(role: str, part: str, text: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": role, "content": [{"type": part, "text": text}]},
    }


class PromptError(ValueError):
    """A prompt file that cannot be played (missing, not PCM WAV, too long)."""


def load_prompt(path: str | os.PathLike[str], rate_hz: int) -> Samples:
    """A mono 16-bit PCM WAV file as int16 samples at ``rate_hz`` (blocking: run it in a thread)."""
    try:
        frames, fmt = read_frames(path)
    except (OSError, ValueError) as exc:
        raise PromptError(f"cannot read prompt {os.fspath(path)!r}: {exc}") from None
    if len(frames) > PROMPT_SECONDS_MAX * fmt.rate_hz:
        raise PromptError(f"prompt {os.fspath(path)!r} is longer than {PROMPT_SECONDS_MAX:.0f} s")
    mono = np.asarray(frames[:, 0], dtype=np.int16)
    if fmt.rate_hz == rate_hz:
        return mono.copy()
    resampler = StreamResampler(fmt.rate_hz, rate_hz)
    out = resampler.process(mono)
    tail = resampler.flush()
    return np.concatenate([out, tail]) if len(tail) else out
