"""The SIP trunk over TLS with SRTP, against a pjsua2 caller in its own process.

The certificates are made for each test (trustme: a CA, the trunk's certificate for 127.0.0.1,
client certificates) and written under the test's temporary directory only.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trustme

from bridge.records.callstore import CallQuery
from tests.conftest import load_wav, loopback_settings
from tests.peers.baresip import read_wav, write_wav
from tests.peers.pjsua import PjsuaCaller, heard_greeting
from tests.servers import start_daemon, stop_daemon, until

pytest.importorskip("pjsua2", reason="pjsua2-python has wheels for Linux x86-64 only")
pytestmark = pytest.mark.realtime

DEMO = "5511999990001"
LANGUAGE = "pt"  # the example tenant's greeting language
HEARD_HZ = 16000  # the caller's recorder runs at its conference bridge's clock
FRAME = HEARD_HZ // 50


class Pki:
    """A CA, the trunk's certificate and key, and the CA file a caller trusts, as PEM files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = trustme.CA()
        server = self.ca.issue_cert("127.0.0.1")
        self.cert = folder / "trunk.pem"
        self.key = folder / "trunk.key"
        self.ca_file = folder / "ca.pem"
        server.cert_chain_pems[0].write_to_path(str(self.cert))
        server.private_key_pem.write_to_path(str(self.key))
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def client(self, name: str, ca: trustme.CA | None = None) -> tuple[Path, Path]:
        """A client certificate for ``name`` signed by ``ca`` (default: the trunk's CA)."""
        issued = (ca or self.ca).issue_cert(f"{name}.example")
        cert, key = self.folder / f"{name}.pem", self.folder / f"{name}.key"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        return cert, key


def _settings(tmp_path: Path, pki: Pki, rtp_port: int, **sip: Any) -> Any:
    tls = {"port": 0, "cert_file": str(pki.cert), "key_file": str(pki.key), **sip.pop("tls", {})}
    return loopback_settings(tmp_path, record=True, sip={
        "enabled": True, "host": "127.0.0.1", "port": 0, "rtp_port": rtp_port, "rtp_port_range": 100,
        "transports": ["tls"], "tls": tls, **sip})


def _uri(app: Any) -> str:
    return f"sip:{DEMO}@127.0.0.1:{app.sip.tls_port};transport=tls"


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


async def test_tls_call_with_mandatory_srtp_is_heard_both_ways(tmp_path, fixtures_dir):
    pki = Pki(tmp_path)
    speech, rate = load_wav(fixtures_dir / "speech" / "real_cmu_16k.wav")
    mic = np.concatenate([np.zeros(3 * rate, np.int16), speech[: 4 * rate], np.zeros(rate, np.int16)])
    write_wav(tmp_path / "microphone.wav", mic, rate)
    app, stop, task = await start_daemon(_settings(tmp_path, pki, 41800, srtp="mandatory"))
    caller = PjsuaCaller()
    try:
        await caller.start("--uri", _uri(app), "--transport", "tls", "--ca-file", str(pki.ca_file),
                           "--srtp", "mandatory", "--codec", "PCMU", "--play", str(tmp_path / "microphone.wav"),
                           "--record", str(tmp_path / "heard.wav"), "--seconds", "9", "--rtp-port", "41900")
        media = await caller.wait_for("media")
        # PJSIP's call dump on the caller's side: the stream runs SRTP with an SDES crypto suite.
        assert "SRTP status: Active" in media["srtp"] and "Crypto-suite: AES" in media["srtp"], media
        await until(lambda: app.switchboard.active_calls == 1, within=10)
        assert await caller.wait_closed() == 0, caller.events
        assert caller.named("disconnected"), caller.events
        await until(lambda: app.switchboard.active_calls == 0, within=10)
        assert app.simulator.sessions[-1].input_audio_ms > 5000
        await asyncio.wait_for(app.archive.wait_idle(), 10)
        page = await app.archive.search(CallQuery())
        record = next(c for c in page.calls if c.transport == "sip")
        assert record.dialled == "+5511999990001"
        wav = await app.archive.local_file(record, ".wav")
        assert wav is not None
    finally:
        await caller.close()
        await stop_daemon(stop, task)

    # The daemon's recording: the caller's channel carries the speech (decrypted and decoded),
    # silence before it.
    with wave.open(str(wav)) as w:
        channels, recorded_hz = w.getnchannels(), w.getframerate()
        stereo = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    assert channels == 2
    speaking = _rms(stereo[int(3.5 * recorded_hz) : int(6.5 * recorded_hz), 0])
    before = _rms(stereo[: int(2.5 * recorded_hz), 0])
    sent = _rms(speech[: 3 * rate])
    print(f"recording caller channel RMS: speech {speaking:.0f} (sent {sent:.0f}), before it {before:.0f}")
    assert speaking > 0.2 * sent and speaking > 10 * max(before, 1.0), (speaking, before, sent)
    # What the caller heard: the agent's greeting (envelope correlation with the simulator's).
    heard, heard_rate = read_wav(tmp_path / "heard.wav")
    assert heard_rate == HEARD_HZ
    lag, best, _ = heard_greeting(heard, HEARD_HZ, LANGUAGE)
    print(f"greeting heard over SRTP: envelope correlation {best:.3f} at lag {lag * 20} ms, "
          f"RMS {_rms(heard[lag * FRAME : lag * FRAME + 2 * HEARD_HZ]):.0f}")
    assert best > 0.8, best



async def test_plain_rtp_offer_to_mandatory_srtp_is_refused(tmp_path):
    pki = Pki(tmp_path)
    app, stop, task = await start_daemon(_settings(tmp_path, pki, 42000, srtp="mandatory"))
    caller = PjsuaCaller()
    try:
        await caller.start("--uri", _uri(app), "--transport", "tls", "--ca-file", str(pki.ca_file),
                           "--srtp", "disabled", "--codec", "PCMU", "--seconds", "8", "--rtp-port", "42100")
        # PJSIP refuses the offer (no a=crypto on RTP/AVP) before the INVITE reaches the trunk.
        gone = await caller.wait_for("disconnected")
        assert gone["status"] == 488, caller.events
        assert not caller.named("media") and await caller.wait_closed() == 0
        await asyncio.sleep(0.5)
        assert not app.simulator.sessions and app.switchboard.active_calls == 0
    finally:
        await caller.close()
        await stop_daemon(stop, task)


def _options(port: int, ca_file: Path, client: tuple[Path, Path], version: ssl.TLSVersion) -> str:
    """An OPTIONS request over TLS at one protocol version: the response's status line, or why
    there was none (PJSIP completes the handshake, then closes a connection whose client
    certificate it does not trust)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.load_cert_chain(*client)
    context.minimum_version = context.maximum_version = version
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    request = (f"OPTIONS sip:127.0.0.1:{port};transport=tls SIP/2.0\r\n"
               "Via: SIP/2.0/TLS 127.0.0.1:9;branch=z9hG4bK-probe;rport\r\nMax-Forwards: 70\r\n"
               "From: <sip:probe@127.0.0.1>;tag=probe\r\nTo: <sip:127.0.0.1>\r\nCall-ID: probe@127.0.0.1\r\n"
               "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
                context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            tls.sendall(request.encode())
            answer = tls.recv(4096)
    except (ssl.SSLError, OSError) as exc:
        return f"refused: {exc}"
    return answer.decode(errors="replace").split("\r\n", 1)[0] if answer else "refused: closed"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_tls_below_1_2_is_refused_and_client_certificates_are_checked(tmp_path):
    pki = Pki(tmp_path)
    trusted_cert, trusted_key = pki.client("pbx")
    stranger_cert, stranger_key = pki.client("stranger", trustme.CA())
    settings = _settings(tmp_path, pki, 42200, srtp="optional",
                         tls={"verify_client": True, "ca_file": str(pki.ca_file)})
    app, stop, task = await start_daemon(settings)
    try:
        port = app.sip.tls_port
        # The same client, trusted certificate in hand, at TLS 1.1 and at 1.2 (PJSIP's own default
        # would accept 1.1).
        client = (trusted_cert, trusted_key)
        old = await asyncio.to_thread(_options, port, pki.ca_file, client, ssl.TLSVersion.TLSv1_1)
        assert old.startswith("refused"), old
        assert await asyncio.to_thread(_options, port, pki.ca_file, client, ssl.TLSVersion.TLSv1_2) == (
            "SIP/2.0 200 OK")
        # A certificate from a CA the trunk does not trust: the connection is closed unanswered.
        stranger = await asyncio.to_thread(_options, port, pki.ca_file, (stranger_cert, stranger_key),
                                           ssl.TLSVersion.TLSv1_2)
        assert stranger.startswith("refused"), stranger

        async def call(*tls: str, srtp: str = "optional") -> PjsuaCaller:
            caller = PjsuaCaller()
            try:
                await caller.start("--uri", _uri(app), "--transport", "tls", "--ca-file", str(pki.ca_file),
                                   "--srtp", srtp, "--codec", "PCMU", "--seconds", "4", *tls)
                await caller.wait_closed()
            finally:
                await caller.close()
            return caller

        for refused in (await call("--cert-file", str(stranger_cert), "--key-file", str(stranger_key)),
                        await call()):
            assert not refused.named("media"), refused.events
            gone = refused.named("disconnected")[0]
            print(f"TLS client certificate refused: {gone['status']} {gone['reason']}")
            assert gone["status"] >= 400, refused.events
        assert not app.simulator.sessions
        accepted = await call("--cert-file", str(trusted_cert), "--key-file", str(trusted_key))
        media = accepted.named("media")
        assert media and "SRTP status: Active" in media[0]["srtp"], accepted.events
        await until(lambda: len(app.simulator.sessions) == 1, within=5)
        # srtp optional: a caller offering plain RTP is answered with plain RTP.
        plain = await call("--cert-file", str(trusted_cert), "--key-file", str(trusted_key), srtp="disabled")
        media = plain.named("media")
        assert media and "SRTP status: Not active" in media[0]["srtp"], plain.events
        await until(lambda: len(app.simulator.sessions) == 2, within=5)
    finally:
        await stop_daemon(stop, task)


async def test_srtp_over_udp_only_when_srtp_requires_tls_is_false(tmp_path):
    settings = loopback_settings(tmp_path, sip={
        "enabled": True, "host": "127.0.0.1", "port": 0, "rtp_port": 42400, "rtp_port_range": 100,
        "transports": ["udp"], "srtp": "mandatory", "srtp_requires_tls": False})
    app, stop, task = await start_daemon(settings)
    caller = PjsuaCaller()
    try:
        await caller.start("--uri", f"sip:{DEMO}@127.0.0.1:{app.sip.port}", "--srtp", "mandatory",
                           "--codec", "PCMU", "--seconds", "3", "--rtp-port", "42500")
        media = await caller.wait_for("media")
        assert "SRTP status: Active" in media["srtp"], media
        await until(lambda: len(app.simulator.sessions) == 1, within=5)
        assert await caller.wait_closed() == 0
    finally:
        await caller.close()
        await stop_daemon(stop, task)
