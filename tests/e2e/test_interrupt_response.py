"""``interrupt_response: false``: caller speech while the agent talks does not cut the agent off.

Measured on what the caller receives over /ws/audio: the greeting plays whole and without a gap
through the caller's speech, and the model heard the caller (speech_started) but got no
truncation or cancellation. The same call with the default (true) is cut within 60 ms, as the
barge-in tests show; here both model dialects are run: the built-in simulator on the OpenAI
protocol, and its Voice Live endpoint through azure-ai-voicelive.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest

from bridge.simulator import SimulatorServer, greeting_samples
from media.resample import StreamResampler
from tests.conftest import load_wav, loopback_settings
from tests.peers.media_ws import WsPeer, frames
from tests.servers import start_daemon, stop_daemon, until

pytestmark = [pytest.mark.realtime, pytest.mark.timeout(90)]

NUMBER = "+5511999990077"
TENANTS = f"""version: 1
tenants:
  - slug: patient
    numbers: ["{NUMBER}"]
    greeting: hello
    noise_suppression: "off"
    turn_detection: {{type: server_vad, interrupt_response: false}}
"""


def _speech_24k(fixtures_dir, seconds):
    samples, rate = load_wav(fixtures_dir / "speech" / "real_cmu_16k.wav")
    assert rate == 16000
    return StreamResampler(16000, 24000).process(samples[: int(16000 * seconds)])


@pytest.mark.parametrize("dialect", ["openai", "voicelive"])
async def test_agent_keeps_talking_through_caller_speech(tmp_path, fixtures_dir, host_stalls, dialect):
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(TENANTS, encoding="utf-8")
    async with SimulatorServer(api_key="k", pace=1.0) as external:
        model = {} if dialect == "openai" else {
            "provider": "azure_voicelive", "voicelive_endpoint": external.http_url, "voicelive_api_key": "k"}
        settings = loopback_settings(tmp_path, audiosocket={"enabled": False}, agi={"enabled": False},
                                     tenants={"file": str(tenants)}, model=model)
        app, stop, task = await start_daemon(settings)
        try:
            model_side = app.simulator if dialect == "openai" else external
            client = WsPeer()
            await client.connect(f"ws://127.0.0.1:{app.http.port}/ws/audio/{NUMBER}")
            # 1 s of silence, 2 s of speech while the 4.4 s greeting plays, then silence.
            audio = np.concatenate([np.zeros(24000, np.int16), _speech_24k(fixtures_dir, 2.0),
                                    np.zeros(24000 * 3, np.int16)])
            messages = [base64.b64encode(f).decode() for f in frames(audio.tobytes(), 1920)]
            await client.send_paced(messages, 0.040)
            await client.close()
            await until(lambda: app.switchboard.active_calls == 0, 10)
        finally:
            await stop_daemon(stop, task)

    session = model_side.sessions[-1]
    assert session.speech_started_at, "the model never heard the caller"
    assert session.truncates == [] and session.cancels == []
    speech_at = session.speech_started_at[0]
    received = client.received
    talking = [r.at for r in received]
    # Agent audio before, through and after the caller's speech, with no gap.
    assert talking[0] < speech_at - 0.3 and talking[-1] > speech_at + 1.5
    host_stalls.assert_no_gap(talking)
    # What the caller heard is the whole greeting, sample for sample.
    heard = np.frombuffer(b"".join(base64.b64decode(r.data) for r in received), np.int16)
    greeting = greeting_samples()
    assert len(heard) >= len(greeting) - 24000 * 0.1, (len(heard) / 24000, len(greeting) / 24000)
    n = min(len(heard), len(greeting))
    assert np.corrcoef(heard[:n].astype(np.float64), greeting[:n].astype(np.float64))[0, 1] > 0.99
    assert app.switchboard.metrics.registry.get_sample_value(
        "callbridge_barge_ins_total", {"transport": "ws_audio"}) in (None, 0.0)
