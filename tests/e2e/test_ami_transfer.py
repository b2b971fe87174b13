"""A FastAGI + AudioSocket call transferred by AMI Redirect (ami.redirect_transfers), and the
fallback to continuing the AGI session when the Redirect is refused."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bridge.app import Application
from bridge.settings import load_settings
from tests.peers.ami_server import AmiServer
from tests.peers.asterisk import AsteriskCaller

pytestmark = pytest.mark.realtime

DEMO_NUMBER = "+5511999990001"
CHANNEL = "PJSIP/trunk-00000001"  # what the test caller reports as agi_channel


async def _call_and_press_zero(app: Application) -> AsteriskCaller:
    caller = AsteriskCaller(app.agi.port, DEMO_NUMBER)
    await caller.dial()
    await caller.connect_media()
    playing = asyncio.create_task(caller.play(np.zeros(8000 * 14, dtype=np.int16)))
    await asyncio.sleep(1.0)
    await caller.send_dtmf("0")
    await asyncio.wait_for(caller.agi_done.wait(), 20)
    playing.cancel()
    await caller.close()
    return caller


@pytest.mark.parametrize("redirect_works", [True, False])
async def test_transfer_by_ami_redirect(tmp_path, caplog, redirect_works):
    ami = AmiServer(secret="ami-secret")
    await ami.start()
    if redirect_works:
        ami.channels.add(CHANNEL)
    settings = load_settings(
        env_file=None, environ={},
        http={"host": "127.0.0.1", "port": 0},
        audiosocket={"host": "127.0.0.1", "port": 0},
        agi={"host": "127.0.0.1", "port": 0},
        recording={"enabled": False, "directory": str(tmp_path / "rec")},
        ami={"enabled": True, "host": "127.0.0.1", "port": ami.port, "username": "callbridge",
             "secret": "ami-secret", "redirect_transfers": True},
    )
    app = Application(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop.wait()))
    try:
        await asyncio.wait_for(app.wait_started(), 20)
        await app.ami.wait_logged_in(5)
        caller = await _call_and_press_zero(app)
        redirects = [a for a in ami.actions if a.get("Action") == "Redirect"]
        assert len(redirects) == 1
        assert {k: redirects[0][k] for k in ("Channel", "Context", "Exten", "Priority")} == {
            "Channel": CHANNEL, "Context": "from-internal", "Exten": "2000", "Priority": "1"}
        assert caller.agi.variables["CALLBRIDGE_STATUS"] == "TRANSFER"
        set_context = [c for c in caller.agi.commands if c.startswith("SET CONTEXT")]
        if redirect_works:
            assert set_context == [], "the AGI session was also moved after a successful Redirect"
        else:
            # Redirect refused: the AGI session carries the transfer out instead.
            assert set_context == ['SET CONTEXT "from-internal"']
            assert 'SET EXTENSION "2000"' in caller.agi.commands
        assert app.metrics.registry.get_sample_value(
            "callbridge_calls_total", {"transport": "audiosocket", "outcome": "transferred"}) == 1
        # The PBX's Hangup event names the cause; it is logged against the call.
        caplog.set_level("INFO", logger="bridge.asterisk.agi")
        ami.emit(Event="Hangup", Channel=CHANNEL, Cause="16", **{"Cause-txt": "Normal Clearing"})
        async with asyncio.timeout(5):
            while "PBX hangup cause 16 (Normal Clearing)" not in caplog.text:
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await ami.stop()
