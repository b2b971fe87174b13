"""Keypad digits pressed while the agent talks, over AudioSocket to the built-in simulator: the
digit is answered (after the response, or at once when the tenant says "interrupt"), the model is
never asked for a second response while one is in progress, and a digit can make the agent end
the call through end_call."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from bridge.records.callstore import CallQuery
from tests.conftest import loopback_settings
from tests.peers.asterisk import AsteriskCaller
from tests.servers import start_daemon, stop_daemon

pytestmark = pytest.mark.realtime

QUEUE_NUMBER = "+5511999990301"
INTERRUPT_NUMBER = "+5511999990302"
TRANSFER_NUMBER = "+5511999990303"


async def start(tmp_path):
    tenants = [
        {"slug": "queued", "numbers": [QUEUE_NUMBER], "greeting": "Hello",
         "simulator": {"actions": [{"tool": "end_call", "on_digit": "9"}]}},
        {"slug": "interrupting", "numbers": [INTERRUPT_NUMBER], "greeting": "Hello",
         "dtmf_during_response": "interrupt",
         "simulator": {"actions": [{"tool": "end_call", "on_digit": "9"}]}},
        {"slug": "transferring", "numbers": [TRANSFER_NUMBER], "greeting": "Hello",
         "transfer_targets": [{"name": "sales", "destination": "2000", "context": "from-internal"}],
         "simulator": {"actions": [{"tool": "transfer_call", "on_digit": "1", "arguments": {"target": "sales"}}]}},
    ]
    path = tmp_path / "tenants.yaml"
    path.write_text(json.dumps({"tenants": tenants}), encoding="utf-8")
    return await start_daemon(loopback_settings(tmp_path, record=True, tenants={"file": str(path)}))


async def until(predicate, within: float = 15.0) -> None:
    # What the caller hears has no event to wait on: poll it.
    async with asyncio.timeout(within):
        while not predicate():
            await asyncio.sleep(0.02)


async def keypad_call(app, number: str):
    caller = AsteriskCaller(app.agi.port, number)
    await caller.dial()
    await caller.connect_media()
    talking = asyncio.create_task(caller.play(np.zeros(8000 * 30, dtype=np.int16)))
    # One second into the greeting, the caller presses 5.
    await until(lambda: len(caller.agent_frames()) >= 50)
    await caller.send_dtmf("5")
    session = app.simulator.sessions[-1]
    await until(lambda: any(r["kind"] == "keypad" and r["status"] == "completed" for r in session.responses))
    await caller.send_dtmf("9")
    await asyncio.wait_for(caller.media_closed.wait(), 15)
    talking.cancel()
    await caller.close()
    await asyncio.wait_for(app.archive.wait_idle(), 15)
    record = (await app.archive.search(CallQuery())).calls[0]
    transcript = [json.loads(line) for line in
                  app.archive.layout.path(record.path, ".jsonl").read_text().splitlines()]
    return caller, session, record, transcript


async def test_digit_during_the_greeting_is_answered_after_it(tmp_path):
    app, stop, task = await start(tmp_path)
    try:
        caller, session, record, transcript = await keypad_call(app, QUEUE_NUMBER)
        # No "Conversation already has an active response in progress".
        assert session.errors_sent == []
        kinds = [(r["kind"], r["status"]) for r in session.responses]
        assert kinds == [("greeting", "completed"), ("keypad", "completed"), ("goodbye", "completed")]
        greeting, keypad, _ = session.responses
        # The greeting played to its end; the digit was answered after it.
        assert keypad["created_at"] >= greeting["done_at"]
        assert session.cancels == [] and session.truncates == []
        digits = [i["content"][0]["text"] for i in session.items_created if i.get("type") == "message"]
        assert digits == ["[The caller pressed the telephone key 5]", "[The caller pressed the telephone key 9]"]
        agent_lines = [e["text"] for e in transcript if e["role"] == "agent"]
        assert agent_lines[1:] == ["[you pressed 5]", "[goodbye]"]
        assert record.outcome == "agent_hangup"
        assert caller.hangup_received or caller.media_closed.is_set()
    finally:
        await stop_daemon(stop, task)


async def test_digit_interrupts_the_greeting_when_the_tenant_says_so(tmp_path):
    app, stop, task = await start(tmp_path)
    try:
        _caller, session, record, transcript = await keypad_call(app, INTERRUPT_NUMBER)
        assert session.errors_sent == []
        kinds = [(r["kind"], r["status"]) for r in session.responses]
        assert kinds == [("greeting", "cancelled"), ("keypad", "completed"), ("goodbye", "completed")]
        # Cut where the caller was: about a second into the 4.4 s greeting.
        assert len(session.truncates) == 1 and session.truncates[0]["accepted"]
        assert 900 <= session.truncates[0]["audio_end_ms"] <= 2500
        assert [c["cancelled_response_id"] for c in session.cancels] == [session.responses[0]["id"]]
        agent = [e for e in transcript if e["role"] == "agent"]
        assert agent[0].get("interrupted") is True
        assert [e["text"] for e in agent[1:]] == ["[you pressed 5]", "[goodbye]"]
        assert record.outcome == "agent_hangup"
        assert record.barge_ins == 1
    finally:
        await stop_daemon(stop, task)


async def test_digit_cue_makes_the_agent_transfer_the_call(tmp_path):
    app, stop, task = await start(tmp_path)
    try:
        caller = AsteriskCaller(app.agi.port, TRANSFER_NUMBER)
        await caller.dial()
        await caller.connect_media()
        talking = asyncio.create_task(caller.play(np.zeros(8000 * 30, dtype=np.int16)))
        await until(lambda: len(caller.agent_frames()) >= 50)
        await caller.send_dtmf("1")
        await asyncio.wait_for(caller.agi_done.wait(), 20)
        talking.cancel()
        await caller.close()
        session = app.simulator.sessions[-1]
        assert session.errors_sent == []
        assert [(r["kind"], r["status"]) for r in session.responses] == [
            ("greeting", "completed"), ("goodbye", "completed")]
        # FastAGI carries the transfer out: the dialplan continues at the target.
        assert caller.agi.variables["CALLBRIDGE_STATUS"] == "TRANSFER"
        assert 'SET CONTEXT "from-internal"' in caller.agi.commands
        assert 'SET EXTENSION "2000"' in caller.agi.commands
        await asyncio.wait_for(app.archive.wait_idle(), 15)
        record = (await app.archive.search(CallQuery())).calls[0]
        assert record.outcome == "transferred" and record.transfer_target == "sales"
    finally:
        await stop_daemon(stop, task)
