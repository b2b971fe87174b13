"""From what the callers heard and what the model saw to the figures of one run.

The simulator's timing log and the callers' own records share the monotonic clock. A caller and the
model session of its call are paired by their turns: each utterance a caller started is followed,
a few tens of milliseconds later, by ``speech_started`` in exactly one session, and callers speak
on independent random schedules.

Definitions (all times monotonic seconds):

* inbound latency: send time of an utterance's last frame -> arrival at the model of the append
  that completed the model's last speech frame of that turn;
* outbound latency: the model sending the first audio delta of a response -> arrival at the
  caller of the first voiced frame of it (minus the whole 20 ms frames of digital silence the
  response itself starts with);
* barge-in reaction: the model sending ``speech_started`` while its audio streamed -> the end of
  the last voiced frame of that response at the caller (its arrival + 20 ms);
* gaps: between consecutive frames at the caller inside a response's voiced span, inter-arrival
  times over 40 ms, except those the load generator caused: when the caller's own loop was held
  up (its frames went out late) over all but 40 ms of a gap, the gap is counted apart;
* audio delivered: for responses that finished and were not cut short by a barge-in or by the
  caller hanging up during their playout, 20 ms frames the caller received from the first to the
  last voiced one, against the frames spanned by the non-zero audio the model sent.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client.parser import text_string_to_metric_families

Floats = npt.NDArray[np.float64]

GAP_SECONDS = 0.040
HARNESS_STALL_SECONDS = 0.010
FRAME = 0.020
_TYPICAL_ONSET_DELAY = 0.1  # three 20 ms frames of speech plus transit
_MATCH_WINDOW = 1.0
_OPEN_WEIGHT = 0.2


@dataclass
class Session:
    id: str
    opened: float
    speech_started: list[tuple[float, bool]] = field(default_factory=list)
    speech_end: list[float] = field(default_factory=list)
    first_audio: dict[str, tuple[float, str]] = field(default_factory=dict)
    done: dict[str, dict[str, Any]] = field(default_factory=dict)


def read_timing_log(path: Path) -> dict[str, Session]:
    sessions: dict[str, Session] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            ev = json.loads(line)
            sid, kind, t = ev["s"], ev["e"], ev["t"]
            if kind == "open":
                sessions[sid] = Session(sid, t)
                continue
            s = sessions.get(sid)
            if s is None:
                continue
            if kind == "speech_started":
                s.speech_started.append((t, bool(ev.get("agent"))))
            elif kind == "speech_end":
                s.speech_end.append(t)
            elif kind == "first_audio":
                s.first_audio[ev["r"]] = (t, ev.get("kind", ""))
            elif kind == "done":
                s.done[ev["r"]] = ev
    return sessions


@dataclass
class CallerView:
    """A caller's record as arrays."""

    raw: dict[str, Any]
    recv_t: Floats
    voiced: npt.NDArray[np.bool_]
    lateness: npt.NDArray[np.float32]

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> CallerView:
        return cls(raw, np.frombuffer(raw["recv_t"], dtype=np.float64),
                   np.frombuffer(raw["recv_voiced"], dtype=np.uint8).astype(bool),
                   np.frombuffer(raw["lateness"], dtype=np.float32))


def _onset_cost(onsets: Floats, started: Floats) -> float:
    """How badly a caller's utterance onsets and a session's ``speech_started`` times line up:
    each onset should be followed, about ``_TYPICAL_ONSET_DELAY`` later, by a speech_started and
    each speech_started preceded by an onset. 0 is a perfect match, 1 no match at all."""
    if not len(onsets) or not len(started):
        return 1.0
    return (_one_way(onsets, started) + _one_way(-started[::-1], -onsets[::-1])) / 2


def _one_way(earlier: Floats, later: Floats) -> float:
    idx = np.searchsorted(later, earlier)
    ok = idx < len(later)
    d = later[np.minimum(idx, len(later) - 1)] - earlier
    cost = np.where(ok & (d <= _MATCH_WINDOW), np.minimum(1.0, np.abs(d - _TYPICAL_ONSET_DELAY)), 1.0)
    return float(cost.mean())


def pair_sessions(callers: list[CallerView], sessions: dict[str, Session]) -> dict[int, Session]:
    """Caller index -> its model session: the assignment that lines turns up best overall."""
    from scipy.optimize import linear_sum_assignment

    ids = list(sessions)
    started = [np.array(sorted(t for t, _ in sessions[sid].speech_started)) for sid in ids]
    opened = np.array([sessions[sid].opened for sid in ids])
    rows = [c for c in callers if c.raw["onsets"]]
    if not rows or not ids:
        return {}
    cost = np.ones((len(rows), len(ids)))
    for i, c in enumerate(rows):
        onsets = np.array(c.raw["onsets"], dtype=np.float64)
        start = c.raw["start"]
        media_at = c.raw["media_at"] or start
        for j in np.flatnonzero((opened >= start - 1.0) & (opened <= media_at + 5.0)):
            # Turns decide; how soon the session opened after the call was placed breaks ties
            # between callers whose few turns line up alike (calls start 50 ms apart).
            cost[i, j] = _onset_cost(onsets, started[j]) + _OPEN_WEIGHT * min(1.0, abs(opened[j] - start))
    chosen_rows, chosen_cols = linear_sum_assignment(cost)
    return {rows[i].raw["index"]: sessions[ids[j]] for i, j in zip(chosen_rows, chosen_cols, strict=True)
            if cost[i, j] < 0.5}


@dataclass
class CallFigures:
    inbound: list[float] = field(default_factory=list)
    outbound: list[float] = field(default_factory=list)
    barge_in: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    # Gaps that are the load generator's: it was itself held up for all but 40 ms of them, so the
    # frame after the gap may have arrived on time and only been read late.
    harness_gaps: list[float] = field(default_factory=list)
    agent_frames: int = 0
    expected_frames: int = 0
    delivered_frames: int = 0
    short_responses: int = 0
    cut_by_hangup: int = 0  # responses still playing when the caller hung up: not in the delivery figure
    responses: int = 0
    missing_speech_end: int = 0


def _first_at_or_after(times: Floats, t: float) -> int:
    return int(np.searchsorted(times, t, side="left"))


def harness_stalls(c: CallerView) -> tuple[Floats, Floats]:
    """When the caller's own process was held up: a frame due at ``d`` and sent ``l`` late means
    its event loop ran nothing over ``[d, d + l]``, receiving included."""
    late = np.flatnonzero(c.lateness > HARNESS_STALL_SECONDS)
    due = c.raw["media_at"] + FRAME * late
    return due, due + c.lateness[late].astype(np.float64)


def _overlap(stalls: tuple[Floats, Floats], a: float, b: float) -> float:
    starts, ends = stalls
    if not len(starts):
        return 0.0
    cut = np.clip(np.minimum(ends, b) - np.maximum(starts, a), 0.0, None)
    return float(cut.max())


def analyse_call(c: CallerView, s: Session) -> CallFigures:
    fig = CallFigures()
    stalls = harness_stalls(c)
    t = c.recv_t
    voiced = c.voiced
    voiced_idx = np.flatnonzero(voiced)
    voiced_t = t[voiced_idx]

    # Inbound: each utterance's last frame to the model's receipt of it.
    ends = np.array(sorted(s.speech_end))
    for e in c.raw["speech_ends"]:
        i = int(np.searchsorted(ends, e - 0.005))
        if i < len(ends) and ends[i] - e <= 0.5:
            fig.inbound.append(float(ends[i] - e))
        else:
            fig.missing_speech_end += 1

    responses = sorted((fa[0], rid, fa[1]) for rid, fa in s.first_audio.items())
    barges = sorted(ts for ts, agent in s.speech_started if agent)
    hung_up = float(c.raw["end"]) or math.inf
    for k, (t_first, rid, _kind) in enumerate(responses):
        next_first = responses[k + 1][0] if k + 1 < len(responses) else math.inf
        done = s.done.get(rid)
        # Outbound: the first voiced frame of this response at the caller.
        j = int(np.searchsorted(voiced_t, t_first))
        if j >= len(voiced_t) or voiced_t[j] > min(t_first + 1.0, next_first):
            continue
        lead_ms = float(done["voiced_ms"][0]) if done else 0.0
        fig.outbound.append(float(voiced_t[j] - t_first - math.floor(lead_ms / 20.0) * FRAME))
        # The response's voiced span at the caller.
        if done is not None and done["status"] == "completed":
            span_end = min(done["t"] + 2.0, next_first)
        elif done is not None:
            span_end = min(done["t"] + 0.5, next_first)
        else:
            span_end = next_first
        j_end = int(np.searchsorted(voiced_t, span_end)) - 1
        if j_end < j:
            continue
        i0, i1 = int(voiced_idx[j]), int(voiced_idx[j_end])
        diffs = np.diff(t[i0 : i1 + 1])
        for k in np.flatnonzero(diffs > GAP_SECONDS):
            a, b = float(t[i0 + k]), float(t[i0 + k + 1])
            if (b - a) - _overlap(stalls, a, b) > GAP_SECONDS:
                fig.gaps.append(b - a)
            else:
                fig.harness_gaps.append(b - a)
        fig.agent_frames += i1 - i0 + 1
        fig.responses += 1
        # A response the model finished sending can still be cut short at the caller by a
        # barge-in during its playout (the bridge flushes what is queued): not a delivery loss.
        interrupted = any(t_first <= ts < span_end for ts in barges)
        if done is not None and done["status"] == "completed" and not interrupted:
            v0, v1 = done["voiced_ms"]
            expected = math.ceil(v1 / 20.0) - math.floor(v0 / 20.0)
            heard = i1 - i0 + 1
            # Nor is a response whose playout would have run past the caller's hang-up: the model
            # finishes sending ~200 ms ahead of real time, so the last answer of a call can still
            # be in the bridge's playout buffer when the caller's time is up.
            if float(voiced_t[j]) + expected * FRAME > hung_up:
                fig.cut_by_hangup += 1
            else:
                fig.expected_frames += expected
                fig.delivered_frames += min(heard, expected)
                if heard < expected - 1:
                    fig.short_responses += 1
        # Barge-in: speech_started while this response streamed.
        for ts in barges:
            if not t_first <= ts < next_first:
                continue
            if done is not None and done["t"] < ts - 0.001:
                continue
            lo = int(np.searchsorted(voiced_t, ts - 0.5))
            hi = int(np.searchsorted(voiced_t, min(ts + 1.0, next_first))) - 1
            if hi < lo:
                continue
            fig.barge_in.append(max(0.0, float(voiced_t[hi] + FRAME - ts)))
    return fig


def percentiles(values: list[float] | Floats, qs: tuple[float, ...] = (50, 95, 99)) -> list[float]:
    if len(values) == 0:
        return [math.nan] * len(qs)
    return [float(v) for v in np.percentile(np.asarray(values, dtype=np.float64), qs)]


def histogram_summary(metrics_text: str, name: str) -> dict[str, float]:
    """count, mean and the bucket bound holding the 99th percentile of a Prometheus histogram
    (all label sets added up)."""
    buckets: dict[float, float] = defaultdict(float)
    count = total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets[float(sample.labels["le"])] += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
            elif sample.name.endswith("_sum"):
                total += sample.value
    p99 = math.nan
    for bound in sorted(buckets):
        if count and buckets[bound] >= 0.99 * count:
            p99 = bound
            break
    return {"count": count, "mean": total / count if count else math.nan, "p99_le": p99}


def counter_total(metrics_text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def counter_by_label(metrics_text: str, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name:
                out[sample.labels.get(label, "")] += sample.value
    return dict(out)
