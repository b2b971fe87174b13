"""Logging: JSON lines name the call and tenant on every line logged while a call runs, whatever
module logs it; nothing leaks into other calls' tasks; levels apply per module."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from bridge.ops import logs


@pytest.fixture
def captured():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logs.configure("INFO", json_lines=True, levels={"callbridge.test.noisy": "ERROR"})
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    yield stream
    root.handlers[:], _ = saved
    root.setLevel(saved[1])
    logging.getLogger("callbridge.test.noisy").setLevel(logging.NOTSET)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_call_context_reaches_every_module_and_child_task(captured):
    async def call(call_id: str, tenant: str) -> None:
        logs.bind_call(call_id, tenant)
        logging.getLogger("callbridge.test.transport").info("media connected")

        async def child() -> None:
            logging.getLogger("callbridge.test.model").warning("model said %s", "hello")

        async with asyncio.TaskGroup() as tg:
            tg.create_task(child())

    async with asyncio.TaskGroup() as tg:
        tg.create_task(call("11111111-aaaa", "acme"))
        tg.create_task(call("22222222-bbbb", "globex"))
    logging.getLogger("callbridge.test.app").info("not inside a call")

    lines = _lines(captured)
    assert len(lines) == 5
    by_call = {}
    for line in lines[:4]:
        by_call.setdefault(line["call_id"], set()).add((line["tenant"], line["logger"]))
    assert by_call == {
        "11111111-aaaa": {("acme", "callbridge.test.transport"), ("acme", "callbridge.test.model")},
        "22222222-bbbb": {("globex", "callbridge.test.transport"), ("globex", "callbridge.test.model")},
    }
    assert "call_id" not in lines[4] and "tenant" not in lines[4]
    assert [line["msg"] for line in lines if line["logger"].endswith("model")] == ["model said hello"] * 2


def test_adapter_tag_is_not_repeated_in_json(captured):
    from bridge.core.call import CallLogAdapter

    adapter = CallLogAdapter(logging.getLogger("callbridge.test.call"),
                             {"call_id": "577fc940-353d-4905", "tenant": "demo"})
    adapter.info("call ended: %s", "normal")
    (line,) = _lines(captured)
    assert line["msg"] == "call ended: normal"
    assert line["call_id"] == "577fc940-353d-4905" and line["tenant"] == "demo"


def test_text_lines_carry_the_tag(captured):
    stream = io.StringIO()
    logs.configure("INFO", json_lines=False)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)

    async def inside() -> None:
        logs.bind_call("abcdef012345", "acme")
        logging.getLogger("callbridge.test.transport").info("hello")

    asyncio.run(inside())
    assert stream.getvalue().rstrip().endswith("callbridge.test.transport: [abcdef01 acme] hello")


def test_module_levels(captured):
    logging.getLogger("callbridge.test.noisy").warning("dropped")
    logging.getLogger("callbridge.test.noisy").error("kept")
    logging.getLogger("callbridge.test.other").info("kept too")
    assert [line["msg"] for line in _lines(captured)] == ["kept", "kept too"]


def test_module_levels_from_one_variable(monkeypatch):
    from bridge.settings import ConfigError, load_settings

    monkeypatch.setenv("CALLBRIDGE_LOG_LEVELS", "bridge.core.realtime=debug, tenants=WARNING")
    assert load_settings(env_file=None).log_levels == {"bridge.core.realtime": "DEBUG", "tenants": "WARNING"}
    monkeypatch.setenv("CALLBRIDGE_LOG_LEVELS", '{"bridge.core.call": "info"}')
    assert load_settings(env_file=None).log_levels == {"bridge.core.call": "INFO"}
    monkeypatch.setenv("CALLBRIDGE_LOG_LEVELS", "bridge=loud")
    with pytest.raises(ConfigError, match="unknown log level 'loud' for module 'bridge'"):
        load_settings(env_file=None)


async def test_unbind_ends_the_call_context(captured):
    token = logs.bind_call("33333333-cccc", "acme")
    logging.getLogger("callbridge.test.transport").info("during")
    logs.unbind_call(token)
    logging.getLogger("callbridge.test.transport").info("after")
    during, after = _lines(captured)
    assert during["call_id"] == "33333333-cccc"
    assert "call_id" not in after
