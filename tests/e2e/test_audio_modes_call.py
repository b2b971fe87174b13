"""Every noise-suppression mode and the G.711 passthrough mode is reachable from tenant config,
end to end: the tenants file picks the mode, the call builds that chain, and the model is asked
for its own noise reduction only in ``model`` mode."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bridge.settings import load_settings
from tests.conftest import simulator_model
from tests.peers.asterisk import AsteriskCaller
from tests.servers import start_daemon

pytestmark = pytest.mark.realtime

TENANTS = """
version: 1
tenants:
  - {slug: off-mode, numbers: ["+5511999991001"], noise_suppression: "off"}
  - {slug: speex-mode, numbers: ["+5511999991002"], noise_suppression: speex, noise_suppression_level_db: -30}
  - {slug: webrtc-mode, numbers: ["+5511999991003"], noise_suppression: webrtc}
  - {slug: model-mode, numbers: ["+5511999991004"], noise_suppression: model, model_noise_reduction: near_field}
  - {slug: pcmu-mode, numbers: ["+5511999991005"], audio_mode: passthrough, noise_suppression: "off"}
  - {slug: adaptive-mode, numbers: ["+5511999991006"], noise_suppression: adaptive}
  - {slug: default-mode, numbers: ["+5511999991007"]}
"""

EXPECTED = {
    "+5511999991001": ("off", None, "audio/pcm"),
    "+5511999991002": ("speex", None, "audio/pcm"),
    "+5511999991003": ("webrtc", None, "audio/pcm"),
    "+5511999991004": ("model", {"type": "near_field"}, "audio/pcm"),
    "+5511999991005": (None, None, "audio/pcmu"),
    "+5511999991006": ("adaptive", None, "audio/pcm"),
    "+5511999991007": ("adaptive", None, "audio/pcm"),
}


@pytest.mark.both_dialects
async def test_each_mode_from_tenant_config(tmp_path):
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(TENANTS)
    settings = load_settings(
        env_file=None, environ={},
        http={"host": "127.0.0.1", "port": 0}, audiosocket={"host": "127.0.0.1", "port": 0},
        agi={"host": "127.0.0.1", "port": 0}, tenants={"file": str(tenants)},
        recording={"enabled": False, "directory": str(tmp_path / "rec")},
        model=simulator_model(),
    )
    app, stop, task = await start_daemon(settings)
    try:
        for number, (suppression, model_nr, fmt) in EXPECTED.items():
            sessions_before = len(app.simulator.sessions)
            caller = AsteriskCaller(app.agi.port, number)
            await caller.dial()
            await caller.connect_media()
            async with asyncio.timeout(10):
                while (len(app.simulator.sessions) == sessions_before
                       or not app.simulator.sessions[-1].session_updates or not app.switchboard.calls()):
                    await caller.play(np.zeros(160 * 5, dtype=np.int16))
            (call,) = app.switchboard.calls()
            if suppression is None:
                assert call.passthrough and call.inbound is None
            else:
                assert call.inbound is not None and call.inbound.suppression == suppression
                if suppression in ("adaptive", "speex", "webrtc"):
                    assert call.inbound.suppressor is not None
                else:
                    assert call.inbound.suppressor is None
            # Caller audio keeps flowing to the model in every mode.
            before = app.simulator.sessions[-1].input_audio_ms
            await caller.play(np.zeros(8000 // 2, dtype=np.int16))
            await asyncio.sleep(0.1)
            assert app.simulator.sessions[-1].input_audio_ms > before
            audio_in = app.simulator.sessions[-1].session_config["audio"]["input"]
            assert audio_in["noise_reduction"] == model_nr
            assert audio_in["format"]["type"] == fmt
            await caller.hang_up()
            await asyncio.wait_for(caller.agi_done.wait(), 5)
            async with asyncio.timeout(5):
                while app.switchboard.calls():
                    await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
