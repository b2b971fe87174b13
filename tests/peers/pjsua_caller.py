"""A SIP caller built on pjsua2, run as its own process (PJSIP is one library instance per process,
and a daemon under test may hold that process's instance).

It does what SIPp and baresip do not: offers exactly the codec asked for (G.722 for a wideband
call), plays a WAV into the call and records what it hears, sends RFC 4733 digits on a schedule, and
accepts a REFER: the transfer target is called (a target on this caller's own address is answered
by this same process, standing in for the PBX extension), and PJSIP reports that call's progress to
the transferor in NOTIFYs. Everything it sees is printed to stdout as one JSON object per line::

    python -m tests.peers.pjsua_caller --uri sip:5511999990001@127.0.0.1:5060 --codec G722 \\
        --play speech16k.wav --record heard.wav --dtmf 3.0:5 --seconds 20

Over TLS (``--transport tls``, the URI with ``;transport=tls``) it checks the trunk's certificate
against ``--ca-file`` and may present its own (``--cert-file``, ``--key-file``); ``--srtp`` offers
SRTP (SDES) as PJSIP's account setting says.

Events: ``ready`` (its SIP port), ``state`` (the first call's INVITE states), ``media`` (codec,
clock rate, and the SRTP status line of PJSIP's call dump), ``dtmf_sent``, ``transfer_request``
(the Refer-To URI), ``target_call`` (the transfer target's call, answered), ``transfer_call_state``,
``disconnected`` (status code), ``done``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import pjsua2 as pj

CODECS = {"G722": "G722/16000", "PCMU": "PCMU/8000", "PCMA": "PCMA/8000"}
SRTP = {"disabled": pj.PJMEDIA_SRTP_DISABLED, "optional": pj.PJMEDIA_SRTP_OPTIONAL,
        "mandatory": pj.PJMEDIA_SRTP_MANDATORY}
POLL_MS = 10


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": round(time.monotonic(), 3), **fields}), flush=True)


class Caller:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ep = pj.Endpoint()
        self.account: Account | None = None
        self.call: OutgoingCall | None = None
        self.extra_calls: list[pj.Call] = []
        self.player: pj.AudioMediaPlayer | None = None
        self.recorder: pj.AudioMediaRecorder | None = None
        self.confirmed_at = 0.0
        self.done = False
        self.dtmf_plan = [(float(at), digits) for at, _, digits in (d.partition(":") for d in args.dtmf)]

    def start(self) -> int:
        ep = self.ep
        ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = False
        cfg.uaConfig.userAgent = "callbridge-test-caller"
        cfg.logConfig.level = 4 if self.args.log else 0
        cfg.logConfig.consoleLevel = 0
        if self.args.log:
            cfg.logConfig.filename = self.args.log
        cfg.medConfig.clockRate = 16000
        cfg.medConfig.sndClockRate = 16000
        cfg.medConfig.noVad = True
        ep.libInit(cfg)
        ep.audDevManager().setNullDev()
        tc = pj.TransportConfig()
        tc.port = 0
        tc.boundAddress = "127.0.0.1"
        kind = pj.PJSIP_TRANSPORT_UDP
        if self.args.transport == "tls":
            kind = pj.PJSIP_TRANSPORT_TLS
            tls = tc.tlsConfig
            tls.CaListFile = self.args.ca_file or ""
            tls.verifyServer = bool(self.args.ca_file)
            tls.certFile = self.args.cert_file or ""
            tls.privKeyFile = self.args.key_file or ""
            tls.method = pj.PJSIP_TLSV1_2_METHOD
        tid = ep.transportCreate(kind, tc)
        ep.libStart()
        port = int(ep.transportGetInfo(tid).localName.rsplit(":", 1)[-1])
        for codec in ep.codecEnum2():
            ep.codecSetPriority(codec.codecId, 0)
        ep.codecSetPriority(CODECS[self.args.codec], 255)
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:caller@127.0.0.1:{port}"
        acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
        acfg.mediaConfig.transportConfig.port = self.args.rtp_port
        acfg.mediaConfig.srtpUse = SRTP[self.args.srtp]
        acfg.mediaConfig.srtpSecureSignaling = 0  # the caller offers what it is told, on any transport
        self.account = Account(self)
        self.account.create(acfg, True)
        emit("ready", port=port)
        return port

    def dial(self) -> None:
        assert self.account is not None
        self.call = OutgoingCall(self, self.account)
        self.call.makeCall(self.args.uri, pj.CallOpParam(True))

    def run(self) -> None:
        deadline = time.monotonic() + self.args.seconds
        while not self.done and time.monotonic() < deadline:
            self.ep.libHandleEvents(POLL_MS)
            if self.confirmed_at and self.dtmf_plan and self.call is not None:
                at, digits = self.dtmf_plan[0]
                if time.monotonic() - self.confirmed_at >= at:
                    self.dtmf_plan.pop(0)
                    self.call.dialDtmf(digits)
                    emit("dtmf_sent", digits=digits)
        if not self.done:
            emit("timeout")

    def media_up(self, call: pj.Call, index: int) -> None:
        stream = call.getStreamInfo(index)
        # PJSIP's call dump has one "SRTP status:" line per stream (pjsua_dump.c): in use or not,
        # and the crypto suite.
        srtp = [line.strip() for line in call.dump(True, "").splitlines() if "SRTP status" in line]
        emit("media", codec=stream.codecName, rate_hz=int(stream.codecClockRate), srtp=" ".join(srtp))
        audio = call.getAudioMedia(index)
        if self.args.play and self.player is None:
            self.player = pj.AudioMediaPlayer()
            self.player.createPlayer(self.args.play, pj.PJMEDIA_FILE_NO_LOOP)
            self.player.startTransmit(audio)
        if self.args.record and self.recorder is None:
            self.recorder = pj.AudioMediaRecorder()
            self.recorder.createRecorder(self.args.record)
            audio.startTransmit(self.recorder)

    def stop(self) -> None:
        self.ep.hangupAllCalls()
        for _ in range(30):
            self.ep.libHandleEvents(POLL_MS)
        # Every PJSIP object goes before the library does.
        self.player = self.recorder = None
        self.call = None
        self.extra_calls.clear()
        self.account = None
        self.ep.libDestroy()
        emit("done")


class OutgoingCall(pj.Call):  # type: ignore[misc]
    def __init__(self, caller: Caller, account: pj.Account, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(account, call_id)
        self.caller = caller

    def onCallState(self, prm: Any) -> None:
        info = self.getInfo()
        emit("state", state=info.stateText, status=int(info.lastStatusCode))
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and not self.caller.confirmed_at:
            self.caller.confirmed_at = time.monotonic()
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            emit("disconnected", status=int(info.lastStatusCode), reason=info.lastReason)
            self.caller.done = True

    def onCallMediaState(self, prm: Any) -> None:
        info = self.getInfo()
        for index, media in enumerate(info.media):
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                self.caller.media_up(self, index)
                return

    def onCallTransferRequest(self, prm: Any) -> None:
        # Accept (202): PJSIP calls the target and NOTIFYs the transferor of that call's progress.
        emit("transfer_request", target=prm.dstUri)
        assert self.caller.account is not None
        target_call = TransferCall(self.caller.account)
        self.caller.extra_calls.append(target_call)
        prm.newCall = target_call


class TransferCall(pj.Call):  # type: ignore[misc]
    """The call this caller places to the transfer target."""

    def onCallState(self, prm: Any) -> None:
        info = self.getInfo()
        emit("transfer_call_state", state=info.stateText, status=int(info.lastStatusCode))


class Account(pj.Account):  # type: ignore[misc]
    def __init__(self, caller: Caller) -> None:
        super().__init__()
        self.caller = caller

    def onIncomingCall(self, prm: Any) -> None:
        # The transfer target on this caller's own address: answer it.
        call = pj.Call(self, prm.callId)
        self.caller.extra_calls.append(call)
        emit("target_call", uri=call.getInfo().localUri)
        op = pj.CallOpParam(True)
        op.statusCode = 200
        call.answer(op)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", required=True, help="the Request-URI to call")
    parser.add_argument("--codec", choices=sorted(CODECS), default="PCMU", help="the only codec offered")
    parser.add_argument("--play", help="WAV file played into the call (mono PCM16)")
    parser.add_argument("--record", help="WAV file recording what the caller hears (16 kHz)")
    parser.add_argument("--dtmf", action="append", default=[], metavar="SECONDS:DIGITS",
                        help="RFC 4733 digits sent this long after the call is confirmed (repeatable)")
    parser.add_argument("--seconds", type=float, default=30.0, help="give up after this long")
    parser.add_argument("--rtp-port", type=int, default=0, help="first RTP port (0: any)")
    parser.add_argument("--log", help="PJSIP log file")
    parser.add_argument("--transport", choices=["udp", "tls"], default="udp", help="SIP transport")
    parser.add_argument("--srtp", choices=sorted(SRTP), default="disabled", help="SRTP use (SDES) of the offer")
    parser.add_argument("--ca-file", help="TLS: CA certificates the trunk's certificate must chain to")
    parser.add_argument("--cert-file", help="TLS: this caller's certificate (PEM)")
    parser.add_argument("--key-file", help="TLS: this caller's private key (PEM)")
    args = parser.parse_args(argv)
    caller = Caller(args)
    try:
        caller.start()
        caller.dial()
        caller.run()
    finally:
        caller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
