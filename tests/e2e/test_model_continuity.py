"""A call outlives its model session: drops, a stall and the provider's session limit are bridged by
new sessions that get the tenant's configuration and the conversation so far; only a model that
stays unreachable ends the call, after the tenant's announcement.

Whole calls over real loopback sockets: FastAGI + AudioSocket -> callbridge -> the built-in
realtime simulator through the real openai SDK.
"""

from __future__ import annotations

import asyncio
import time
import wave

import numpy as np
import pytest

from bridge.core.continuity import RESTORED_NOTE
from bridge.simulator import GREETING_TRANSCRIPT
from tests.conftest import load_wav, loopback_settings
from tests.peers.asterisk import AsteriskCaller
from tests.servers import start_daemon, stop_daemon, until

pytestmark = pytest.mark.realtime

LINE = "+5511999993000"
# An English line: the simulator greets in English (4.4 s), which the timelines below assume.
ENGLISH_LINE = f"""version: 1
tenants:
  - slug: english-line
    numbers: ["{LINE}"]
    language: en
    greeting: Hello!
"""


async def _start(tmp_path, **extra):
    if "tenants" not in extra:
        tenants = tmp_path / "tenants.yaml"
        tenants.write_text(ENGLISH_LINE)
        extra["tenants"] = {"file": str(tenants)}
    return await start_daemon(loopback_settings(tmp_path, **extra))


async def _until(predicate, timeout=10.0):
    await until(predicate, within=timeout)


async def _call(app, number=LINE):
    caller = AsteriskCaller(app.agi.port, number)
    await caller.dial()
    await caller.connect_media()
    return caller


def _speech(fixtures_dir, seconds):
    samples, rate = load_wav(fixtures_dir / "speech" / "real_cmu_8k.wav")
    assert rate == 8000
    return samples[: int(8000 * seconds)]


def _sample(app, name, labels):
    return app.metrics.registry.get_sample_value(name, labels) or 0.0


def _outcomes(app):
    out = {}
    for metric in app.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "callbridge_calls_total" and sample.value:
                out[sample.labels["outcome"]] = sample.value
    return out


def _texts(session):
    """(role, text) of every message item the client created in a simulated session."""
    out = []
    for item in session.items_created:
        for part in item.get("content", []):
            if "text" in part:
                out.append((item["role"], part["text"]))
    return out


def _agent_runs(frames, threshold=200.0, gap=0.1):
    """Stretches of agent speech in what the caller received, as (first, last) arrival times."""
    runs: list[list[float]] = []
    for f in frames:
        if f.rms() <= threshold:
            continue
        if runs and f.at - runs[-1][1] <= gap:
            runs[-1][1] = f.at
        else:
            runs.append([f.at, f.at])
    return [(a, b) for a, b in runs]


async def test_three_drops_in_one_call_leave_short_gaps_and_keep_the_conversation(tmp_path, fixtures_dir):
    app, stop, task = await _start(tmp_path)
    sim = app.simulator
    try:
        caller = await _call(app)
        t0 = time.monotonic()
        silence = np.zeros(8000 * 30, dtype=np.int16)
        speech = _speech(fixtures_dir, 2.0)
        # The caller listens to the greeting, speaks, listens, speaks again, listens.
        audio = np.concatenate([silence[: 8000 * 7], speech, silence[: 8000 * 5], speech, silence[: 8000 * 5]])
        playing = asyncio.create_task(caller.play(audio, start=t0))

        # Drop 1: in the middle of the greeting.
        await _until(lambda: any(f.rms() > 200 for f in caller.received))
        await asyncio.sleep(0.8)
        drops = [time.monotonic()]
        await sim.drop_all(1011)
        await _until(lambda: len(sim.sessions) == 2)
        # Drop 2: while the agent answers the caller's first turn (the simulator echoes it).
        await _until(lambda: bool(sim.sessions[1].responses) and len(sim.sessions[1].speech_stopped_at) >= 1,
                     timeout=15)
        await asyncio.sleep(0.5)
        drops.append(time.monotonic())
        await sim.drop_all(1011)
        await _until(lambda: len(sim.sessions) == 3)
        # Drop 3: while nobody speaks, before the caller's second turn.
        await asyncio.sleep(max(0.0, t0 + 12.0 - time.monotonic()))
        drops.append(time.monotonic())
        await sim.drop_all(1011)
        await _until(lambda: len(sim.sessions) == 4)
        await playing
        await caller.hang_up()
        await _until(lambda: app.switchboard.active_calls == 0)

        assert _outcomes(app) == {"caller_hangup": 1}
        assert _sample(app, "callbridge_model_reconnects_total", {"provider": "simulator", "reason": "dropped"}) == 3
        assert [s.close_code for s in sim.sessions[:3]] == [1011, 1011, 1011]

        # Every session got the tenant's configuration, the same each time.
        first = sim.sessions[0].session_updates[0]
        for session in sim.sessions[1:]:
            assert session.session_updates[0] == first
        # The re-created sessions got the conversation so far as items.
        texts = _texts(sim.sessions[3])
        assert texts[0] == ("system", RESTORED_NOTE)
        assert ("assistant", GREETING_TRANSCRIPT) in texts
        assert any(role == "user" and text.startswith("[caller speech") for role, text in texts), texts
        # The answer the second drop cut off is there as far as it had gone, marked as cut off.
        assert any(role == "assistant" and text.startswith("[echo of caller speech")
                   and text.endswith("[interrupted by the caller]") for role, text in texts), texts
        # The greeting was cut by the first drop: the new session was asked to answer at once.
        assert sim.sessions[1].response_requests

        # The caller's line never went quiet: a frame every 20 ms all through the call (the
        # pacer never stops; AudioSocket() would hang up after 2 s without frames).
        times = np.array([f.at for f in caller.received])
        assert np.max(np.diff(times)) < 0.25, np.max(np.diff(times))
        # The agent's speech resumed shortly after each drop that cut it.
        runs = _agent_runs(caller.received)
        for dropped_at in drops[:2]:
            before = max(b for a, b in runs if a < dropped_at)
            after = min(a for a, b in runs if a > before + 0.05)
            assert after - dropped_at < 1.5, (dropped_at - t0, before - t0, after - t0)
        # The caller's last turn was answered by the fourth session.
        assert sim.sessions[3].responses
        assert any(a > drops[2] for a, b in runs)
    finally:
        await stop_daemon(stop, task)


async def test_session_rolls_over_at_the_provider_limit(tmp_path, fixtures_dir):
    app, stop, task = await _start(tmp_path)
    sim = app.simulator
    sim.max_session_seconds = 5.0  # the provider's limit, shortened (60 minutes on OpenAI)
    try:
        caller = await _call(app)
        t0 = time.monotonic()
        speech = _speech(fixtures_dir, 1.5)
        silence = np.zeros(8000 * 6, dtype=np.int16)
        audio = np.concatenate([silence[: int(8000 * 5.5)], speech, silence])
        await caller.play(audio, start=t0)
        assert not caller.media_closed.is_set(), "the call ended at the session limit"
        await caller.hang_up()
        await _until(lambda: app.switchboard.active_calls == 0)

        assert _outcomes(app) == {"caller_hangup": 1}
        assert len(sim.sessions) >= 3
        rolled = sim.sessions[:-1]
        assert all(s.close_code == 1001 for s in rolled), [s.close_code for s in rolled]
        assert _sample(app, "callbridge_model_reconnects_total",
                       {"provider": "simulator", "reason": "session_limit"}) == len(rolled)
        # A roll-over is not a model error.
        assert not any(m.name == "callbridge_model_errors" and any(s.value for s in m.samples)
                       for m in app.metrics.registry.collect())
        # Each new session opened right after the old one closed.
        for old, new in zip(sim.sessions, sim.sessions[1:], strict=False):
            assert old.closed_at is not None and new.opened_at - old.closed_at < 1.0
        # The conversation went on in the later sessions: the caller's turn arrived in one of
        # them and the earlier greeting is in their items.
        assert any(s.speech_stopped_at for s in sim.sessions[1:])
        assert any(role == "assistant" and text.startswith(GREETING_TRANSCRIPT[:40])
                   for role, text in _texts(sim.sessions[-1]))
        times = np.array([f.at for f in caller.received])
        assert np.max(np.diff(times)) < 0.25
    finally:
        await stop_daemon(stop, task)


async def test_stalled_model_is_replaced(tmp_path):
    app, stop, task = await _start(tmp_path, model={"stall_timeout": 1.0})
    sim = app.simulator
    try:
        caller = await _call(app)
        playing = asyncio.create_task(caller.play(np.zeros(8000 * 5, dtype=np.int16)))
        # The session goes silent before the greeting: the caller waits for an answer.
        await _until(lambda: bool(sim.sessions))
        sim.stall_all()
        stalled_at = time.monotonic()
        await _until(lambda: len(sim.sessions) == 2, timeout=5)
        replaced_after = time.monotonic() - stalled_at
        assert 0.5 <= replaced_after < 3.0, replaced_after
        # The new session greets the caller.
        await _until(lambda: any(f.rms() > 200 for f in caller.received), timeout=5)
        await playing
        await caller.hang_up()
        await _until(lambda: app.switchboard.active_calls == 0)
        assert _outcomes(app) == {"caller_hangup": 1}
        assert _sample(app, "callbridge_model_errors_total", {"provider": "simulator", "kind": "stalled"}) == 1
        assert _sample(app, "callbridge_model_reconnects_total", {"provider": "simulator", "reason": "stalled"}) == 1
    finally:
        await stop_daemon(stop, task)


def _write_prompt(path, seconds=1.0, rate=16000):
    t = np.arange(int(rate * seconds)) / rate
    tone = (6000 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(tone.tobytes())


async def test_model_lost_after_answer_plays_the_tenants_announcement(tmp_path):
    prompt = tmp_path / "unavailable.wav"
    _write_prompt(prompt, seconds=1.0)
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(f"""version: 1
tenants:
  - slug: line
    numbers: ["+5511999993001"]
    unavailable_announcement: {prompt}
""")
    app, stop, task = await _start(tmp_path, tenants={"file": str(tenants)},
                                   model={"reconnect_attempts": 2, "reconnect_backoff": 0.1})
    sim = app.simulator
    try:
        caller = await _call(app, "+5511999993001")
        playing = asyncio.create_task(caller.play(np.zeros(8000 * 6, dtype=np.int16)))
        await _until(lambda: bool(sim.sessions) and bool(sim.sessions[0].session_updates))
        await asyncio.sleep(0.3)
        sim.refuse_sessions = True
        lost_at = time.monotonic()
        await sim.drop_all(1011)
        await asyncio.wait_for(caller.media_closed.wait(), 8)
        assert caller.hangup_received
        await playing
        await _until(lambda: app.switchboard.active_calls == 0)
        assert _outcomes(app) == {"model_error": 1}
        # The announcement (a 440 Hz tone here) reached the caller before the hang-up: a second
        # of loud frames after the model was lost.
        loud = [f for f in caller.received if f.at > lost_at and f.rms() > 1000]
        assert 45 <= len(loud) <= 55, len(loud)
    finally:
        await stop_daemon(stop, task)


async def test_reconnect_prompt_plays_while_the_model_is_slow_to_come_back(tmp_path):
    prompt = tmp_path / "one-moment.wav"
    _write_prompt(prompt, seconds=1.0, rate=8000)
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(f"""version: 1
tenants:
  - slug: line
    numbers: ["+5511999993002"]
    reconnect_prompt: {prompt}
""")
    app, stop, task = await _start(tmp_path, tenants={"file": str(tenants)},
                                   model={"reconnect_attempts": 3, "reconnect_backoff": 0.5,
                                          "reconnect_prompt_after": 0.2})
    sim = app.simulator
    try:
        caller = await _call(app, "+5511999993002")
        playing = asyncio.create_task(caller.play(np.zeros(8000 * 6, dtype=np.int16)))
        await _until(lambda: bool(sim.sessions) and bool(sim.sessions[0].session_updates))
        await asyncio.sleep(0.3)
        sim.refuse_sessions = True
        lost_at = time.monotonic()
        await sim.drop_all(1011)
        await asyncio.sleep(0.7)
        sim.refuse_sessions = False  # the service is back for the third attempt
        await _until(lambda: len(sim.sessions) == 2, timeout=5)
        await playing
        assert not caller.media_closed.is_set()
        await caller.hang_up()
        await _until(lambda: app.switchboard.active_calls == 0)
        assert _outcomes(app) == {"caller_hangup": 1}
        assert [r for r, _ in sim.rejections] == ["unavailable", "unavailable"]
        assert _sample(app, "callbridge_model_reconnects_total", {"provider": "simulator", "reason": "dropped"}) == 1
        # The prompt (a 440 Hz tone here) was heard once, soon after the session was lost.
        loud = [f for f in caller.received if f.at > lost_at and f.rms() > 1000]
        assert 45 <= len(loud) <= 55, len(loud)
        assert loud[0].at - lost_at < 0.5
    finally:
        await stop_daemon(stop, task)


async def test_key_pressed_during_an_outage_reaches_the_new_session_once(tmp_path):
    app, stop, task = await _start(tmp_path, model={"reconnect_backoff": 0.4})
    sim = app.simulator
    try:
        caller = await _call(app)
        playing = asyncio.create_task(caller.play(np.zeros(8000 * 8, dtype=np.int16)))
        # After the greeting, while nobody speaks.
        await _until(lambda: bool(sim.sessions) and bool(sim.sessions[0].responses)
                     and sim.sessions[0].responses[0]["status"] != "in_progress", timeout=10)
        sim.refuse_sessions = True
        await sim.drop_all(1011)
        await asyncio.sleep(0.1)
        await caller.send_dtmf("5")
        sim.refuse_sessions = False
        await _until(lambda: len(sim.sessions) == 2, timeout=5)
        await _until(lambda: bool(sim.sessions[1].response_requests), timeout=5)
        await asyncio.sleep(0.3)
        await playing
        await caller.hang_up()
        await _until(lambda: app.switchboard.active_calls == 0)
        texts = [text for role, text in _texts(sim.sessions[1]) if role == "user"]
        assert texts.count("[The caller pressed the telephone key 5]") == 1, texts
        assert len(sim.sessions[1].response_requests) == 1
        assert not sim.sessions[1].errors_sent, sim.sessions[1].errors_sent
    finally:
        await stop_daemon(stop, task)
