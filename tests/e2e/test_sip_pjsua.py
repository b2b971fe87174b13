"""The SIP trunk with a pjsua2 caller in its own process: a G.722 call wideband end to end, and a
REFER transfer reported by the caller's NOTIFYs."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bridge.records.callstore import CallQuery
from tests.conftest import load_wav, loopback_settings
from tests.peers.baresip import read_wav, write_wav
from tests.peers.pjsua import PjsuaCaller, heard_greeting
from tests.servers import start_daemon, stop_daemon, until

pytest.importorskip("pjsua2", reason="pjsua2-python has wheels for Linux x86-64 only")
pytestmark = pytest.mark.realtime

DEMO = "5511999990001"  # the example tenant: transfer target "2000", DTMF "0" transfers
LANGUAGE = "pt"  # the example tenant speaks Portuguese: the simulator greets in it
WIDE_HZ = 16000
FRAME = WIDE_HZ // 50


def _settings(tmp_path: Path, rtp_port: int) -> Any:
    return loopback_settings(tmp_path, record=True, sip={
        "enabled": True, "host": "127.0.0.1", "port": 0, "rtp_port": rtp_port, "rtp_port_range": 100})


def _band_share(x: np.ndarray, rate_hz: int, low: float, high: float) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate_hz)
    return float(spectrum[(freqs >= low) & (freqs < high)].sum() / spectrum.sum())


async def test_g722_call_is_wideband_end_to_end(tmp_path, fixtures_dir):
    speech, rate = load_wav(fixtures_dir / "speech" / "real_cmu_16k.wav")
    assert rate == WIDE_HZ
    mic = np.concatenate([np.zeros(3 * WIDE_HZ, np.int16), speech[: 4 * WIDE_HZ], np.zeros(WIDE_HZ, np.int16)])
    write_wav(tmp_path / "microphone.wav", mic, WIDE_HZ)
    app, stop, task = await start_daemon(_settings(tmp_path, 41400))
    caller = PjsuaCaller()
    try:
        await caller.start("--uri", f"sip:{DEMO}@127.0.0.1:{app.sip.port}", "--codec", "G722",
                           "--play", str(tmp_path / "microphone.wav"), "--record", str(tmp_path / "heard.wav"),
                           "--seconds", "9", "--rtp-port", "41600")
        media = await caller.wait_for("media")
        assert (media["codec"], media["rate_hz"]) == ("G722", WIDE_HZ), media
        await until(lambda: app.switchboard.active_calls == 1, within=10)
        call = app.switchboard.calls()[0]
        assert call.info.transport == "sip" and call.caller_format.rate_hz == WIDE_HZ
        # The caller hangs up when its time is up.
        assert await caller.wait_closed() == 0, caller.events
        assert caller.named("disconnected"), caller.events
        await until(lambda: app.switchboard.active_calls == 0, within=10)
        assert app.simulator.sessions[-1].input_audio_ms > 5000
        await asyncio.wait_for(app.archive.wait_idle(), 10)
        page = await app.archive.search(CallQuery())
        record = next(c for c in page.calls if c.transport == "sip")
        wav = await app.archive.local_file(record, ".wav")
        assert wav is not None
    finally:
        await caller.close()
        await stop_daemon(stop, task)

    # The call's recording is stereo at the leg's 16 kHz, and the caller's channel carries the
    # caller's speech above 4 kHz (a narrowband leg would have nothing there).
    with wave.open(str(wav)) as w:
        assert (w.getnchannels(), w.getframerate()) == (2, WIDE_HZ)
        stereo = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    caller_side = stereo[3 * WIDE_HZ : 6 * WIDE_HZ, 0]
    sent_share = _band_share(speech[: 3 * WIDE_HZ], WIDE_HZ, 4000, 7000)
    assert _band_share(caller_side, WIDE_HZ, 4000, 7000) > 0.3 * sent_share, (
        _band_share(caller_side, WIDE_HZ, 4000, 7000), sent_share)
    # What the caller heard: the greeting, at 16 kHz, with its energy above 4 kHz kept.
    heard, heard_rate = read_wav(tmp_path / "heard.wav")
    assert heard_rate == WIDE_HZ
    lag, best, reference = heard_greeting(heard, WIDE_HZ, LANGUAGE)
    assert best > 0.8, best
    greeting_heard = heard[lag * FRAME : lag * FRAME + 2 * WIDE_HZ]
    greeting_share = _band_share(reference[: 2 * WIDE_HZ], WIDE_HZ, 4000, 7000)
    assert _band_share(greeting_heard, WIDE_HZ, 4000, 7000) > 0.3 * greeting_share, (
        _band_share(greeting_heard, WIDE_HZ, 4000, 7000), greeting_share)


async def test_dtmf_transfer_sends_refer_and_reads_the_notify(tmp_path):
    write_wav(tmp_path / "quiet.wav", np.zeros(20 * 8000, np.int16), 8000)  # RTP flows both ways
    app, stop, task = await start_daemon(_settings(tmp_path, 41500))
    caller = PjsuaCaller()
    try:
        await caller.start("--uri", f"sip:{DEMO}@127.0.0.1:{app.sip.port}", "--codec", "PCMU",
                           "--dtmf", "1.0:0", "--seconds", "25",
                           "--play", str(tmp_path / "quiet.wav"), "--rtp-port", "41700",
                           "--log", str(tmp_path / "pjsua.log"))
        ready = await caller.wait_for("ready")
        await caller.wait_for("dtmf_sent")
        # The tenant's transfer digit: the agent announces the transfer, then REFERs the caller to
        # the target's extension at the host the call came from.
        request = await caller.wait_for("transfer_request", timeout=15)
        assert request["target"] == f"sip:2000@127.0.0.1:{ready['port']}", request
        await caller.wait_for("target_call")
        assert await caller.wait_closed() == 0, caller.events
        states = [e["state"] for e in caller.named("transfer_call_state")]
        assert "CONFIRMED" in states, caller.events
        # The final NOTIFY (200) completes the transfer: the daemon leaves the call with BYE.
        await until(lambda: (app.metrics.registry.get_sample_value(
            "callbridge_calls_total", {"transport": "sip", "outcome": "transferred"}) or 0) == 1, within=10)
        # The daemon left the transferred call with a BYE; the caller did not have to hang up.
        assert caller.named("disconnected") and not caller.named("timeout"), caller.events
    finally:
        await caller.close()
        await stop_daemon(stop, task)
