"""``/ws/audio/{sip_number}``: the plain WebSocket audio endpoint existing clients use.

The wire rules are in ``sip.ws_audio``. Agent audio goes back in 20 ms frames, one per 20 ms (the
call's pacer), whatever frame length the client uses: a client that plays what it receives needs
no particular size, and 20 ms keeps the first agent audio 20 ms earlier than 40 ms frames would.

Authentication: the tenant's media token (``bridge.security.credentials``) as
``Authorization: Bearer``, as the subprotocol ``callbridge.bearer.<token>`` offered beside
``callbridge`` (browsers), or as ``?token=``. It is checked before the upgrade: a request that
needs one and lacks it gets 401, one with a wrong token 403, and no WebSocket is opened.
"""

from __future__ import annotations

import logging

from aiohttp import WSMsgType, web

from bridge.core.call import Call, CallInfo
from bridge.core.intake import CallerIntake
from bridge.ops.metrics import Metrics
from bridge.security import credentials
from bridge.security.sources import Refusal as SourceRefusal
from bridge.wsmedia.leg import (
    Clock,
    MediaEndpoint,
    WebSocketLeg,
    is_closing,
    route_call,
    socket_error_reason,
)
from media.codec import FRAME_MS, AudioFormat, Encoding
from sip import ws_audio as wsa
from sip.ws_audio import CloseCode
from tenants.config import TenantError
from tenants.directory import DirectoryError, Resolution

log = logging.getLogger(__name__)

TRANSPORT = "ws_audio"


def audio_format(fmt: wsa.StreamFormat) -> AudioFormat:
    encoding = Encoding.SLIN if fmt.encoding is wsa.SampleEncoding.PCM16 else Encoding.ULAW
    return AudioFormat(encoding, fmt.rate_hz)


class WsAudioLeg(WebSocketLeg):
    """Agent audio as TEXT (base64) or BINARY frames, the kind the client sends."""

    transport = TRANSPORT

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        audio_format: AudioFormat,
        info: CallInfo,
        metrics: Metrics,
        clock: Clock,
        reply_kind: wsa.FrameKind,
    ) -> None:
        super().__init__(ws, request, audio_format, info, metrics, clock)
        self.reply_kind = reply_kind
        self._client_kind_known = False

    def client_sent(self, kind: wsa.FrameKind) -> None:
        # The first audio frame decides; a client that mixes kinds keeps getting the first one.
        if not self._client_kind_known:
            self._client_kind_known = True
            self.reply_kind = kind

    async def send_audio(self, payload: bytes) -> None:
        message: str | bytes = wsa.audio_text(payload) if self.reply_kind is wsa.FrameKind.TEXT else payload
        await self._send_audio_message(message, FRAME_MS)


class WsAudioEndpoint(MediaEndpoint):
    transport = TRANSPORT
    protocols = (credentials.MEDIA_SUBPROTOCOL,)

    async def _check_request(self, request: web.Request) -> web.StreamResponse | None:
        try:
            resolution = await self.switchboard.route(request.match_info["sip_number"])
        except (DirectoryError, TenantError, TimeoutError):
            return None  # the call set-up reports the lookup failure
        if resolution is None:
            return None  # refused as an unknown number after the upgrade, as before
        tenant = resolution.tenant
        if not self.tokens_required(tenant):
            return None
        presented = credentials.presented_tokens(request)
        if credentials.token_matches(presented, tenant):
            return None
        self._refused(SourceRefusal.AUTH, request)
        if not presented:
            return web.Response(status=401, text="media token required\n",
                                headers={"WWW-Authenticate": 'Bearer realm="callbridge"'})
        return web.Response(status=403, text="invalid media token\n")

    async def _converse(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        options = wsa.parse_options(request.query)
        if isinstance(options, wsa.InvalidMessage):
            await self._policy_violation(ws, options.reason)
            return
        dialled = request.match_info["sip_number"]
        routed = await route_call(self.switchboard, TRANSPORT, dialled)
        if not isinstance(routed, Resolution):
            code, reason = routed
            await self._refuse(ws, code, reason)
            return
        fmt = audio_format(options.format)
        info = CallInfo(TRANSPORT, routed.tenant, routed.number or dialled,
                        caller_id=request.query.get("from", "")[:64])
        leg = WsAudioLeg(ws, request, fmt, info, self.metrics, self.clock, reply_kind=options.reply_kind)

        async def read(call: Call, intake: CallerIntake) -> None:
            stream_format = options.format
            while True:
                msg = await ws.receive()
                if msg.type is WSMsgType.TEXT:
                    event = wsa.parse_text(msg.data, stream_format)
                elif msg.type is WSMsgType.BINARY:
                    event = wsa.parse_binary(msg.data, stream_format)
                elif is_closing(msg):
                    call.caller_hung_up()
                    return
                elif msg.type is WSMsgType.ERROR:
                    _, reason = socket_error_reason(msg)
                    leg.close_reason = reason
                    call.protocol_error(reason)
                    return
                else:  # PING/PONG are answered by aiohttp
                    continue
                if isinstance(event, wsa.InvalidMessage):
                    leg.close_reason = event.reason
                    call.protocol_error(event.reason)
                    return
                leg.client_sent(event.kind)
                intake.feed(event.payload)

        await self._bridge(ws, info, leg, read)


__all__ = ["TRANSPORT", "CloseCode", "WsAudioEndpoint", "WsAudioLeg"]
