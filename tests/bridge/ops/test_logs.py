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


def test_voice_live_sdk_frames_stay_out_of_debug_logs():
    # azure-ai-voicelive logs every received frame (audio included) at DEBUG.
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logs.configure("DEBUG")
        assert logging.getLogger("azure.ai.voicelive.aio._patch").getEffectiveLevel() == logging.WARNING
        logs.configure("DEBUG", levels={"azure": "DEBUG"})  # unless asked for by name
        assert logging.getLogger("azure.ai.voicelive.aio._patch").getEffectiveLevel() == logging.DEBUG
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        logging.getLogger("azure").setLevel(logging.NOTSET)

# ----------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("> Authorization: Bearer sk-abcdefghijklmnopqrstuvwx", "sk-abcdefghijklmnopqrstuvwx"),
        ("> api-key: 0123456789abcdef0123", "0123456789abcdef0123"),
        ("Request options: {'headers': {'api-key': 'azkey-0123456789'}}", "azkey-0123456789"),
        ("[(b'authorization', b'Bearer tok-0123456789')]", "tok-0123456789"),
        ("> X-Twilio-Signature: 6KH+pWl2QfdO72KcUCqUCYiwrSI=", "6KH+pWl2QfdO72KcUCqUCYiwrSI="),
        ("> Sec-WebSocket-Protocol: callbridge, callbridge.bearer.media-tok-0123456789", "media-tok-0123456789"),
        ('"GET /ws/audio/1001?token=media-tok-0123456789&from=1 HTTP/1.1" 101', "media-tok-0123456789"),
        ("GET /api/recordings/x.wav?exp=1&sig=abcdef0123456789abcdef", "abcdef0123456789abcdef"),
        ("connecting to postgresql://callbridge:pg-pass-0123@db:5432/x", "pg-pass-0123"),
        ("error: invalid key sk-proj-ABCDEFGHIJKLMNOPQRSTUV given", "ABCDEFGHIJKLMNOPQRSTUV"),
        ("media_token='acme-media-token-0123456789'", "acme-media-token-0123456789"),
    ],
)
def test_credentials_are_masked_wherever_a_library_puts_them(line: str, secret: str) -> None:
    masked = logs.Redactor().redact(line)
    assert secret not in masked
    assert logs.MASK in masked


def test_configured_secret_values_are_masked_anywhere_and_ordinary_text_is_not() -> None:
    redactor = logs.Redactor()
    redactor.register(["hunter2-but-longer", None, "abc"])  # too short to mask safely: ignored
    assert redactor.redact("the value hunter2-but-longer leaked") == f"the value {logs.MASK} leaked"
    ordinary = "call abc12345 from ****7777 to +5511999990001 ended: caller_hangup after 12.3 s"
    assert redactor.redact(ordinary) == ordinary


def test_the_root_handler_masks_records_of_every_logger() -> None:
    from bridge.settings import load_settings

    settings = load_settings(env_file=None, environ={}, model={"api_key": "sk-test-configured-0123456789"})
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("DEBUG", False, {"websockets.client": "DEBUG"}, settings.secret_values())
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        logging.getLogger("websockets.client").debug("> %s: %s", "Authorization",
                                                     "Bearer sk-test-configured-0123456789")
        logging.getLogger("some.library").warning("failed with key %s", "sk-test-configured-0123456789")
        try:
            raise RuntimeError("url wss://x/?api-key=sk-test-configured-0123456789")
        except RuntimeError:
            logging.getLogger("bridge.x").error("boom", exc_info=True)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        logging.getLogger("websockets.client").setLevel(logging.NOTSET)
    out = stream.getvalue()
    assert "sk-test-configured" not in out
    assert out.count(logs.MASK) >= 3 and "Traceback" in out
