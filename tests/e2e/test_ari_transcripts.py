"""callbridge against exchanges recorded from a real Asterisk 22.10.1: every request it makes must
be the one it made there, in the same order, given the same events (``tests/peers/ari_replay.py``).

The transcripts cover an RTP call ended by the caller, a caller hanging up while the external
media channel enters Stasis (set-up must stop without bridging it and remove what exists), a
chan_websocket call, and "press 0 for a human" transfers over RTP and AudioSocket."""

from __future__ import annotations

import asyncio

import pytest

from bridge.app import Application
from bridge.settings import load_settings
from tests.peers.ari_replay import TranscriptReplay, load

pytestmark = pytest.mark.realtime

CASES = {
    "rtp_call": {"transport": "rtp", "format": "ulaw"},
    "rtp_hangup_during_set_up": {"transport": "rtp", "format": "ulaw"},
    "websocket_call": {"transport": "websocket", "format": "slin16"},
    "rtp_dtmf_transfer": {"transport": "rtp", "format": "ulaw"},
    "audiosocket_dtmf_transfer": {"transport": "audiosocket", "format": "slin16"},
}


@pytest.mark.parametrize("name", list(CASES))
async def test_daemon_repeats_the_recorded_exchange(tmp_path, name):
    replay = TranscriptReplay(load(name))
    await replay.start()
    settings = load_settings(
        env_file=None,
        environ={},
        http={"host": "127.0.0.1", "port": 0},
        audiosocket={"host": "127.0.0.1", "port": 0},
        agi={"host": "127.0.0.1", "port": 0},
        recording={"enabled": False, "directory": str(tmp_path / "rec")},
        ari={"enabled": True, "url": replay.url, "username": "callbridge", "password": "secret",
             "app": replay.app, "rtp_host": "127.0.0.1", "rtp_port_min": 46000, "rtp_port_max": 46999,
             **CASES[name]},
    )
    app = Application(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop.wait()))
    try:
        await asyncio.wait_for(app.wait_started(), 20)
        done = asyncio.create_task(replay.finished.wait())
        await asyncio.wait({done, task}, timeout=40, return_when=asyncio.FIRST_COMPLETED)
        assert replay.mismatches == [], replay.mismatches
        assert replay.finished.is_set(), f"stopped after {len(replay.requests)} requests"
        async with asyncio.timeout(5):
            while app.stasis.active or app.switchboard.calls():
                await asyncio.sleep(0.02)
        if name == "rtp_hangup_during_set_up":
            # The session opened before the answer was closed without a call on it.
            async with asyncio.timeout(5):
                while any(s.closed_at is None for s in app.simulator.sessions):
                    await asyncio.sleep(0.02)
            assert all(not s.session_updates and not s.input_audio_ms for s in app.simulator.sessions), \
                "a caller who left during set-up reached the model"
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await replay.stop()
