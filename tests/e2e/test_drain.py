"""Graceful drain of the real daemon process: SIGTERM with a call up.

The daemon runs as ``python -m bridge.cli serve`` configured by environment variables on free
loopback ports. After SIGTERM: /ready answers 503 at once (/health stays 200), the call in
progress keeps flowing both ways until the caller hangs up, a new FastAGI call is told
CALLBRIDGE_STATUS=UNAVAILABLE (the dialplan's cue to try another instance), an AudioSocket
connection arriving during the drain gets a HANGUP message, and the process exits on its own,
within the drain timeout. A call that does not end is ended when the drain timeout passes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from sip import audiosocket as aso
from tests.conftest import load_wav
from tests.peers.asterisk import AsteriskCaller

pytestmark = pytest.mark.realtime

REPO = Path(__file__).resolve().parents[2]
DEMO_NUMBER = "+5511999990001"


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


class Daemon:
    """``callbridge serve`` in a child process."""

    def __init__(self, tmp_path: Path, drain_timeout: float) -> None:
        self.http_port, self.audiosocket_port, self.agi_port = _free_ports(3)
        self.stderr_path = tmp_path / "callbridge.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CALLBRIDGE_", "OPENAI_", "AZURE_"))}
        env.update({
            "PYTHONPATH": str(REPO),
            "CALLBRIDGE_HTTP__HOST": "127.0.0.1",
            "CALLBRIDGE_HTTP__PORT": str(self.http_port),
            "CALLBRIDGE_AUDIOSOCKET__HOST": "127.0.0.1",
            "CALLBRIDGE_AUDIOSOCKET__PORT": str(self.audiosocket_port),
            "CALLBRIDGE_AGI__HOST": "127.0.0.1",
            "CALLBRIDGE_AGI__PORT": str(self.agi_port),
            "CALLBRIDGE_LIMITS__DRAIN_TIMEOUT": str(drain_timeout),
            "CALLBRIDGE_RECORDING__ENABLED": "false",
            "CALLBRIDGE_LOG_JSON": "true",
        })
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "serve"], cwd=tmp_path, env=env,
            stdout=subprocess.DEVNULL, stderr=self.stderr_path.open("wb"),
        )
        self.url = f"http://127.0.0.1:{self.http_port}"

    async def wait_ready(self, http: aiohttp.ClientSession, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_text()
            try:
                async with http.get(f"{self.url}/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError("daemon not ready: " + self.log_text())

    async def status(self, http: aiohttp.ClientSession, path: str) -> int:
        async with http.get(f"{self.url}{path}") as response:
            return response.status

    async def wait_exit(self, within: float) -> int:
        try:
            return await asyncio.to_thread(self.process.wait, within)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon still running {within} s after SIGTERM") from None

    def log_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def log_records(self) -> list[dict]:
        lines = self.stderr_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


async def _raw_audiosocket(port: int, call_uuid: str) -> list[object]:
    """Connect as Asterisk's AudioSocket() would and return what the daemon sends until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    protocol = aso.AudioSocketProtocol(aso.Side.CLIENT)
    protocol.send_uuid(uuid.UUID(call_uuid))
    writer.write(b"".join(protocol.data_to_send()))
    await writer.drain()
    events: list[object] = []
    async with asyncio.timeout(5):
        while data := await reader.read(4096):
            protocol.receive_data(data)
            events.extend(protocol.events_received())
    writer.close()
    return events


async def test_sigterm_drains_calls_then_exits(tmp_path, fixtures_dir):
    drain_timeout = 30.0
    daemon = Daemon(tmp_path, drain_timeout)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            await daemon.wait_ready(http)

            # Call 1 is in progress when the drain starts.
            first = AsteriskCaller(daemon.agi_port, DEMO_NUMBER)
            await first.dial()
            await first.connect_media()
            speech, _ = load_wav(fixtures_dir / "speech" / "real_cmu_8k.wav")
            silence = np.zeros(8000 * 3, dtype=np.int16)
            audio = np.concatenate([silence[:8000 * 2], speech[:8000 * 3], silence])  # 8 s
            playing = asyncio.create_task(first.play(audio))
            # Call 2 was set up over FastAGI but its media connection arrives only during the drain.
            late = AsteriskCaller(daemon.agi_port, DEMO_NUMBER)
            await late.dial()
            async with asyncio.timeout(5):
                await late.audiosocket_requested.wait()
            for _ in range(100):  # the call is bridged once the model session is up
                if len(first.received) > 40:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("no audio before the drain")

            sigterm_at = time.monotonic()
            daemon.process.send_signal(signal.SIGTERM)
            # Readiness goes false at once; liveness stays.
            ready_deadline = sigterm_at + 0.5
            while await daemon.status(http, "/ready") != 503:
                assert time.monotonic() < ready_deadline, "/ready still 200 half a second after SIGTERM"
                await asyncio.sleep(0.01)
            ready_after = time.monotonic() - sigterm_at
            assert await daemon.status(http, "/health") == 200
            async with http.get(f"{daemon.url}/ready") as response:
                assert (await response.json())["reason"] == "draining"
            async with http.get(f"{daemon.url}/metrics") as response:
                assert "callbridge_ready 0.0" in await response.text()

            # A new FastAGI call is refused the FastAGI way: UNAVAILABLE, no AudioSocket.
            refused = AsteriskCaller(daemon.agi_port, DEMO_NUMBER)
            await refused.dial()
            async with asyncio.timeout(5):
                await refused.agi_done.wait()
            assert refused.agi.variables.get("CALLBRIDGE_STATUS") == "UNAVAILABLE"
            assert not refused.audiosocket_requested.is_set()
            assert not any(c.startswith("ANSWER") for c in refused.agi.commands)

            # The AudioSocket connection of call 2 arrives now: refused with a HANGUP message.
            assert late.audiosocket_target is not None
            events = await _raw_audiosocket(daemon.audiosocket_port, late.audiosocket_target[0])
            assert any(isinstance(e, aso.Hangup) for e in events), events
            assert not any(isinstance(e, aso.Audio) for e in events)
            await late.close()

            # Call 1 keeps flowing: paced frames keep arriving for the rest of its audio.
            await playing
            after = [f for f in first.received if f.at > sigterm_at + 0.5]
            assert first.media_closed.is_set() is False, "the call was cut by the drain"
            span = after[-1].at - after[0].at
            assert span > 4.0, span
            rate = (len(after) - 1) / span
            assert 45 <= rate <= 55, rate
            assert first.sent_frames == len(audio) // 160
            assert daemon.process.poll() is None, "the daemon exited with a call up"

            # The counters tell the same story: three calls arrived, one was bridged, two refused.
            async with http.get(f"{daemon.url}/metrics") as response:
                samples = _samples(await response.text())
            assert samples[("callbridge_calls_offered_total", (("transport", "audiosocket_fastagi"),))] == 3
            assert samples[("callbridge_calls_answered_total", (("transport", "audiosocket_fastagi"),))] == 1
            refused_key = (("reason", "draining"), ("transport", "audiosocket_fastagi"))
            assert samples[("callbridge_calls_refused_total", refused_key)] == 2
            assert samples[("callbridge_calls_active", (("transport", "audiosocket_fastagi"),))] == 1

            hangup_at = time.monotonic()
            await first.hang_up()
            await asyncio.wait_for(first.agi_done.wait(), 10)
            await first.close()
            assert first.agi.variables.get("CALLBRIDGE_STATUS") == "DONE"
            code = await daemon.wait_exit(drain_timeout)
            exited_at = time.monotonic()
        assert code == 0, daemon.log_text()
        assert exited_at - sigterm_at < drain_timeout
        assert exited_at - hangup_at < 5.0, "the daemon lingered after its last call ended"

        records = daemon.log_records()
        assert any("draining: 1 active call" in r["msg"] for r in records), daemon.log_text()
        # JSON logs: every line of a call names the call and its tenant.
        call_lines = [r for r in records if r.get("call_id")]
        assert call_lines, daemon.log_text()
        assert all(r.get("tenant") == "demo" for r in call_lines), call_lines
        starts = [r for r in records if r["msg"].startswith("call from")]
        assert len(starts) == 1 and starts[0]["call_id"] == first.audiosocket_target[0]
        print(f"ready false after {ready_after * 1000:.0f} ms; exit {exited_at - hangup_at:.2f} s after "
              f"the last call; {len(after)} frames during the drain at {rate:.1f}/s")
    finally:
        daemon.kill()


async def test_drain_timeout_ends_calls_that_do_not_end(tmp_path):
    drain_timeout = 2.0
    daemon = Daemon(tmp_path, drain_timeout)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            await daemon.wait_ready(http)
            caller = AsteriskCaller(daemon.agi_port, DEMO_NUMBER)
            await caller.dial()
            await caller.connect_media()
            playing = asyncio.create_task(caller.play(np.zeros(8000 * 30, dtype=np.int16)))
            await asyncio.sleep(1.0)
            sigterm_at = time.monotonic()
            daemon.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(drain_timeout + 5):
                await caller.media_closed.wait()
            ended_after = time.monotonic() - sigterm_at
            assert caller.hangup_received, "the daemon must hang the call up the AudioSocket way"
            code = await daemon.wait_exit(drain_timeout + 8)
            playing.cancel()
            await caller.close()
        assert code == 0, daemon.log_text()
        assert drain_timeout - 0.2 <= ended_after <= drain_timeout + 2.0, ended_after
        records = daemon.log_records()
        assert any("drain timeout" in r["msg"] for r in records), daemon.log_text()
        assert any(r["msg"].endswith("call ended: shutdown") for r in records), daemon.log_text()
    finally:
        daemon.kill()
