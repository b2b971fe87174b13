"""The load benchmark's delivery figure on hand-built calls: a response the bridge cut short counts
as a loss; one the caller hung up on, or barged in on, during its playout does not."""

from __future__ import annotations

from array import array
from typing import Any

from bench.load import analysis as an

FRAME = an.FRAME
T0 = 100.0  # the caller's first frame
RESPONSE_MS = 2000.0  # the model's answer: 100 voiced frames
FIRST_DELTA = T0 + 1.0  # when the model sent its first delta


def caller(heard_frames: int, hung_up: float) -> an.CallerView:
    """A caller that heard ``heard_frames`` voiced frames from 10 ms after the model's first delta."""
    recv = array("d", (FIRST_DELTA + 0.010 + i * FRAME for i in range(heard_frames)))
    raw: dict[str, Any] = {
        "index": 0, "media_at": T0, "end": hung_up, "speech_ends": [],
        "recv_t": recv.tobytes(), "recv_voiced": bytes([1]) * heard_frames,
        "lateness": array("f", [0.0] * 10).tobytes(),
    }
    return an.CallerView.from_wire(raw)


def session(*, barge_at: float | None = None) -> an.Session:
    s = an.Session("sess_1", T0)
    s.first_audio["resp_1"] = (FIRST_DELTA, "answer")
    done_at = FIRST_DELTA + RESPONSE_MS / 1000 - 0.2  # the model sends ahead of real time
    s.done["resp_1"] = {"t": done_at, "status": "completed", "voiced_ms": [0.0, RESPONSE_MS]}
    if barge_at is not None:
        s.speech_started.append((barge_at, True))
    return s


def test_a_whole_response_is_delivered() -> None:
    fig = an.analyse_call(caller(100, hung_up=FIRST_DELTA + 5.0), session())
    assert (fig.expected_frames, fig.delivered_frames, fig.short_responses, fig.cut_by_hangup) == (100, 100, 0, 0)


def test_frames_the_bridge_lost_count_against_delivery() -> None:
    fig = an.analyse_call(caller(90, hung_up=FIRST_DELTA + 5.0), session())
    assert (fig.expected_frames, fig.delivered_frames, fig.short_responses) == (100, 90, 1)


def test_a_response_the_caller_hung_up_on_is_left_out() -> None:
    # The caller's time ran out 1.8 s into a 2 s answer: it heard 90 frames, then hung up.
    fig = an.analyse_call(caller(90, hung_up=FIRST_DELTA + 1.81), session())
    assert fig.cut_by_hangup == 1
    assert (fig.expected_frames, fig.delivered_frames, fig.short_responses) == (0, 0, 0)
    assert fig.responses == 1  # still counted as heard, and its frames still checked for gaps


def test_a_response_cut_by_barge_in_is_left_out() -> None:
    fig = an.analyse_call(caller(60, hung_up=FIRST_DELTA + 5.0), session(barge_at=FIRST_DELTA + 1.1))
    assert (fig.expected_frames, fig.short_responses, fig.cut_by_hangup) == (0, 0, 0)
    assert len(fig.barge_in) == 1


def test_callers_whose_turns_line_up_alike_are_paired_by_when_their_session_opened() -> None:
    # Two calls placed 50 ms apart, each with one utterance at the same moment: the turns cannot
    # tell them apart; each session opened ~10 ms after its own call was placed.
    callers, sessions = [], {}
    for k, start in enumerate((T0, T0 + 0.050)):
        raw = caller(1, hung_up=T0 + 30).raw | {"index": k, "start": start, "media_at": start + 0.002,
                                                 "onsets": [T0 + 5.0]}
        callers.append(an.CallerView.from_wire(raw))
    for k, opened in reversed(list(enumerate((T0 + 0.010, T0 + 0.061)))):
        s = an.Session(f"sess_{k}", opened)
        s.speech_started.append((T0 + 5.1, False))
        sessions[s.id] = s
    paired = an.pair_sessions(callers, sessions)
    assert {index: s.id for index, s in paired.items()} == {0: "sess_0", 1: "sess_1"}
