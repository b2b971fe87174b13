"""Simulated callers over the SIP trunk: a small SIP user agent client and an RTP sender per call.

What a trunk from a PBX does, and no more: INVITE over UDP with an SDP offer of PCMU (and
``telephone-event``), retransmitted on RFC 3261's timer A until a response comes, ACK of the 2xx
(or of a final error), RTP from its own socket at the frame timer's pace, and BYE at the end; BYE,
OPTIONS or a refresh from callbridge are answered 200. The load generator must not be PJSIP: the
daemon under test is, and two of the same stack would measure its agreement with itself.

A received RTP packet is timestamped in ``datagram_received`` and counts as voiced when any of its
mu-law octets is not one of the two codes of zero (PJSIP's media clock sends silence frames while
the agent is quiet, so RTP flows continuously).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any, cast

import numpy as np

from bench.load.callers import ScriptedCaller
from media import g711
from sip import rtp

CONNECT_TIMEOUT = 10.0
BYE_TIMEOUT = 5.0
T1 = 0.5  # RFC 3261 17.1.1.1: INVITE retransmission starts at T1 and doubles
_ULAW_SILENCE = frozenset((0xFF, 0x7F))
_SAMPLES = 160


class SipError(Exception):
    """The trunk refused the call or did not answer."""


class SipMessage:
    """A parsed SIP message: the start line, headers by lower-case name, and the body."""

    def __init__(self, start: str, headers: dict[str, list[str]], body: bytes) -> None:
        self.start = start
        self.headers = headers
        self.body = body

    @classmethod
    def parse(cls, data: bytes) -> SipMessage:
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("utf-8", errors="replace").split("\r\n")
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(_COMPACT.get(name.strip().lower(), name.strip().lower()), []).append(value.strip())
        return cls(lines[0], headers, body)

    def header(self, name: str) -> str:
        values = self.headers.get(name)
        return values[0] if values else ""

    @property
    def status(self) -> int:
        """The status code of a response, 0 for a request."""
        if not self.start.startswith("SIP/2.0 "):
            return 0
        return int(self.start.split(" ", 2)[1])

    @property
    def method(self) -> str:
        return "" if self.status else self.start.split(" ", 1)[0]


_COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
            "c": "content-type"}


def _sdp_media(body: bytes) -> tuple[str, int]:
    """The connection address and audio port of an SDP answer (RFC 4566)."""
    host, port = "", 0
    for line in body.decode("ascii", errors="replace").splitlines():
        if line.startswith("c=IN IP4 "):
            host = line[9:].split("/", 1)[0].strip()
        elif line.startswith("m=audio "):
            port = int(line.split()[1])
    if not host or not port:
        raise SipError("the SDP answer names no audio address")
    return host, port


class _SignallingProtocol(asyncio.DatagramProtocol):
    def __init__(self, caller: SipCaller) -> None:
        self.caller = caller
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data.strip():  # a bare CRLF is a keep-alive
            self.caller.sip_received(SipMessage.parse(data), addr)


class _MediaProtocol(asyncio.DatagramProtocol):
    def __init__(self, caller: SipCaller) -> None:
        self.caller = caller
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        now = time.monotonic()
        if rtp.is_rtcp(data) or len(data) < 12:
            return
        try:
            packet = rtp.RtpPacket.parse(data)
        except rtp.RtpError:
            return
        if packet.payload_type != rtp.PayloadType.PCMU:
            return
        self.caller.frame_received(now, any(b not in _ULAW_SILENCE for b in packet.payload))


class SipCaller(ScriptedCaller):
    """A PBX trunk placing one call to callbridge's SIP port."""

    transport = "sip"

    def __init__(self, sip_port: int, dialled: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sip_port = sip_port
        self.dialled = dialled.lstrip("+")
        self.call_id = f"{secrets.token_hex(8)}@bench"
        self.from_tag = secrets.token_hex(4)
        self.to_header = ""
        self.remote_target = ""
        self.cseq = 1
        self.sender = rtp.RtpSender(rtp.PayloadType.PCMU)
        self._sig: _SignallingProtocol | None = None
        self._media: _MediaProtocol | None = None
        self._local = ("127.0.0.1", 0)
        self._rtp_port = 0
        self._rtp_to: tuple[str, int] | None = None
        self._final: asyncio.Future[SipMessage] | None = None
        self._bye_answered: asyncio.Future[None] | None = None
        self._bye_sent = False

    # ------------------------------------------------------------------ messages
    def _send(self, text: str, body: bytes = b"") -> None:
        assert self._sig is not None and self._sig.transport is not None
        head = text.replace("\n", "\r\n") + f"Content-Length: {len(body)}\r\n\r\n"
        self._sig.transport.sendto(head.encode() + body, ("127.0.0.1", self.sip_port))

    def _request(self, method: str, uri: str, cseq: int, branch: str, extra: str = "", body: bytes = b"") -> None:
        host, port = self._local
        to = self.to_header or f"<sip:{self.dialled}@127.0.0.1:{self.sip_port}>"
        self._send(
            f"{method} {uri} SIP/2.0\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch={branch};rport\n"
            f"Max-Forwards: 70\n"
            f"From: <sip:55119{self.index:08d}@{host}:{port}>;tag={self.from_tag}\n"
            f"To: {to}\n"
            f"Call-ID: {self.call_id}\n"
            f"CSeq: {cseq} {method}\n"
            f"Contact: <sip:bench@{host}:{port}>\n"
            f"User-Agent: callbridge-bench\n{extra}",
            body)

    def _offer(self) -> bytes:
        host = self._local[0]
        session = secrets.randbelow(1 << 30)
        return (f"v=0\r\no=bench {session} {session} IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
                f"m=audio {self._rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
                "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n").encode()

    def _answer_request(self, msg: SipMessage, status: str = "200 OK", body: bytes = b"") -> None:
        vias = "".join(f"Via: {v}\n" for v in msg.headers.get("via", []))
        extra = "Content-Type: application/sdp\n" if body else ""
        self._send(
            f"SIP/2.0 {status}\n{vias}From: {msg.header('from')}\nTo: {msg.header('to')}\n"
            f"Call-ID: {msg.header('call-id')}\nCSeq: {msg.header('cseq')}\n"
            f"Contact: <sip:bench@{self._local[0]}:{self._local[1]}>\n{extra}", body)

    def sip_received(self, msg: SipMessage, addr: tuple[str, int]) -> None:
        if msg.status:
            cseq = msg.header("cseq")
            if cseq.endswith("INVITE"):
                if msg.status >= 200 and self._final is not None and not self._final.done():
                    self._final.set_result(msg)
                elif msg.status >= 200 and 200 <= msg.status < 300 and self.to_header:
                    self._ack(msg)  # a retransmitted 200: its ACK was lost
            elif cseq.endswith("BYE") and msg.status >= 200:
                if self._bye_answered is not None and not self._bye_answered.done():
                    self._bye_answered.set_result(None)
            return
        method = msg.method
        if method == "BYE":
            self._answer_request(msg)
            self.media_closed()
        elif method == "INVITE":  # a refresh or re-INVITE: the same media
            self._answer_request(msg, body=self._offer())
        elif method != "ACK":
            self._answer_request(msg)

    def _ack(self, ok: SipMessage) -> None:
        cseq = int(ok.header("cseq").split()[0])
        self._request("ACK", self.remote_target or f"sip:{self.dialled}@127.0.0.1:{self.sip_port}", cseq,
                      f"z9hG4bK{secrets.token_hex(6)}")

    # ------------------------------------------------------------------ the call
    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        _, sig = await loop.create_datagram_endpoint(lambda: _SignallingProtocol(self), local_addr=("127.0.0.1", 0))
        _, media = await loop.create_datagram_endpoint(lambda: _MediaProtocol(self), local_addr=("127.0.0.1", 0))
        self._sig, self._media = sig, media
        assert sig.transport is not None and media.transport is not None
        self._local = sig.transport.get_extra_info("sockname")[:2]
        self._rtp_port = media.transport.get_extra_info("sockname")[1]
        self._final = loop.create_future()
        uri = f"sip:{self.dialled}@127.0.0.1:{self.sip_port}"
        branch = f"z9hG4bK{secrets.token_hex(6)}"
        offer = self._offer()
        deadline = loop.time() + CONNECT_TIMEOUT
        interval = T1
        while not self._final.done():
            self._request("INVITE", uri, self.cseq, branch, "Content-Type: application/sdp\n", offer)
            try:
                await asyncio.wait_for(asyncio.shield(self._final), min(interval, max(0.0, deadline - loop.time())))
            except TimeoutError:
                if loop.time() >= deadline:
                    raise SipError("no final response to the INVITE") from None
                interval = min(2 * interval, 4.0)
        final = self._final.result()
        self.to_header = final.header("to")
        if final.status >= 300:
            self._request("ACK", uri, self.cseq, branch)  # RFC 3261 17.1.1.3: same branch
            raise SipError(f"INVITE answered {final.start}")
        contact = final.header("contact")
        self.remote_target = contact[contact.find("<") + 1 : contact.find(">")] if "<" in contact else contact
        self._rtp_to = _sdp_media(final.body)
        self._ack(final)

    def send_frame(self, payload: bytes) -> None:
        media = self._media
        if media is None or media.transport is None or self._rtp_to is None or media.transport.is_closing():
            return
        encoded = g711.ulaw_encode(np.frombuffer(payload, dtype=np.int16))
        media.transport.sendto(self.sender.packetize(encoded, _SAMPLES), self._rtp_to)

    async def close(self) -> None:
        try:
            if not self.result.closed_by_bridge and self.to_header:
                self.cseq += 1
                self._bye_answered = asyncio.get_running_loop().create_future()
                self._request("BYE", self.remote_target, self.cseq, f"z9hG4bK{secrets.token_hex(6)}")
                try:
                    await asyncio.wait_for(self._bye_answered, BYE_TIMEOUT)
                except TimeoutError:
                    raise SipError("no answer to BYE") from None
                self.result.status = "normal"
        finally:
            for proto in (self._sig, self._media):
                if proto is not None and proto.transport is not None:
                    proto.transport.close()
