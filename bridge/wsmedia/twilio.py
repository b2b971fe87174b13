"""``/ws/twilio``: Twilio Media Streams and the carriers that speak its format.

Point a bidirectional stream at the daemon (TwiML ``<Connect><Stream>``) and pass the dialled
number as a custom parameter named ``to`` (``From`` for the caller, optional)::

    <Response>
      <Connect>
        <Stream url="wss://callbridge.example.com/ws/twilio">
          <Parameter name="to" value="{{To}}"/>
          <Parameter name="from" value="{{From}}"/>
        </Stream>
      </Connect>
      <Hangup/>
    </Response>

Parameter names are matched without regard to case; ``called`` and ``dialled`` are accepted as
spellings of ``to``, ``caller`` of ``from``.

Authentication: with ``security.twilio_auth_tokens`` set, the upgrade request's
``X-Twilio-Signature`` is checked (``sip.twilio_signature``): a wrong one is refused with 403
before the upgrade, a valid one authenticates the stream. A stream without a signature (carriers
that do not sign, or no auth token configured) authenticates with the tenant's media token, in
the URL (``?token=``) or as a custom parameter named ``token``; it must when the tenant has one,
when the deployment requires media tokens, or when auth tokens are configured.

Messages (``sip.twilio``): ``connected`` is ignored, ``start`` routes the call, ``media`` carries
mu-law 8 kHz caller audio (only the ``inbound`` track is used), ``dtmf`` goes to the call,
``mark`` echoes tell what was played, ``stop`` ends the call. Toward Twilio: one ``media`` message
of 20 ms per 20 ms, a ``mark`` every ``MARK_EVERY_FRAMES`` frames and at the end of each stretch of
agent audio, ``clear`` on barge-in. Twilio plays the audio on its own clock after a jitter buffer;
its mark echoes give the call what was heard (``media.playback``), so a barge-in truncates the
agent's item at what the caller heard, not at what was sent. Ending the call closes the socket;
Twilio then carries on with the TwiML after ``<Connect>`` (``<Hangup/>`` above).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from aiohttp import WSMsgType, web

from bridge.core.call import Call, CallInfo
from bridge.core.intake import CallerIntake
from bridge.core.switchboard import Refusal
from bridge.ops.metrics import Metrics
from bridge.security import credentials
from bridge.security.sources import Refusal as SourceRefusal
from bridge.wsmedia.leg import (
    TEXT_FRAME,
    Clock,
    MediaEndpoint,
    WebSocketLeg,
    is_closing,
    route_call,
    socket_error_reason,
)
from media.codec import ALAW_8K, FRAME_MS, ULAW_8K, AudioFormat
from sip import twilio as tw
from sip.ws_audio import CloseCode
from tenants.directory import Resolution

log = logging.getLogger(__name__)

TRANSPORT = "twilio"
DIALLED_PARAMETERS = ("to", "called", "dialled")
CALLER_PARAMETERS = ("from", "caller")
DTMF_DIGITS = frozenset("0123456789*#ABCD")
TOKEN_PARAMETERS = ("token",)
SIGNED = web.RequestKey("callbridge.twilio_signed", bool)  # the upgrade carried a valid signature
_FORMATS = {("audio/x-mulaw", 8000): ULAW_8K, ("audio/x-alaw", 8000): ALAW_8K}


def parameter(params: Mapping[str, str], names: tuple[str, ...]) -> str:
    folded = {k.lower(): v for k, v in params.items()}
    for name in names:
        value = folded.get(name, "").strip()
        if value:
            return value
    return ""


class TwilioLeg(WebSocketLeg):
    transport = TRANSPORT
    marks = True

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        audio_format: AudioFormat,
        info: CallInfo,
        metrics: Metrics,
        clock: Clock,
        stream_sid: str,
    ) -> None:
        super().__init__(ws, request, audio_format, info, metrics, clock)
        self.stream_sid = stream_sid
        self._media_head, self._media_tail = tw.media_message_parts(stream_sid)

    async def send_audio(self, payload: bytes) -> None:
        if TEXT_FRAME is None:
            await self._send_audio_message(tw.media_message(self.stream_sid, payload), FRAME_MS)
        else:
            self._write_audio_frame(TEXT_FRAME(self._media_head, payload, self._media_tail), FRAME_MS)

    def _mark_message(self, name: str) -> str:
        return tw.mark_message(self.stream_sid, name)

    async def clear_playback(self) -> None:
        self._forget_playback()
        await self._send(tw.clear_message(self.stream_sid), droppable=False)


class TwilioEndpoint(MediaEndpoint):
    transport = TRANSPORT

    async def _check_request(self, request: web.Request) -> web.StreamResponse | None:
        signed = credentials.twilio_signed(request, self.security)
        if signed is False:
            log.warning("%s: upgrade request with an invalid X-Twilio-Signature refused", TRANSPORT)
            self._refused(SourceRefusal.AUTH, request)
            return web.Response(status=403, text="invalid signature\n")
        request[SIGNED] = bool(signed)
        return None

    async def _wait_start(self, ws: web.WebSocketResponse) -> tw.Start | None:
        """Read up to the ``start`` message; None when the peer closed or broke the protocol."""
        try:
            async with asyncio.timeout(self.setup_timeout):
                while True:
                    msg = await ws.receive()
                    if is_closing(msg):
                        return None
                    if msg.type is WSMsgType.ERROR:
                        _, reason = socket_error_reason(msg)
                        log.warning("%s: closing connection: %s", TRANSPORT, reason)
                        return None
                    if msg.type is not WSMsgType.TEXT:
                        await self._policy_violation(ws, "Twilio media streams send only text frames")
                        return None
                    event = tw.parse_message(msg.data)
                    if isinstance(event, tw.Start):
                        return event
                    if isinstance(event, tw.InvalidMessage):
                        await self._policy_violation(ws, event.reason)
                        return None
                    if isinstance(event, tw.Stop):
                        return None
                    # connected, and anything a carrier sends before start, is not needed.
        except TimeoutError:
            await self._policy_violation(ws, f"no start message within {self.setup_timeout:.0f} s")
            return None

    async def _converse(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        start = await self._wait_start(ws)
        if start is None:
            return
        fmt = _FORMATS.get((start.media_format.encoding, start.media_format.sample_rate))
        if fmt is None or start.media_format.channels != 1:
            mf = start.media_format
            await self._policy_violation(
                ws, f"unsupported media format {mf.encoding[:40]} {mf.sample_rate} Hz x{mf.channels}")
            return
        dialled = parameter(start.custom_parameters, DIALLED_PARAMETERS)
        if not dialled:
            log.warning("%s: start without a 'to' custom parameter; refusing the call", TRANSPORT)
            self.switchboard.refused(TRANSPORT, Refusal.UNKNOWN_NUMBER)
            await self._refuse(ws, CloseCode.UNKNOWN_NUMBER, "no 'to' parameter")
            return
        routed = await route_call(self.switchboard, TRANSPORT, dialled)
        if not isinstance(routed, Resolution):
            code, reason = routed
            await self._refuse(ws, code, reason)
            return
        if not request.get(SIGNED, False):
            presented = credentials.presented_tokens(request)
            custom_token = parameter(start.custom_parameters, TOKEN_PARAMETERS)
            if custom_token:
                presented.append(custom_token)
            if not await self._authorized(ws, request, routed.tenant, presented,
                                          required=bool(self.security.twilio_auth_tokens)):
                return
        caller = parameter(start.custom_parameters, CALLER_PARAMETERS)
        info = CallInfo(TRANSPORT, routed.tenant, routed.number or dialled, caller_id=caller[:64])
        leg = TwilioLeg(ws, request, fmt, info, self.metrics, self.clock, start.stream_sid)

        async def read(call: Call, intake: CallerIntake) -> None:
            call.log.info("Twilio stream %s of call %s", start.stream_sid[:40], start.call_sid[:40])
            while True:
                msg = await ws.receive()
                if msg.type is WSMsgType.TEXT:
                    event = tw.parse_message(msg.data)
                elif is_closing(msg):
                    call.caller_hung_up()
                    return
                elif msg.type is WSMsgType.ERROR:
                    _, leg.close_reason = socket_error_reason(msg)
                    call.protocol_error(leg.close_reason)
                    return
                elif msg.type is WSMsgType.BINARY:
                    leg.close_reason = "Twilio media streams send only text frames"
                    call.protocol_error(leg.close_reason)
                    return
                else:
                    continue
                if isinstance(event, tw.Media):
                    if event.track in ("inbound", "inbound_track"):
                        intake.feed(event.payload)
                elif isinstance(event, tw.Mark):
                    leg.mark_echoed(event.name)
                elif isinstance(event, tw.Dtmf):
                    # The digit is told to the model in words: only a real keypad digit may pass.
                    if len(event.digit) == 1 and event.digit in DTMF_DIGITS:
                        call.receive_dtmf(event.digit)
                    else:
                        call.log.warning("ignoring a dtmf event that is not a keypad digit")
                elif isinstance(event, tw.Stop):
                    call.caller_hung_up()
                    return
                elif isinstance(event, tw.InvalidMessage):
                    leg.close_reason = event.reason
                    call.protocol_error(event.reason)
                    return
                # connected, a repeated start, and unknown events are ignored.

        await self._bridge(ws, info, leg, read)


__all__ = ["TRANSPORT", "TwilioEndpoint", "TwilioLeg"]
