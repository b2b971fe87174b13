"""Evaluated calls end to end over real sockets: an AudioSocket call and a /ws/audio call reach the
built-in simulator through the real openai SDK, the simulated model ends each call with end_call,
and the evaluation lands in the index, beside the recording, in the ops API, the CLI, the signed
webhook, the live events and the ops page in headless Chromium. Tenant tokens see only their own."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json

import aiohttp
import numpy as np
import pytest
from playwright.async_api import expect

from bridge.records.callstore import CallQuery
from tests.bridge.cli.test_calls import run_cli
from tests.bridge.ops.test_ops_page import CHROMIUM, browser, sign_in  # noqa: F401  (fixture)
from tests.conftest import load_wav, loopback_settings
from tests.peers.asterisk import AsteriskCaller
from tests.peers.media_ws import WsPeer, frames
from tests.peers.observers import LiveSubscriber, WebhookReceiver
from tests.servers import start_daemon, stop_daemon

pytestmark = pytest.mark.realtime

ACME_NUMBER = "+5511999990101"
GLOBEX_NUMBER = "+5511999990202"
ADMIN, ACME, GLOBEX = "e2e-admin", "e2e-acme", "e2e-globex"
SECRET = "e2e-webhook-secret"
CRITERIA = [
    {"name": "greeting", "description": "Greets the caller", "weight": 2},
    {"name": "closing", "description": "Ends the call politely once it is done", "weight": 1},
]


def write_tenants(tmp_path, webhook_url: str):
    tenants = [
        {"slug": "acme", "numbers": [ACME_NUMBER], "greeting": "Hello", "language": "en",
         "webhook_url": webhook_url, "webhook_secret": SECRET,
         "evaluation": {"enabled": True, "criteria": CRITERIA, "language": "en",
                        "instructions": "The agent answers for Acme and hangs up when the caller is done."},
         "simulator": {"actions": [{"tool": "end_call", "after_turn": 1,
                                    "arguments": {"reason": "the caller is done"}}]}},
        {"slug": "globex", "numbers": [GLOBEX_NUMBER], "greeting": "Hi",
         "webhook_url": webhook_url, "webhook_secret": SECRET,
         # A model that refuses: the evaluation fails, visibly.
         "evaluation": {"enabled": True, "model": "simulator-refusal", "criteria": [{"name": "politeness"}]},
         "simulator": {"actions": [{"tool": "end_call", "on_silence_seconds": 1.0}]}},
    ]
    path = tmp_path / "tenants.yaml"
    path.write_text(json.dumps({"version": 1, "tenants": tenants}), encoding="utf-8")  # JSON is YAML
    return path


async def start(tmp_path, hooks: WebhookReceiver, **extra):
    settings = loopback_settings(
        tmp_path, record=True,
        tenants={"file": str(write_tenants(tmp_path, hooks.url))},
        ops={"admin_token": ADMIN, "tenant_tokens": {"acme": ACME, "globex": GLOBEX}},
        webhooks={"retry_initial_seconds": 0.1},
        evaluation={"retry_initial_seconds": 0.05, "max_attempts": 2, "webhook_wait": 15},
        **extra,
    )
    return await start_daemon(settings)


async def get(app, path: str, token: str):
    async with aiohttp.ClientSession() as http, http.get(
        f"http://127.0.0.1:{app.http.port}{path}", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        return resp.status, await resp.json()


async def settled(app, tenant: str):
    await asyncio.wait_for(app.archive.wait_idle(), 20)
    await asyncio.wait_for(app.archive.wait_evaluations(), 20)
    page = await app.archive.search(CallQuery(tenant=tenant))
    assert page.total == 1
    return page.calls[0]


def assert_live_order(events: list[dict], outcome: str) -> None:
    """The live view of one call: started, speaking states alternating, transcript, the tool, the end."""
    types = [e["type"] for e in events]
    assert types[0] == "call.started", types
    states = [t for t in types if t in ("agent_speaking", "agent_listening")]
    assert states and states[0] == "agent_speaking"
    assert all(a != b for a, b in itertools.pairwise(states)), states
    assert states[-1] == "agent_listening"
    finals = [e for e in events if e["type"] == "transcription" and e["final"]]
    assert finals[0]["role"] == "agent"
    first_final = events.index(finals[0])
    assert types.index("agent_speaking") < first_final
    # Partial agent text came before the line it belongs to.
    assert any(e["type"] == "transcription" and not e["final"] and e["role"] == "agent"
               for e in events[:first_final])
    assert [e["tool"] for e in events if e["type"] == "tool_call"] == ["end_call"]
    ended = types.index("call.ended")
    assert types.index("tool_call") < ended
    assert events[ended]["outcome"] == outcome
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)


async def test_audiosocket_call_ended_by_the_agent_and_evaluated(tmp_path, fixtures_dir, browser, capsys):  # noqa: F811
    hooks = WebhookReceiver(SECRET)
    await hooks.start()
    app, stop, task = await start(tmp_path, hooks)
    base = f"http://127.0.0.1:{app.http.port}"
    acme_live = LiveSubscriber(base, ACME)
    globex_live = LiveSubscriber(base, GLOBEX, websocket=True)
    await acme_live.start()
    await globex_live.start()
    try:
        speech, rate = load_wav(fixtures_dir / "speech" / "real_cmu_8k.wav")
        assert rate == 8000
        silence = np.zeros(8000 * 12, dtype=np.int16)
        # Quiet through the 4.4 s greeting, one turn of speech, then quiet: the agent says goodbye
        # and hangs up by itself long before the caller would.
        sent = np.concatenate([silence[: 8000 * 5], speech[: 8000 * 3], silence])
        caller = AsteriskCaller(app.agi.port, ACME_NUMBER)
        await caller.dial()
        await caller.connect_media()
        await caller.play(sent)
        assert caller.media_closed.is_set()
        assert caller.sent_frames < len(sent) // 160 - 8000 * 6 // 160, "the agent did not hang up"
        await caller.close()

        record = await settled(app, "acme")
        assert record.outcome == "agent_hangup"
        assert record.evaluation_status == "complete"
        score = record.overall_score
        assert isinstance(score, int) and 0 <= score <= 100
        session = app.simulator.sessions[-1]
        assert session.script["actions"][0]["tool"] == "end_call"
        assert [r["kind"] for r in session.responses][:2] == ["greeting", "goodbye"]

        # Beside the recording.
        document = json.loads(app.archive.layout.path(record.path, ".evaluation.json").read_text())
        assert app.archive.layout.path(record.path, ".wav").exists()
        assert document["status"] == "complete" and document["overall_score"] == score
        assert [c["name"] for c in document["criteria"]] == ["greeting", "closing"]
        assert document["agent_ended_call"] is True
        # What the model was given: both roles with offsets, and how the call ended.
        prompt = app.simulator.text_model.requests[-1]["messages"][1]["content"]
        assert "] agent: [goodbye]" in prompt and "] caller: [caller speech" in prompt
        assert "Call outcome: agent_hangup (the agent ended the call)." in prompt

        # The index, through the API: filtered by score, seen by its tenant only.
        status, page = await get(app, f"/api/calls?min_score={score}", ACME)
        assert status == 200 and [c["call_id"] for c in page["calls"]] == [record.call_id]
        assert page["calls"][0]["evaluation"] == {"status": "complete", "overall_score": score, "error": None}
        status, page = await get(app, f"/api/calls?min_score={score + 1}", ADMIN)
        assert status == 200 and page["calls"] == []
        status, shown = await get(app, f"/api/calls/{record.call_id}/evaluation", ACME)
        assert status == 200 and shown["overall_score"] == score and shown["status"] == "complete"
        assert shown["criteria"] == document["criteria"]
        status, _ = await get(app, f"/api/calls/{record.call_id}/evaluation", GLOBEX)
        assert status == 404

        # The webhook: call.completed carries the evaluation, signed.
        delivery = await hooks.wait_for("call.completed")
        assert hooks.rejected == 0
        assert delivery.payload["call"]["call_id"] == record.call_id
        assert delivery.payload["call"]["outcome"] == "agent_hangup"
        assert delivery.payload["evaluation"]["overall_score"] == score
        assert delivery.payload["evaluation"]["agent_ended_call"] is True
        assert any(e["role"] == "caller" for e in delivery.payload["transcript"])

        # Live events: the acme subscriber saw the call in order; globex saw nothing of it.
        await acme_live.wait_for(lambda e: e["type"] == "evaluation" and e["call_id"] == record.call_id)
        events = acme_live.of_call(record.call_id)
        assert_live_order(events, "agent_hangup")
        assert events[-1]["type"] == "evaluation" and events[-1]["overall_score"] == score
        assert [e["type"] for e in globex_live.events] == ["snapshot"]

        # The CLI.
        capsys.readouterr()
        assert await run_cli("calls", "show", record.call_id, "--url", base, "--token", ACME) == 0
        shown_cli = capsys.readouterr().out
        assert f"evaluation  {score}/100" in shown_cli and "agent ended the call: yes" in shown_cli
        assert "  greeting (weight 2.0): " in shown_cli
        assert await run_cli("calls", "list", "--url", base, "--token", ACME, "--min-score", str(score)) == 0
        assert record.call_id in capsys.readouterr().out

        # The ops page in Chromium: the score in the list, the evaluation in the call's view.
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(f"{base}/ops/")
        await sign_in(page, ACME)
        row = page.locator(f'#calls tbody tr[data-call-id="{record.call_id}"]')
        await expect(row.locator("td").last).to_have_text(str(score))
        await row.click()
        await expect(page.locator("#evaluation")).to_be_visible()
        await expect(page.locator("#e-score")).to_have_text(f"{score} / 100")
        await expect(page.locator("#e-criteria tbody tr")).to_have_count(2)
        assert await page.locator("#e-criteria tbody tr td").first.text_content() == "greeting"
        assert await page.locator("#e-strengths li").count() >= 1
        assert errors == []
        await page.close()
    finally:
        await acme_live.close()
        await globex_live.close()
        await stop_daemon(stop, task)
        await hooks.close()


async def test_ws_audio_calls_live_on_the_ops_page(tmp_path, fixtures_dir, browser):  # noqa: F811
    hooks = WebhookReceiver(SECRET)
    await hooks.start()
    app, stop, task = await start(tmp_path, hooks, audiosocket={"enabled": False}, agi={"enabled": False})
    base = f"http://127.0.0.1:{app.http.port}"
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        await page.goto(f"{base}/ops/")
        await sign_in(page, ACME)
        await expect(page.locator("#live-state")).to_have_text("connected")

        speech, rate = load_wav(fixtures_dir / "speech" / "real_cmu_16k.wav")
        assert rate == 16000
        pcm = np.concatenate([np.zeros(16000 * 5, np.int16), speech[: 16000 * 3], np.zeros(16000 * 12, np.int16)])
        messages = [base64.b64encode(f).decode() for f in frames(pcm.tobytes(), 640)]  # 20 ms at 16 kHz
        client = WsPeer()
        await client.connect(f"ws://127.0.0.1:{app.http.port}/ws/audio/{ACME_NUMBER}?format=pcm16_16k")
        sending = asyncio.create_task(client.send_paced(messages, 0.020))
        # The call appears live on the page, the agent speaking its greeting, its line growing.
        card = page.locator(".live-call")
        await expect(card).to_have_count(1, timeout=10_000)
        await expect(card.locator(".state")).to_have_text("speaking", timeout=10_000)
        await expect(card.locator("li.agent .text").first).to_contain_text("Hello", timeout=10_000)
        await expect(card.locator(".state")).to_have_text("listening", timeout=10_000)
        # The agent ends the call after the caller's turn.
        assert await client.close_code_within(20) == 1000
        sending.cancel()
        await client.close()
        await expect(card).to_have_count(0, timeout=10_000)

        record = await settled(app, "acme")
        assert record.transport == "ws_audio" and record.outcome == "agent_hangup"
        assert record.evaluation_status == "complete"
        assert app.archive.layout.path(record.path, ".evaluation.json").exists()
        # The list refreshed itself when the evaluation arrived.
        row = page.locator(f'#calls tbody tr[data-call-id="{record.call_id}"]')
        await expect(row.locator("td").last).to_have_text(str(record.overall_score), timeout=10_000)
        delivery = await hooks.wait_for("call.completed")
        assert delivery.payload["evaluation"]["status"] == "complete"

        # Globex: a caller who says nothing; the agent hangs up after a second of silence. Its
        # evaluation model refuses.
        client = WsPeer()
        await client.connect(f"ws://127.0.0.1:{app.http.port}/ws/audio/{GLOBEX_NUMBER}?format=pcm16_16k")
        quiet = [base64.b64encode(bytes(640)).decode()] * (50 * 20)
        sending = asyncio.create_task(client.send_paced(quiet, 0.020))
        assert await client.close_code_within(20) == 1000
        sending.cancel()
        await client.close()
        failed = await settled(app, "globex")
        assert failed.outcome == "agent_hangup"
        assert failed.evaluation_status == "failed" and failed.overall_score is None
        assert failed.evaluation_error.startswith("refused")
        status, shown = await get(app, f"/api/calls/{failed.call_id}/evaluation", GLOBEX)
        assert status == 200 and shown["status"] == "failed" and shown["evaluation_error"].startswith("refused")
        deliveries = [d for d in hooks.deliveries if d.payload["call"]["call_id"] == failed.call_id]
        assert deliveries and deliveries[0].payload["evaluation"]["status"] == "failed"
        # The acme page never showed the globex call.
        assert await page.locator(f'[data-call-id="{failed.call_id}"]').count() == 0
        assert errors == []
    finally:
        await page.close()
        await stop_daemon(stop, task)
        await hooks.close()
