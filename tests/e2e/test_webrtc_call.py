"""Browser calls over WebRTC, with aiortc as the caller: offer/answer over HTTP, Opus both ways."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import soxr

from bridge.simulator import greeting_samples
from tests.conftest import load_wav, loopback_settings
from tests.peers.webrtc_caller import RATE_HZ, WebRtcCaller
from tests.servers import start_daemon, stop_daemon, until

pytestmark = pytest.mark.realtime

DEMO = "+5511999990001"
PIZZA = "+5511999990002"
ADMIN = "admin-token-for-tests"
PIZZA_TOKEN = "pizzaria-token-for-tests"


def _settings(tmp_path, **extra):
    return loopback_settings(
        tmp_path,
        record=True,
        ops={"admin_token": ADMIN, "tenant_tokens": {"pizzaria-bella": PIZZA_TOKEN}},
        webrtc={"host_addresses": ["127.0.0.1"], "peer_networks": ["127.0.0.0/8"]},
        **extra,
    )


def _speech_48k(fixtures_dir, lead_s: float, tail_s: float) -> np.ndarray:
    speech, rate = load_wav(fixtures_dir / "speech" / "real_cmu_16k.wav")
    speech = np.asarray(soxr.resample(speech[: rate * 3], rate, RATE_HZ), dtype=np.int16)
    return np.concatenate([np.zeros(int(lead_s * RATE_HZ), np.int16), speech,
                           np.zeros(int(tail_s * RATE_HZ), np.int16)])


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0


@pytest.mark.both_dialects
async def test_browser_call_hears_greeting_barges_in_dtmf_and_hangs_up(tmp_path, fixtures_dir):
    app, stop, task = await start_daemon(_settings(tmp_path))
    base = f"http://127.0.0.1:{app.http.port}"
    # 3 s of silence (the greeting plays), 3 s of speech (barge-in, then a turn), then silence.
    caller = WebRtcCaller(base, ADMIN, DEMO, _speech_48k(fixtures_dir, 3.0, 8.0))
    try:
        assert await caller.dial(), (caller.status, caller.error)
        await asyncio.wait_for(caller.opened.wait(), 10)
        await until(lambda: app.switchboard.active_calls == 1, within=10)
        call = app.switchboard.calls()[0]
        assert call.info.transport == "webrtc" and call.caller_format.rate_hz == 48000
        await until(lambda: len(caller.received) > 100, within=10)  # 2 s of agent audio
        greeting = caller.audio()
        # The greeting arrives: loud, and the same recording the simulator plays (by correlation
        # of the envelopes at 48 kHz, Opus being a lossy codec).
        assert _rms(greeting) > 300
        # The example tenants speak Portuguese (language: pt): so does the simulator's greeting.
        reference = np.asarray(soxr.resample(greeting_samples("pt"), 24000, RATE_HZ), dtype=np.int16)
        env = lambda x: np.abs(x[: len(x) // 480 * 480].astype(np.float64)).reshape(-1, 480).mean(axis=1)  # noqa: E731
        got, want = env(greeting), env(reference)
        n = min(len(got), len(want)) - 20
        best = max(np.corrcoef(got[lag : lag + n], want[:n])[0, 1] for lag in range(0, 20))
        assert best > 0.8, best
        # The caller speaks over the greeting: barge-in, then the simulator hears a whole turn.
        session = app.simulator.sessions[-1]
        await until(lambda: bool(session.speech_started_at), within=10)
        await until(lambda: any(e.get("type") == "barge_in" for e in caller.events), within=5)
        await until(lambda: bool(session.truncates), within=5)
        # Keypad: the digit reaches the call's DTMF path and comes back as an event.
        caller.press("5")
        await until(lambda: any(e == {"type": "dtmf", "digit": "5"} for e in caller.events), within=5)
        assert app.metrics.registry.get_sample_value("callbridge_dtmf_digits_total", {"transport": "webrtc"}) == 1
        assert {"type": "agent", "state": "speaking"} in caller.events
        caller.hang_up()
        await until(lambda: app.switchboard.active_calls == 0, within=10)
        assert app.metrics.registry.get_sample_value(
            "callbridge_calls_total", {"transport": "webrtc", "outcome": "caller_hangup"}) == 1
        # The call is indexed with a stereo recording at the leg's rate.
        await asyncio.wait_for(app.archive.wait_idle(), 10)
        record = await app.archive.get(caller.call_id)
        assert record is not None and record.transport == "webrtc"
        wav = await app.archive.local_file(record, ".wav")
        assert wav is not None
        import wave

        with wave.open(str(wav)) as w:
            assert (w.getnchannels(), w.getframerate()) == (2, 48000)
            assert w.getnframes() > 48000 * 4
    finally:
        await caller.close()
        await stop_daemon(stop, task)


async def test_refusals(tmp_path, fixtures_dir):
    app, stop, task = await start_daemon(_settings(tmp_path))
    base = f"http://127.0.0.1:{app.http.port}"
    silence = np.zeros(RATE_HZ, np.int16)
    try:
        wrong = WebRtcCaller(base, "not-a-token", DEMO, silence)
        assert not await wrong.dial() and wrong.status == 401
        other = WebRtcCaller(base, PIZZA_TOKEN, DEMO, silence)
        assert not await other.dial() and other.status == 403
        unknown = WebRtcCaller(base, ADMIN, "+5511000000000", silence)
        assert not await unknown.dial() and unknown.status == 404
        own = WebRtcCaller(base, PIZZA_TOKEN, PIZZA, silence)
        try:
            assert await own.dial(), (own.status, own.error)
            await until(lambda: app.switchboard.active_calls == 1, within=10)
        finally:
            own.hang_up()
            await own.close()
        await until(lambda: app.switchboard.active_calls == 0, within=10)
        assert not app.simulator.sessions[:-1]  # only the admitted call reached the model
    finally:
        await stop_daemon(stop, task)
