"""The dialled number picks the tenant end to end: FastAGI -> tenant directory -> the model's
session.update, in the spellings an Asterisk trunk hands over."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bridge.settings import load_settings
from tenants.file import FileDirectory  # noqa: F401  (the embedded default backend)
from tests.peers.asterisk import AsteriskCaller
from tests.servers import start_daemon

pytestmark = pytest.mark.realtime


async def _session_for(app, dialled: str):
    before = len(app.simulator.sessions)
    caller = AsteriskCaller(app.agi.port, dialled)
    await caller.dial()
    await caller.connect_media()
    async with asyncio.timeout(10):
        while len(app.simulator.sessions) == before or not app.simulator.sessions[-1].session_updates:
            await caller.play(np.zeros(160 * 5, dtype=np.int16))
    await caller.hang_up()
    await asyncio.wait_for(caller.agi_done.wait(), 5)
    assert len(app.simulator.sessions) == before + 1
    return app.simulator.sessions[-1]


async def test_two_numbers_two_agents(tmp_path):
    settings = load_settings(
        env_file=None, environ={},
        http={"host": "127.0.0.1", "port": 0}, audiosocket={"host": "127.0.0.1", "port": 0},
        agi={"host": "127.0.0.1", "port": 0}, recording={"enabled": False, "directory": str(tmp_path)},
    )
    app, stop, task = await start_daemon(settings)
    try:
        demo = await _session_for(app, "sip:+5511999990001@pbx.example.com;user=phone")
        pizza = await _session_for(app, "(11) 99999-0002")
        block = await _session_for(app, "011999990142")  # inside the +55119999901* DID block
        demo_cfg, pizza_cfg, block_cfg = demo.session_config, pizza.session_config, block.session_config
        assert demo_cfg["audio"]["output"]["voice"] == "marin"
        assert pizza_cfg["audio"]["output"]["voice"] == "cedar"
        assert "demonstração do callbridge" in demo_cfg["instructions"]
        assert "Pizzaria Bella Napoli" in pizza_cfg["instructions"]
        assert pizza_cfg["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
        assert pizza_cfg["audio"]["output"]["speed"] == pytest.approx(1.1)
        # The clinic runs G.711 passthrough with the model's own far-field noise reduction.
        assert block_cfg["audio"]["input"]["format"]["type"] == "audio/pcmu"
        assert block_cfg["audio"]["input"]["noise_reduction"] == {"type": "far_field"}
        assert "Clínica Vida" in block_cfg["instructions"]
        # The greeting each tenant configured was asked for first.
        assert "Bella Napoli" in str(pizza.response_requests[0])
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
