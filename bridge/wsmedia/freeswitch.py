"""``/ws/freeswitch``: FreeSWITCH mod_audio_fork (drachtio / jambonz) and mod_audio_stream.

Both modules connect to the daemon as WebSocket clients when the dialplan (or an ESL
application) runs ``uuid_audio_fork`` / ``uuid_audio_stream``; ``deploy/freeswitch/`` has the
dialplan and the exact commands. Message shapes are in ``sip.freeswitch``.

* The first TEXT frame is the command's ``metadata`` argument, a JSON object carrying the dialled
  number (``to``), the caller ID (``from``) and the stream's sample rate (``sampleRate``). Query
  parameters of the URL (``?to=...&from=...&rate=...``) are the fallback for each; the rate
  defaults to 8000 Hz. The stream must be ``mono`` (the caller alone: a ``mixed`` stream would feed
  the agent its own voice).
* Caller audio: BINARY frames of L16 little-endian at that rate (8, 16, 24, 32 or 48 kHz).
* The module is told apart by the WebSocket subprotocol, or by ``?module=`` when given:

  ============== ============================== ========================= =====================
  module         subprotocol                    agent audio               barge-in
  ============== ============================== ========================= =====================
  ``audio_fork`` ``audio.drachtio.org``,        BINARY L16 at the stream  ``killAudio``
                 ``audio.jambonz.org``          rate (bidirectional
                                                streaming)
  ``audio_stream`` none                         ``streamAudio`` JSON,     nothing to send
                                                raw L16 at the stream
                                                rate
  ============== ============================== ========================= =====================

  mod_audio_stream has no command to drop queued audio, so its barge-in relies on the pacing:
  the daemon sends one 20 ms frame per 20 ms, so the module never holds more than its jitter.
* Playback marks (``mark`` / echoed ``mark``) exist in the jambonz fork and the jambonz ``listen``
  endpoint only; other builds log every unknown command as an error. They are used with the
  ``audio.jambonz.org`` subprotocol, and with ``audio_fork`` when the URL says ``?marks=1``.
* DTMF forwarded as text (jambonz ``passDtmf``) goes to the call; other text is ignored.
* Ending the call: mod_audio_fork is sent ``disconnect`` (it raises its
  ``mod_audio_fork::disconnect`` event) and the socket is closed; mod_audio_stream raises
  ``mod_audio_stream::disconnect`` when the socket closes. The dialplan hangs up on that event.
"""

from __future__ import annotations

import asyncio
import enum
import logging

from aiohttp import WSMsgType, web

from bridge.core.call import Call, CallInfo
from bridge.core.intake import CallerIntake
from bridge.core.switchboard import Refusal
from bridge.ops.metrics import Metrics
from bridge.wsmedia.leg import (
    HANDSHAKE_TIMEOUT,
    Clock,
    MediaEndpoint,
    WebSocketLeg,
    is_closing,
    route_call,
    socket_error_reason,
)
from media.codec import FRAME_MS, AudioFormat, Encoding
from sip import freeswitch as fs
from sip.ws_audio import CloseCode
from tenants.directory import Resolution

log = logging.getLogger(__name__)

TRANSPORT = "freeswitch"
DEFAULT_RATE_HZ = 8000
STREAM_RATES_HZ = frozenset({8000, 16000, 24000, 32000, 48000})


class Module(enum.StrEnum):
    AUDIO_FORK = "audio_fork"
    AUDIO_STREAM = "audio_stream"


class FreeSwitchLeg(WebSocketLeg):
    transport = TRANSPORT

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        audio_format: AudioFormat,
        info: CallInfo,
        metrics: Metrics,
        clock: Clock,
        module: Module,
        marks: bool,
    ) -> None:
        super().__init__(ws, request, audio_format, info, metrics, clock)
        self.module = module
        self.marks = marks

    async def send_audio(self, payload: bytes) -> None:
        if self.module is Module.AUDIO_FORK:
            await self._send_audio_message(payload, FRAME_MS)
        else:
            message = fs.stream_audio_message(payload, self.audio_format.rate_hz)
            await self._send_audio_message(message, FRAME_MS)

    def _mark_message(self, name: str) -> str:
        return fs.mark_message(name)

    async def clear_playback(self) -> None:
        if self.module is not Module.AUDIO_FORK:
            return  # mod_audio_stream cannot drop queued audio; pacing keeps its queue short
        self._forget_playback()
        await self._send(fs.kill_audio_message(), droppable=False)
        if self.marks:
            # killAudio empties the fork's audio buffer; its pending marks go the same way.
            await self._send(fs.clear_marks_message(), droppable=False)

    async def _before_close(self) -> None:
        if self.module is Module.AUDIO_FORK:
            await self._send(fs.disconnect_message(), droppable=False)


def _query_rate(value: str | None) -> int | None:
    if not value:
        return None
    text = value.strip().lower()
    try:
        return int(text[:-1]) * 1000 if text.endswith("k") else int(text)
    except ValueError:
        return None


class FreeSwitchEndpoint(MediaEndpoint):
    transport = TRANSPORT
    protocols = (fs.AUDIO_FORK_SUBPROTOCOL, fs.JAMBONZ_SUBPROTOCOL)

    async def _first_message(self, ws: web.WebSocketResponse) -> fs.StreamMetadata | bytes | None:
        """The metadata frame, or the first audio when the module was started without metadata."""
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                while True:
                    msg = await ws.receive()
                    if msg.type is WSMsgType.TEXT:
                        meta = fs.parse_metadata(msg.data)
                        if isinstance(meta, fs.InvalidMessage):
                            await self._policy_violation(ws, meta.reason)
                            return None
                        return meta
                    if msg.type is WSMsgType.BINARY:
                        return bytes(msg.data)
                    if is_closing(msg):
                        return None
                    if msg.type is WSMsgType.ERROR:
                        _, reason = socket_error_reason(msg)
                        log.warning("%s: closing connection: %s", TRANSPORT, reason)
                        return None
        except TimeoutError:
            await self._policy_violation(ws, f"nothing received within {HANDSHAKE_TIMEOUT:.0f} s")
            return None

    async def _converse(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        query = request.query
        module_name = query.get("module", "").strip().lower()
        if module_name:
            try:
                module = Module(module_name)
            except ValueError:
                await self._policy_violation(ws, f"unknown module {module_name[:40]!r}")
                return
        else:
            module = Module.AUDIO_FORK if ws.ws_protocol else Module.AUDIO_STREAM
        marks = module is Module.AUDIO_FORK and (
            ws.ws_protocol == fs.JAMBONZ_SUBPROTOCOL or query.get("marks", "").lower() in ("1", "true", "yes")
        )

        first = await self._first_message(ws)
        if first is None:
            return
        meta = first if isinstance(first, fs.StreamMetadata) else None
        early_audio = first if isinstance(first, bytes) else b""
        dialled = (meta.dialled if meta else None) or query.get("to", "").strip()
        caller = (meta.caller if meta else None) or query.get("from", "").strip()
        rate = (meta.sample_rate_hz if meta else None) or _query_rate(query.get("rate")) or DEFAULT_RATE_HZ
        mix = (meta.mix_type if meta else None) or query.get("mix", "mono")
        if rate not in STREAM_RATES_HZ:
            await self._policy_violation(ws, f"unsupported sample rate {rate}")
            return
        if mix.lower() != "mono":
            await self._policy_violation(ws, f"the stream must be mono, not {mix[:20]!r}")
            return
        if not dialled:
            log.warning("%s: metadata names no dialled number ('to'); refusing the call", TRANSPORT)
            self.switchboard.refused(TRANSPORT, Refusal.UNKNOWN_NUMBER)
            await self._refuse(ws, CloseCode.UNKNOWN_NUMBER, "no 'to' in metadata")
            return
        routed = await route_call(self.switchboard, TRANSPORT, dialled)
        if not isinstance(routed, Resolution):
            code, reason = routed
            await self._refuse(ws, code, reason)
            return
        fmt = AudioFormat(Encoding.SLIN, rate)
        call_id = meta.call_id if meta else None
        info = CallInfo(TRANSPORT, routed.tenant, routed.number or dialled, caller_id=caller[:64])
        leg = FreeSwitchLeg(ws, request, fmt, info, self.metrics, self.clock, module, marks)

        async def read(call: Call, intake: CallerIntake) -> None:
            call.log.info("FreeSWITCH %s stream at %d Hz%s%s", module.value, rate,
                          ", with playback marks" if marks else "",
                          f", channel {call_id[:40]}" if call_id else "")
            if early_audio:
                if len(early_audio) % 2:
                    leg.close_reason = "odd-length L16 frame"
                    call.protocol_error(leg.close_reason)
                    return
                intake.feed(early_audio)
            while True:
                msg = await ws.receive()
                if msg.type is WSMsgType.BINARY:
                    data = msg.data
                    if len(data) % 2:
                        leg.close_reason = f"L16 frame of {len(data)} bytes (odd)"
                        call.protocol_error(leg.close_reason)
                        return
                    intake.feed(data)
                elif msg.type is WSMsgType.TEXT:
                    event = fs.parse_event(msg.data)
                    if isinstance(event, fs.MarkEcho):
                        if not event.cleared:
                            leg.mark_echoed(event.name)
                    elif isinstance(event, fs.Dtmf):
                        call.receive_dtmf(event.digit)
                    elif isinstance(event, fs.InvalidMessage):
                        leg.close_reason = event.reason
                        call.protocol_error(event.reason)
                        return
                    # Unknown text (send_text from the dialplan, ...) is not for the call.
                elif is_closing(msg):
                    call.caller_hung_up()
                    return
                elif msg.type is WSMsgType.ERROR:
                    _, leg.close_reason = socket_error_reason(msg)
                    call.protocol_error(leg.close_reason)
                    return

        await self._bridge(ws, info, leg, read)


__all__ = ["TRANSPORT", "FreeSwitchEndpoint", "FreeSwitchLeg", "Module"]
