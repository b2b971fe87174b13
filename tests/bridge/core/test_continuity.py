"""The pieces a call uses to outlive its model session: backoff, the bounded conversation history
and its replay, recorded prompts."""

from __future__ import annotations

import wave

import numpy as np
import pytest

from bridge.core.continuity import (
    MAX_BACKOFF,
    RESTORED_NOTE,
    ConversationHistory,
    ModelPolicy,
    PromptError,
    load_prompt,
)


def test_backoff_doubles_up_to_the_cap():
    policy = ModelPolicy(reconnect_backoff=0.25)
    assert [policy.backoff(n) for n in range(0, 6)] == [0.0, 0.25, 0.5, 1.0, 2.0, MAX_BACKOFF]
    assert ModelPolicy(reconnect_backoff=0.0).backoff(3) == 0.0


def _texts(events):
    return [(e["item"]["role"], e["item"]["content"][0]["type"], e["item"]["content"][0]["text"]) for e in events]


def test_replay_gives_the_conversation_in_order_as_items():
    history = ConversationHistory()
    history.add("assistant", "Hello, how can I help?", "item_1")
    history.add("user", "I need a table for two.")
    history.add("assistant", "For which day", "item_2")
    history.mark_interrupted("item_2")
    history.add("user", "   ")  # empty transcripts are not turns
    events = history.replay_events()
    assert all(e["type"] == "conversation.item.create" and e["item"]["type"] == "message" for e in events)
    assert _texts(events) == [
        ("system", "input_text", RESTORED_NOTE),
        ("assistant", "output_text", "Hello, how can I help?"),
        ("user", "input_text", "I need a table for two."),
        ("assistant", "output_text", "For which day [interrupted by the caller]"),
    ]


def test_partial_answer_is_kept_once_and_marked():
    history = ConversationHistory()
    history.add_partial("item_9", "Our opening hours are")
    history.add_partial("item_9", "Our opening hours are")  # the same item again: not doubled
    assert [(t.text, t.interrupted) for t in history.turns()] == [("Our opening hours are", True)]


def test_long_calls_are_condensed_into_a_bounded_summary():
    history = ConversationHistory(verbatim_turns=4, summary_chars=300)
    for n in range(200):
        history.add("user" if n % 2 else "assistant", f"turn number {n} " + "x" * 40)
    assert len(history) == 4
    assert len(history.summary) <= 300
    # The summary keeps the most recent of the older turns; the oldest are gone.
    assert "turn number 195" in history.summary and "turn number 0 " not in history.summary
    events = history.replay_events()
    assert len(events) == 1 + 1 + 4
    assert events[1]["item"]["role"] == "system"
    assert events[1]["item"]["content"][0]["text"].startswith("Earlier in this call (condensed):")
    assert _texts(events)[-1][2].startswith("turn number 199")


def test_turn_text_is_bounded():
    history = ConversationHistory()
    history.add("user", "y" * 100_000)
    assert len(history.turns()[0].text) == 2000


def _wav(path, samples, rate, channels=1):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())


def test_prompt_is_resampled_to_the_callers_rate(tmp_path):
    rate = 16000
    t = np.arange(rate) / rate
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    path = tmp_path / "moment.wav"
    _wav(path, tone, rate)
    out = load_prompt(path, 8000)
    assert out.dtype == np.int16
    assert 8000 <= len(out) <= 8040  # plus the filter's tail, under 5 ms
    spectrum = np.abs(np.fft.rfft(out[1000:7000].astype(np.float64)))
    peak_hz = np.argmax(spectrum) * 8000 / 6000
    assert abs(peak_hz - 440) < 3
    same = load_prompt(path, 16000)
    assert np.array_equal(same, tone)


def test_stereo_prompt_plays_its_first_channel(tmp_path):
    path = tmp_path / "stereo.wav"
    frames = np.stack([np.full(800, 1000), np.full(800, -1000)], axis=1).reshape(-1)
    _wav(path, frames, 8000, channels=2)
    assert np.all(load_prompt(path, 8000) == 1000)


@pytest.mark.parametrize("content", [b"", b"not a wav file at all", None])
def test_unplayable_prompt_is_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PromptError, match="cannot read prompt"):
        load_prompt(path, 8000)


def test_overlong_prompt_is_refused(tmp_path):
    path = tmp_path / "long.wav"
    _wav(path, np.zeros(8000 * 31), 8000)
    with pytest.raises(PromptError, match="longer than 30 s"):
        load_prompt(path, 8000)
