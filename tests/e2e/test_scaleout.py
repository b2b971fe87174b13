"""Scale-out: the shipped dialplan spreads calls over two callbridge instances and fails over.

Each channel walks asterisk-conf/extensions.conf from [from-trunk] (tests/peers/dialplan.py runs
it; FastAGI and AudioSocket go to the real daemons over loopback). Calls spread over both
instances; one instance drains while it has a call: that call goes on to its end while every new
call lands on the other instance (the draining one answers UNAVAILABLE and the dialplan moves on);
once it has stopped, calls fail over on AGISTATUS=FAILURE; with no instance left the caller hears
the no-service announcement.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bridge.app import Application
from bridge.settings import load_settings
from tests.peers.asterisk import AsteriskCaller
from tests.peers.dialplan import Channel, Dialplan
from tests.servers import start_daemon

pytestmark = pytest.mark.realtime

loop_time = time.monotonic  # AsteriskCaller stamps frames with the monotonic clock

REPO = Path(__file__).resolve().parents[2]
DIALLED = "+5511999990001"


async def _start(tmp_path: Path, name: str) -> tuple[Application, asyncio.Event, asyncio.Task[None]]:
    settings = load_settings(
        env_file=None, environ={},
        http={"host": "127.0.0.1", "port": 0}, audiosocket={"host": "127.0.0.1", "port": 0},
        agi={"host": "127.0.0.1", "port": 0},
        recording={"enabled": False, "directory": str(tmp_path / name)},
        limits={"drain_timeout": 30},
    )
    app, stop, task = await start_daemon(settings)
    return app, stop, task


def _answered(app: Application) -> float:
    return app.metrics.registry.get_sample_value("callbridge_calls_answered_total",
                                                 {"transport": "audiosocket"}) or 0.0


def _refused_draining(app: Application) -> float:
    return app.metrics.registry.get_sample_value(
        "callbridge_calls_refused_total", {"transport": "audiosocket", "reason": "draining"}) or 0.0


async def _short_call(caller: AsteriskCaller) -> None:
    """Stay on the line until the agent's greeting is heard, then hang up."""
    playing = asyncio.create_task(caller.play(np.zeros(8000 * 10, dtype=np.int16)))
    try:
        for _ in range(200):  # up to 10 s; frames arrive on the peer's reader task
            if caller.agent_frames():
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("no greeting within 10 s")
    finally:
        playing.cancel()


async def test_spread_drain_and_failover(tmp_path):
    plan = Dialplan.load(REPO / "asterisk-conf" / "extensions.conf")
    assert plan.globals["CALLBRIDGE_TARGETS"].startswith("agi://")
    a, stop_a, task_a = await _start(tmp_path, "a")
    b, stop_b, task_b = await _start(tmp_path, "b")
    assert a.agi is not None and b.agi is not None
    url = {a: f"agi://127.0.0.1:{a.agi.port}", b: f"agi://127.0.0.1:{b.agi.port}"}
    plan.globals["CALLBRIDGE_TARGETS"] = f"{url[a]}&{url[b]}"
    rng = random.Random(8)

    async def call(on_media=_short_call):
        return await Channel(plan, rng=rng, on_media=on_media).run("from-trunk", DIALLED)

    try:
        # 1. Calls spread over both instances.
        spread = Counter()
        for _ in range(8):
            result = await call()
            assert result.variables["CALLBRIDGE_STATUS"] == "DONE", result
            assert len(result.agi_calls) == 1
            spread[result.agi_calls[0][0]] += 1
        assert spread[url[a]] >= 2 and spread[url[b]] >= 2, spread
        assert _answered(a) + _answered(b) == 8

        # 2. A long call on A; then A drains.
        long_call_started = asyncio.Event()
        release = asyncio.Event()
        long_callers: list[AsteriskCaller] = []

        async def long_media(caller: AsteriskCaller) -> None:
            long_callers.append(caller)
            long_call_started.set()
            playing = asyncio.create_task(caller.play(np.zeros(8000 * 60, dtype=np.int16)))
            await release.wait()
            playing.cancel()

        plan_a_first = Dialplan(plan.contexts, dict(plan.globals, CALLBRIDGE_TARGETS=url[a]))
        long_channel = asyncio.create_task(
            Channel(plan_a_first, on_media=long_media).run("from-trunk", DIALLED))
        await asyncio.wait_for(long_call_started.wait(), 10)
        await asyncio.sleep(0.5)
        assert a.switchboard is not None and a.switchboard.active_calls == 1
        stop_a.set()
        await asyncio.sleep(0)  # the app's run() wakes on the trigger and starts draining
        assert a.switchboard.draining
        drain_started = loop_time()

        # New calls during the drain all end up on B, whichever instance the dialplan tries first.
        answered_b = _answered(b)
        tried_a_first = 0
        for _ in range(6):
            result = await call()
            assert result.variables["CALLBRIDGE_STATUS"] == "DONE", result
            assert result.agi_calls[-1] == (url[b], "SUCCESS")
            if result.agi_calls[0][0] == url[a]:
                tried_a_first += 1
                assert len(result.agi_calls) == 2
        assert tried_a_first >= 1, "the seeded RNG never tried the draining instance first"
        assert _refused_draining(a) == tried_a_first
        assert _answered(b) == answered_b + 6
        assert not task_a.done(), "A stopped while its call was up"
        assert a.switchboard.active_calls == 1

        # The call on A was flowing all along (50 frames a second toward the caller); it ends,
        # then A stops by itself.
        drain_seconds = loop_time() - drain_started
        (long_caller,) = long_callers
        during = [f for f in long_caller.received if f.at >= drain_started]
        # Six other calls share this one process (two daemons, the simulator, the callers), so
        # allow for a loaded loop; what matters is that the call never stopped.
        assert len(during) >= 40 * (drain_seconds - 0.2), (len(during), drain_seconds)
        gaps = np.diff([f.at for f in during])
        assert gaps.max() < 0.3, gaps.max()
        assert not long_caller.media_closed.is_set()
        release.set()
        long_result = await asyncio.wait_for(long_channel, 15)
        assert long_result.variables["CALLBRIDGE_STATUS"] == "DONE"
        await asyncio.wait_for(task_a, 10)

        # 3. A is gone: FastAGI cannot connect, the dialplan fails over on AGISTATUS=FAILURE.
        failures = 0
        for _ in range(4):
            result = await call()
            assert result.variables["CALLBRIDGE_STATUS"] == "DONE"
            assert result.agi_calls[-1] == (url[b], "SUCCESS")
            failures += sum(1 for target, status in result.agi_calls if status == "FAILURE")
        assert failures >= 1

        # 4. No instance left: the announcement, then hang-up.
        stop_b.set()
        await asyncio.wait_for(task_b, 10)
        result = await call()
        assert [status for _, status in result.agi_calls] == ["FAILURE", "FAILURE"]
        assert result.played == ["ss-noservice"]
    finally:
        for stop in (stop_a, stop_b):
            stop.set()
        await asyncio.wait_for(asyncio.gather(task_a, task_b, return_exceptions=True), 30)
