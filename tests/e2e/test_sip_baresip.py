"""The SIP trunk with baresip (Debian's softphone) as the caller: a real SIP user agent playing a
speech WAV into the call and recording what it hears."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from bridge.simulator import greeting_samples
from tests.conftest import load_wav, loopback_settings
from tests.peers.baresip import BARESIP, Baresip, write_wav
from tests.servers import start_daemon, stop_daemon, until

pytestmark = [
    pytest.mark.realtime,
    pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (.ci/system-deps installs it)"),
]

DEMO = "5511999990001"
LANGUAGE = "pt"  # the example tenant speaks Portuguese: the simulator greets in it
RATE_HZ = 8000
FRAME = RATE_HZ // 50
LEAD_S = 2.0  # the caller listens to the greeting this long before speaking
SPEECH_S = 3.0
MICROPHONE_S = 60.0  # baresip hangs up when its source file ends: longer than the test
VOICED_RMS = 300.0  # G.711 of digital silence decodes to at most a few units


def _frames_rms(x: np.ndarray) -> np.ndarray:
    x = x[: len(x) // FRAME * FRAME].astype(np.float64).reshape(-1, FRAME)
    return np.sqrt(np.mean(x**2, axis=1))


def _value(app, name, labels):
    return app.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_baresip_hears_greeting_barges_in_sends_dtmf_and_hangs_up(tmp_path, fixtures_dir):
    speech, rate = load_wav(fixtures_dir / "speech" / "real_cmu_8k.wav")
    assert rate == RATE_HZ
    speech = speech[int(np.argmax(_frames_rms(speech) > VOICED_RMS)) * FRAME :]  # from its first word
    mic = np.zeros(int(MICROPHONE_S * RATE_HZ), np.int16)
    start = int(LEAD_S * RATE_HZ)
    mic[start : start + int(SPEECH_S * RATE_HZ)] = speech[: int(SPEECH_S * RATE_HZ)]
    write_wav(tmp_path / "microphone.wav", mic, RATE_HZ)

    settings = loopback_settings(tmp_path, record=True, sip={
        "enabled": True, "host": "127.0.0.1", "port": 0, "rtp_port": 41200, "rtp_port_range": 200,
        "codecs": ["PCMU"]})
    app, stop, task = await start_daemon(settings)
    phone = Baresip(tmp_path / "baresip", tmp_path / "microphone.wav")
    try:
        await phone.start()
        reply = await phone.command("dial", f"sip:{DEMO}@127.0.0.1:{app.sip.port}")
        assert reply.get("ok"), reply
        await phone.wait_event("CALL_ESTABLISHED")
        await until(lambda: app.switchboard.active_calls == 1, within=10)
        call = app.switchboard.calls()[0]
        assert call.info.transport == "sip" and call.caller_format.rate_hz == RATE_HZ
        # The caller's speech over the greeting: the simulator hears it and truncates its item.
        await until(lambda: bool(app.simulator.sessions), within=10)
        session = app.simulator.sessions[-1]
        await until(lambda: bool(session.truncates), within=LEAD_S + 5)
        # Once the caller has finished speaking, the keypad: an RFC 4733 digit from baresip reaches
        # the call's DTMF path (and the model is told, so it answers: after the window checked below).
        await until(lambda: session.input_audio_ms > (LEAD_S + SPEECH_S) * 1000, within=10)
        reply = await phone.command("sndcode", "5")
        assert reply.get("ok"), reply
        await until(lambda: _value(app, "callbridge_dtmf_digits_total", {"transport": "sip"}) == 1, within=5)
        # baresip hangs up: the call ends as the caller's hang-up.
        reply = await phone.command("hangup")
        assert reply.get("ok"), reply
        await phone.wait_event("CALL_CLOSED")
        await until(lambda: _value(app, "callbridge_calls_total",
                                   {"transport": "sip", "outcome": "caller_hangup"}) == 1, within=10)
        assert app.switchboard.active_calls == 0
    finally:
        await phone.close()
        await stop_daemon(stop, task)

    heard, heard_rate = phone.dump("dec")
    sent, sent_rate = phone.dump("enc")
    assert heard_rate == sent_rate == RATE_HZ
    heard_rms, sent_rms = _frames_rms(heard), _frames_rms(sent)
    # Where the caller started speaking, on the phone's own timeline (both dumps start with the
    # call's audio).
    onset = int(np.argmax(sent_rms > VOICED_RMS))
    assert abs(onset * 0.020 - LEAD_S) < 0.1, onset
    # The greeting is heard before the caller speaks: loud, and the simulator's recording (by
    # correlation of 20 ms envelopes with the greeting brought to 8 kHz).
    assert np.mean(heard_rms[:onset] > VOICED_RMS) > 0.5, heard_rms[:onset]
    reference = _frames_rms(np.asarray(soxr.resample(greeting_samples(LANGUAGE), 24000, RATE_HZ), dtype=np.int16))
    n = onset - 25
    best = max(np.corrcoef(heard_rms[lag : lag + n], reference[:n])[0, 1] for lag in range(0, 25))
    assert best > 0.8, best
    # Barge-in: the agent goes quiet shortly after the caller starts, though the greeting had
    # more than a second left, and stays quiet while the caller talks (the simulator answers a
    # turn once the caller has been silent for its silence_duration_ms, 500 ms by default).
    assert len(greeting_samples(LANGUAGE)) / 24000 > LEAD_S + 1.5
    spoken_until = int(np.flatnonzero(sent_rms > VOICED_RMS)[-1]) + 1
    assert spoken_until - onset > 50, spoken_until  # a second and more of speech
    talking = heard_rms[onset : spoken_until + 15]
    voiced = np.flatnonzero(talking > VOICED_RMS)
    stopped_after = (voiced[-1] + 1) * 0.020 if len(voiced) else 0.0
    assert stopped_after <= 0.6, stopped_after
