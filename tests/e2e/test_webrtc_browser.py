"""The /phone/ page in a real headless Chromium, its microphone fed from a speech recording."""

from __future__ import annotations

import asyncio
import wave

import numpy as np
import pytest
import soxr

from tests.bridge.ops.test_ops_page import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import load_wav, loopback_settings
from tests.servers import start_daemon, stop_daemon, until

pytestmark = [
    pytest.mark.realtime,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/system-deps installs it as root)"),
]

DEMO = "+5511999990001"
PIZZA = "+5511999990002"
ADMIN = "admin-token-for-tests"
PIZZA_TOKEN = "pizzaria-token-for-tests"
RATE = 48000
SPEECH_AT = 3.0  # seconds of silence on the microphone before the caller speaks


def _microphone_file(tmp_path, fixtures_dir):
    speech, rate = load_wav(fixtures_dir / "speech" / "real_cmu_16k.wav")
    speech = np.asarray(soxr.resample(speech[: rate * 3], rate, RATE), dtype=np.int16)
    signal = np.concatenate([np.zeros(int(SPEECH_AT * RATE), np.int16), speech, np.zeros(RATE * 20, np.int16)])
    path = tmp_path / "microphone.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(signal.tobytes())
    return path


@pytest.fixture
async def phone_browser(tmp_path, fixtures_dir):
    from playwright.async_api import async_playwright

    args = [
        *CHROMIUM_ARGS,
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={_microphone_file(tmp_path, fixtures_dir)}",
        "--allow-loopback-in-peer-connection",  # host candidates on 127.0.0.1, as the daemon offers
        "--autoplay-policy=no-user-gesture-required",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
    ]
    async with async_playwright() as pw:
        instance = await pw.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            yield instance
        finally:
            await instance.close()


def _settings(tmp_path):
    return loopback_settings(
        tmp_path,
        record=True,
        ops={"admin_token": ADMIN, "tenant_tokens": {"pizzaria-bella": PIZZA_TOKEN}},
        webrtc={"host_addresses": ["127.0.0.1"], "peer_networks": ["127.0.0.0/8"]},
    )


async def test_phone_page_calls_hears_the_agent_barges_in_and_hangs_up(tmp_path, phone_browser):
    app, stop, task = await start_daemon(_settings(tmp_path))
    base = f"http://127.0.0.1:{app.http.port}"
    try:
        page = await phone_browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(f"{base}/phone/")
        await page.fill("#token", "wrong")
        await page.click("#signin")
        await page.wait_for_selector("#error:not([hidden])")
        assert "not accepted" in await page.text_content("#error")

        await page.fill("#token", ADMIN)
        await page.click("#signin")
        await page.wait_for_selector("#phone:not([hidden])")
        options = await page.locator("#number option").evaluate_all("(os) => os.map((o) => o.value)")
        assert DEMO in options and PIZZA in options
        await page.select_option("#number", DEMO)
        await page.click("#call")
        await page.wait_for_function("() => window.phone.state === 'in call'", timeout=15000)
        await until(lambda: app.switchboard.active_calls == 1, within=15)
        call = app.switchboard.calls()[0]
        assert call.info.transport == "webrtc"

        # The greeting plays in the page before the caller speaks.
        await page.wait_for_function(
            f"() => window.phone.agentLevels.some(([t, rms]) => t < {SPEECH_AT * 1000} && rms > 0.02)",
            timeout=15000)
        # The caller's speech reaches the model: its turn detection fires, the agent is cut off.
        session = app.simulator.sessions[-1]
        await until(lambda: bool(session.speech_started_at), within=15)
        await page.wait_for_function("() => window.phone.events.some((e) => e.type === 'barge_in')",
                                     timeout=10000)
        await until(lambda: bool(session.truncates), within=5)
        barge_at = await page.evaluate("window.phone.events.find((e) => e.type === 'barge_in').t")
        # The reply comes after the caller's turn (3 s of speech + the silence wait): until then
        # the page hears nothing from the agent, from shortly after the barge-in.
        await page.wait_for_function(f"() => window.phone.agentLevels.some(([t]) => t > {barge_at + 1500})")
        quiet = await page.evaluate(
            f"window.phone.agentLevels.filter(([t]) => t > {barge_at + 300} && t < {barge_at + 1500})"
            ".map(([, rms]) => rms)")
        assert quiet and max(quiet) < 0.01, max(quiet)
        # The agent answers the turn (the simulator plays the caller's words back).
        await page.wait_for_function(
            f"() => window.phone.agentLevels.some(([t, rms]) => t > {barge_at + 1500} && rms > 0.02)",
            timeout=15000)
        # The live transcript: the agent's greeting and the caller's turn, as the call reports them.
        await page.wait_for_selector("#transcript li.agent")
        await page.wait_for_selector("#transcript li.caller")
        # The example tenants speak Portuguese: so does the simulator's greeting.
        assert "linha de teste do callbridge" in await page.text_content("#transcript li.agent")
        await page.screenshot(path=str(tmp_path / "phone.png"))

        await page.click("#hangup")
        await until(lambda: app.switchboard.active_calls == 0, within=10)
        call_id = await page.evaluate("window.phone.callId")
        assert await page.get_attribute("#call-link", "href") == f"/ops/#call={call_id}"
        await asyncio.wait_for(app.archive.wait_idle(), 10)
        record = await app.archive.get(call_id)
        assert record is not None and record.transport == "webrtc" and record.outcome == "caller_hangup"
        wav = await app.archive.local_file(record, ".wav")
        with wave.open(str(wav)) as w:
            assert (w.getnchannels(), w.getframerate()) == (2, RATE)
            frames = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).reshape(-1, 2)
        caller_rms = np.sqrt(np.mean(frames[:, 0].astype(np.float64) ** 2))
        agent_rms = np.sqrt(np.mean(frames[:, 1].astype(np.float64) ** 2))
        assert caller_rms > 100 and agent_rms > 100, (caller_rms, agent_rms)
        assert not errors, errors
        # The link after the call opens it on the calls page (same tab session, same token).
        await page.click("#call-link")
        await page.wait_for_selector("#detail:not([hidden])")
        assert call_id in (await page.text_content("#detail"))
        await page.goto(f"{base}/phone/")

        # A tenant token sees only its own numbers, and the daemon refuses another tenant's.
        await page.click("#signout")
        await page.fill("#token", PIZZA_TOKEN)
        await page.click("#signin")
        await page.wait_for_selector("#phone:not([hidden])")
        options = await page.locator("#number option").evaluate_all("(os) => os.map((o) => o.value)")
        assert options == [PIZZA]
        status = await page.evaluate(
            """async (number) => (await fetch('/api/webrtc/offer', {method: 'POST',
                 headers: {Authorization: 'Bearer ' + sessionStorage.getItem('callbridge.token')},
                 body: JSON.stringify({type: 'offer', sdp: 'v=0\\r\\nm=audio 9 UDP/TLS/RTP/SAVPF 111\\r\\n',
                                       number})})).status""", DEMO)
        assert status == 403
    finally:
        await stop_daemon(stop, task)
