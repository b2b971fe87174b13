"""Scripted tool calls in the simulator, through the real SDK: a keypad cue speaks a goodbye and
calls the tool in one response (every event checked against the SDK's models), an unscripted digit
gets its own reply, and an unusable script is refused."""

from __future__ import annotations

import json

import pytest
from openai import AsyncOpenAI

from bridge.simulator import SimulatorServer
from bridge.simulator.script import Script, keypad_digit
from sip.realtime_session import InvalidRequest
from tests.bridge.simulator.test_simulator import EVENT_MODELS, Peer, _audio_of, _types

END_CALL = {"type": "function", "name": "end_call", "description": "Hang up",
            "parameters": {"type": "object", "properties": {"reason": {"type": "string"}}}}


def test_keypad_wording_and_script_parsing():
    assert keypad_digit("[The caller pressed the telephone key 5]") == "5"
    assert keypad_digit("DTMF #") == "#" and keypad_digit("digit *") == "*"
    assert keypad_digit("the keys 12") is None and keypad_digit("no digits here") is None
    script = Script.parse(json.dumps({"actions": [{"tool": "end_call", "on_digit": "9"},
                                                  {"tool": "end_call", "after_turn": 2}]}))
    assert script.on_digit("9") is not None and script.on_digit("8") is None
    assert script.after_turn(2) is not None and script.silence() is None
    for bad in ("not json", "[]", '{"actions": [{"tool": "x"}]}', '{"actions": [{"tool": "x", "after_turn": 0}]}',
                '{"actions": [{"tool": "bad name", "on_digit": "1"}]}'):
        with pytest.raises(InvalidRequest):
            Script.parse(bad)


async def _peer(server: SimulatorServer, script: dict | str) -> tuple[AsyncOpenAI, object]:
    client = AsyncOpenAI(api_key="test", websocket_base_url=server.url, max_retries=0)
    query = script if isinstance(script, str) else json.dumps(script)
    return client, client.realtime.connect(model="gpt-realtime", extra_query={"script": query})


async def test_digit_cue_says_goodbye_then_calls_the_tool_in_one_response():
    async with SimulatorServer(pace=20.0) as server:
        client, manager = await _peer(server, {"actions": [{"tool": "end_call", "on_digit": "9",
                                                            "arguments": {"reason": "done"}}]})
        async with manager as conn:
            peer = Peer(conn)
            await peer.until("session.created")
            await conn.session.update(session={"type": "realtime", "tools": [END_CALL]})
            await peer.until("session.updated")
            for digit, expected in (("5", "[you pressed 5]"), ("9", "[goodbye]")):
                await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": f"[The caller pressed the telephone key {digit}]"}]})
                await peer.until("conversation.item.done")
                await conn.response.create()
                events = await peer.until("response.done")
                assert all(e["type"] in EVENT_MODELS for e in events)
                assert len(_audio_of(events)) > 0
                assert events[-1]["response"]["output"][0]["content"][0]["transcript"] == expected
            # The goodbye response: audio item, then the function call as output item 1.
            types = _types(events)
            assert types.index("response.output_audio.done") < types.index("response.function_call_arguments.done")
            output = events[-1]["response"]["output"]
            assert [o["type"] for o in output] == ["message", "function_call"]
            assert output[1]["name"] == "end_call" and json.loads(output[1]["arguments"]) == {"reason": "done"}
            done = [e for e in events if e["type"] == "response.output_item.done"]
            assert [e["output_index"] for e in done] == [0, 1]
        await client.close()
        record = server.sessions[-1]
        assert [r["kind"] for r in record.responses] == ["keypad", "goodbye"]
        assert record.script == {"actions": [{"tool": "end_call", "on_digit": "9", "arguments": {"reason": "done"}}]}


async def test_a_cue_for_an_undeclared_tool_only_talks():
    async with SimulatorServer(pace=20.0) as server:
        client, manager = await _peer(server, {"actions": [{"tool": "end_call", "on_digit": "9"}]})
        async with manager as conn:
            peer = Peer(conn)
            await peer.until("session.created")
            await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "DTMF 9"}]})
            await peer.until("conversation.item.done")
            await conn.response.create()
            events = await peer.until("response.done")
            assert "response.function_call_arguments.done" not in _types(events)
            assert events[-1]["response"]["output"][0]["content"][0]["transcript"] == "[you pressed 9]"
        await client.close()


async def test_an_unusable_script_closes_the_session_with_an_error():
    async with SimulatorServer() as server:
        client, manager = await _peer(server, '{"actions": [{"tool": "end_call"}]}')
        async with manager as conn:
            event = json.loads(await conn.recv_bytes())
            assert event["type"] == "error" and event["error"]["param"] == "script.actions[0]"
            with pytest.raises(Exception):  # noqa: B017  (the SDK raises the library's close error)
                await conn.recv_bytes()
        await client.close()
        assert server.rejections == [("invalid_script", "/v1/realtime")]
        assert server.sessions == []
