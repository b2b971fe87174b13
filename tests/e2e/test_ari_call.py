"""ARI-driven calls end to end: the local ARI server plays Asterisk (REST, events, the caller and
the external media), callbridge runs its Stasis application, the built-in simulator is the model."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from bridge.app import Application
from bridge.settings import load_settings
from sip import rtp
from tests.conftest import load_wav
from tests.peers.ari_server import AriServer

pytestmark = pytest.mark.realtime

DEMO_NUMBER = "+5511999990001"
APP = "callbridge-test"
RTP_PORTS = {"rtp_port_min": 46000, "rtp_port_max": 46999}


def _settings(tmp_path, server: AriServer, **ari):
    return load_settings(
        env_file=None,
        environ={},
        http={"host": "127.0.0.1", "port": 0},
        audiosocket={"host": "127.0.0.1", "port": 0},
        agi={"host": "127.0.0.1", "port": 0},
        recording={"enabled": False, "directory": str(tmp_path / "rec")},
        ari={"enabled": True, "url": server.url, "username": "callbridge", "password": "secret", "app": APP,
             "rtp_host": "127.0.0.1", "reconnect_min": 0.1, "reconnect_max": 0.5, **RTP_PORTS, **ari},
    )


class Harness:
    def __init__(self, app: Application, server: AriServer, stop: asyncio.Event, task: asyncio.Task) -> None:
        self.app = app
        self.server = server
        self.stop = stop
        self.task = task

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)
        await self.server.stop()


async def _start(tmp_path, server_kwargs=None, **ari) -> Harness:
    server = AriServer(**(server_kwargs or {}))
    await server.start()
    app = Application(_settings(tmp_path, server, **ari))
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop.wait()))
    await asyncio.wait_for(app.wait_started(), 20)
    await asyncio.wait_for(server.app_registered.wait(), 5)
    return Harness(app, server, stop, task)


def _speech(fixtures_dir) -> np.ndarray:
    samples, rate = load_wav(fixtures_dir / "speech" / "real_cmu_8k.wav")
    assert rate == 8000
    return samples


async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def _metric(app: Application, name: str, labels: dict[str, str] | None = None) -> float:
    value = app.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


async def test_rtp_call_set_up_talk_and_caller_hangup(tmp_path, fixtures_dir):
    h = await _start(tmp_path)
    try:
        server = h.server
        caller = await server.place_call(APP, DEMO_NUMBER, args=("inbound", DEMO_NUMBER))
        media = await caller.wait_bridged()
        t0 = time.monotonic()
        silence = np.zeros(int(8000 * 1.2), dtype=np.int16)
        speech = _speech(fixtures_dir)[: 8000 * 5]
        # Loss, duplicates and reordering on the way in.
        audio = np.concatenate([silence, speech, np.zeros(8000 * 2, dtype=np.int16)])
        await media.play(audio, start=t0, drop={70, 71, 150}, duplicate={90, 200}, swap={100, 220})
        await caller.hang_up()
        await _until(lambda: h.app.stasis.active == 0)

        # The ARI dialogue, in Asterisk's terms: answer, bridge, caller in, external media, the
        # external channel added only after its StasisStart, then teardown of what is left.
        lines = server.request_lines()
        assert lines[:5] == [
            "POST /channels/{caller}/answer -> 204",
            "POST /bridges/{bridge} -> 200",
            "POST /bridges/{bridge}/addChannel -> 204",
            "POST /channels/externalMedia -> 200",
            "POST /bridges/{bridge}/addChannel -> 204",
        ], lines
        assert lines[5:] == ["DELETE /channels/{media} -> 204", "DELETE /bridges/{bridge} -> 204"], lines
        em = next(r for r in server.requests if r.path == "/channels/externalMedia")
        assert em.query["encapsulation"] == "rtp" and em.query["format"] == "ulaw"
        assert em.query["app"] == APP and em.query["external_host"].startswith("127.0.0.1:")
        assert 46000 <= int(em.query["external_host"].rpartition(":")[2]) <= 46999
        media_start = next(e for e in server.events
                           if e["type"] == "StasisStart" and e["channel"]["id"] == em.query["channelId"])
        add_media = [r for r in server.requests if r.path.endswith("/addChannel")][1]
        assert add_media.query["channel"] == em.query["channelId"]

        # The model heard the caller and answered; the agent's audio came back as proper RTP.
        session = h.app.simulator.sessions[-1]
        assert session.speech_started_at, "the simulator never heard the caller"
        packets = media.packets
        assert len(packets) > 200
        assert {p.payload_type for p in packets} == {rtp.PayloadType.PCMU}
        assert len({p.ssrc for p in packets}) == 1
        assert packets[0].marker and not any(p.marker for p in packets[1:])
        for a, b in zip(packets, packets[1:], strict=False):
            assert b.sequence_number == (a.sequence_number + 1) & 0xFFFF
            assert b.timestamp == (a.timestamp + 160) & 0xFFFFFFFF
            assert len(b.payload) == 160
        times = np.array([f.at for f in media.received])
        rate = (len(times) - 1) / (times[-1] - times[0])
        assert 47 <= rate <= 53, rate
        agent = [f for f in media.received if np.sqrt(np.mean(
            rtp_decode(f.payload).astype(np.float64) ** 2)) > 200]
        assert len(agent) > 50, "no agent speech came back"

        # Receive side: RFC 3550 statistics saw the impairments.
        stats = h.app.stasis.finished[-1].rtp_statistics
        assert stats is not None
        assert stats.jitter_buffer.duplicates == 2
        assert stats.jitter_buffer.lost == 3
        assert stats.reception.lost == 1  # RFC 3550 A.3: 3 lost minus 2 duplicates
        assert _metric(h.app, "callbridge_frames_dropped_total", {"direction": "inbound",
                                                                  "reason": "duplicate"}) == 2
        assert _metric(h.app, "callbridge_calls_total", {"transport": "rtp", "outcome": "caller_hangup"}) == 1
        assert media_start["type"] == "StasisStart"
    finally:
        await h.close()


def rtp_decode(payload: bytes) -> np.ndarray:
    from media import g711

    return g711.ulaw_decode(payload)
