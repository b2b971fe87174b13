"""Each way a call can end ends it cleanly: caller hangup, model disconnect, daemon shutdown,
the model failing to connect, and the maximum call duration."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.conftest import loopback_settings
from tests.peers.asterisk import AsteriskCaller
from tests.servers import start_daemon, until

pytestmark = pytest.mark.realtime

DEMO_NUMBER = "+5511999990001"


def _settings(tmp_path, **extra):
    return loopback_settings(tmp_path, **extra)


async def _start(settings):
    app, stop, task = await start_daemon(settings)
    return app, stop, task


async def _call(app):
    caller = AsteriskCaller(app.agi.port, DEMO_NUMBER)
    await caller.dial()
    await caller.connect_media()
    return caller


def _outcomes(app):
    out = {}
    for metric in app.metrics.registry.collect():
        if metric.name == "callbridge_calls":
            for sample in metric.samples:
                if sample.name == "callbridge_calls_total" and sample.value:
                    out[sample.labels["outcome"]] = sample.value
    return out


async def test_caller_hangup_closes_model_session(tmp_path):
    app, stop, task = await _start(_settings(tmp_path))
    try:
        caller = await _call(app)
        await caller.play(np.zeros(8000, dtype=np.int16))
        await caller.hang_up()
        await asyncio.wait_for(caller.agi_done.wait(), 5)
        await until(lambda: app.simulator.sessions and app.simulator.sessions[-1].closed_at is not None)
        await until(lambda: app.switchboard.active_calls == 0)
        assert _outcomes(app).get("caller_hangup") == 1
        assert caller.agi.variables["CALLBRIDGE_STATUS"] == "DONE"
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_model_disconnect_hangs_up_caller(tmp_path):
    app, stop, task = await _start(_settings(tmp_path))
    try:
        caller = await _call(app)
        playing = asyncio.create_task(caller.play(np.zeros(8000 * 5, dtype=np.int16)))
        await until(lambda: bool(app.simulator.sessions))
        await asyncio.sleep(0.5)
        await app.simulator.drop_all(1011)
        await asyncio.wait_for(caller.media_closed.wait(), 5)
        assert caller.hangup_received, "the caller was not sent an AudioSocket HANGUP"
        await playing
        await until(lambda: app.switchboard.active_calls == 0)
        assert _outcomes(app).get("model_error") == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_model_unreachable_hangs_up_caller(tmp_path):
    # A model endpoint where nothing listens: the call must end at once with model_error.
    settings = _settings(tmp_path, model={"provider": "openai", "api_key": "sk-test",
                                          "websocket_base_url": "ws://127.0.0.1:9/v1",
                                          "connect_timeout": 3})
    app, stop, task = await _start(settings)
    try:
        caller = await _call(app)
        await asyncio.wait_for(caller.media_closed.wait(), 5)
        assert caller.hangup_received
        await until(lambda: _outcomes(app).get("model_error") == 1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_shutdown_ends_calls_after_drain_timeout(tmp_path):
    app, stop, task = await _start(_settings(tmp_path, limits={"drain_timeout": 0.5}))
    caller = await _call(app)
    playing = asyncio.create_task(caller.play(np.zeros(8000 * 10, dtype=np.int16)))
    await until(lambda: app.switchboard.active_calls == 1)
    stop.set()
    await asyncio.wait_for(task, 10)
    await asyncio.wait_for(caller.media_closed.wait(), 5)
    assert caller.hangup_received
    assert app.simulator.sessions[-1].closed_at is not None
    assert _outcomes(app).get("shutdown") == 1
    await playing
    await caller.close()
    # Nothing of the call outlives the daemon.
    leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()
                 and "bridge" in repr(t.get_coro())]
    assert leftovers == []


async def test_max_call_duration(tmp_path):
    app, stop, task = await _start(_settings(tmp_path, limits={"max_call_duration": 1.0}))
    try:
        caller = await _call(app)
        await caller.play(np.zeros(8000 * 2, dtype=np.int16))
        await asyncio.wait_for(caller.media_closed.wait(), 5)
        assert caller.hangup_received
        await until(lambda: _outcomes(app).get("timeout") == 1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
