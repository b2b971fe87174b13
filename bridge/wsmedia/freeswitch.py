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
* The module is told apart by the WebSocket subprotocol (``audio.drachtio.org`` /
  ``audio.jambonz.org``: mod_audio_fork, either build; none: mod_audio_stream), or by ``?module=``.
* How agent audio goes back is the metadata's ``playback`` (``?playback=`` stands in for it), which
  ``deploy/freeswitch/scripts/callbridge.lua`` writes after reading the installed build's usage:

  ================ ========== ================================ ==================================
  module           playback   agent audio                      barge-in
  ================ ========== ================================ ==================================
  ``audio_fork``   stream     BINARY L16 at the stream rate    ``killAudio`` + ``clearMarks``
                              (jambonz, bidirectional), marks
  ``audio_fork``   files      ``playAudio`` chunks of          ``killAudio`` (breaks the file;
                              ``FILE_CHUNK_MS`` with a mark    the script stops its queue)
  ``audio_stream`` files      ``streamAudio`` chunks, the same ``killAudio`` (reaches the script
                                                               as ``mod_audio_stream::json``)
  ``audio_stream`` stream     ``streamAudio`` every 20 ms      nothing to send: pacing keeps
                              (streaming forks), no marks      the module's queue short
  ================ ========== ================================ ==================================

  Not declared: ``stream``. Where marks flow, the first echo confirms that the caller hears the
  agent (logged once). None within ``STREAM_CHECK_SECONDS`` / ``FILES_CHECK_SECONDS``: an
  undeclared mod_audio_fork stream is a build that discards BINARY frames (drachtio's, or
  jambonz's started without its bidirectional arguments) and switches to files once; any other
  case ends the call (close 1008 "agent audio not played (<reason>)"). Each is logged and counted
  in ``callbridge_agent_audio_unplayed_total{transport,reason}`` (``binary_discarded``,
  ``files_not_played``; ``unconfirmed`` for an undeclared mod_audio_stream stream, which nothing
  can confirm).
* Authentication: the tenant's media token as ``?token=`` in the stream URL or ``token`` in the
  metadata, needed when the tenant has one or the deployment requires media tokens.
* Text from FreeSWITCH: mark echoes (the jambonz fork's own, or the script's for files) and DTMF
  (``{"event":"dtmf","dtmf":"5"}`` from the script's ``send_text``, jambonz ``passDtmf``) go to the
  call's common paths; other text is ignored. drachtio's build may join several messages in one
  frame (``sip.freeswitch.parse_events``).
* Ending the call: mod_audio_fork is sent ``disconnect`` (it raises its
  ``mod_audio_fork::disconnect`` event) and the socket is closed; both modules raise their
  ``::disconnect`` event when the daemon closes the socket, and the script hangs up once the
  files it holds have played.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable

from aiohttp import WSMsgType, web

from bridge.core.call import Call, CallInfo
from bridge.core.info import CallLogAdapter
from bridge.core.intake import CallerIntake
from bridge.core.switchboard import Refusal
from bridge.ops.metrics import Metrics
from bridge.security import credentials
from bridge.wsmedia.leg import (
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
# Agent audio sent as files goes in chunks this long: each is a file the script plays in turn,
# so a chunk is the latency the file path adds on top of streaming (and the most a build without
# a way to stop a file mid-way would play on after a barge-in).
FILE_CHUNK_MS = 200
# How long the first mark may take to come back before the far end is taken not to play what it
# is sent: jambonz echoes after its 80 ms pre-buffer has played; a file chunk echoes once played.
STREAM_CHECK_SECONDS = 2.0
FILES_CHECK_SECONDS = 3.0


class Module(enum.StrEnum):
    AUDIO_FORK = "audio_fork"
    AUDIO_STREAM = "audio_stream"


_UNPLAYED_HELP = {
    fs.Unplayed.BINARY_DISCARDED: (
        "this mod_audio_fork build discards binary frames (drachtio's build, or jambonz's started "
        "without its three bidirectional arguments)"
    ),
    fs.Unplayed.FILES_NOT_PLAYED: (
        "nothing played the files the module wrote (start the stream from "
        "deploy/freeswitch/scripts/callbridge.lua, which plays them)"
    ),
}


class FreeSwitchLeg(WebSocketLeg):
    """The caller leg over mod_audio_fork / mod_audio_stream, in the playback mode of the build.

    ``stream`` on mod_audio_fork: BINARY L16 frames, marks every few frames, ``killAudio`` and
    ``clearMarks`` on barge-in. ``stream`` on mod_audio_stream: ``streamAudio`` every 20 ms, no
    marks, no way to drop what the module holds. ``files``: chunks of ``FILE_CHUNK_MS`` as
    ``playAudio`` / ``streamAudio`` carrying a mark the dialplan script echoes once the file has
    played; ``killAudio`` on barge-in (the script stops the file and forgets the queue).

    Wherever marks flow, :class:`sip.freeswitch.PlaybackCheck` watches for the first echo. When
    none comes, a mod_audio_fork stream whose playback the metadata did not declare falls back
    to files once; otherwise the call is ended, logged and counted with the reason, rather than
    left silent.
    """

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
        playback: fs.Playback,
        *,
        declared: bool,
    ) -> None:
        super().__init__(ws, request, audio_format, info, metrics, clock)
        self.module = module
        self.declared = declared
        self._unplayed = metrics.agent_audio_unplayed
        self.on_unplayable: Callable[[str], None] | None = None
        self.log: logging.Logger | logging.LoggerAdapter[logging.Logger] = log
        self._chunk = bytearray()
        self._chunk_ms = 0
        self._check = fs.PlaybackCheck(STREAM_CHECK_SECONDS)
        self.playback_mode = playback
        self._set_mode(playback)
        self.failure: fs.Unplayed | None = None

    def _set_mode(self, playback: fs.Playback) -> None:
        self.playback_mode = playback
        self.marks = not (playback is fs.Playback.STREAM and self.module is Module.AUDIO_STREAM)
        self._check.within = FILES_CHECK_SECONDS if playback is fs.Playback.FILES else STREAM_CHECK_SECONDS

    @property
    def confirmed(self) -> bool:
        return self._check.confirmed

    # ----------------------------------------------------------------- agent audio
    async def send_audio(self, payload: bytes) -> None:
        if self.playback_mode is fs.Playback.FILES:
            self._chunk += payload
            self._chunk_ms += FRAME_MS
            if self._chunk_ms >= FILE_CHUNK_MS:
                await self._send_chunk()
        elif self.module is Module.AUDIO_FORK:
            await self._send_audio_message(payload, FRAME_MS)
        else:
            message = fs.stream_audio_message(payload, self.audio_format.rate_hz)
            await self._send_audio_message(message, FRAME_MS)
        if self._check.failed(self._clock()):
            await self._playback_failed()

    async def _send_chunk(self) -> None:
        if not self._chunk:
            return
        audio, duration_ms = bytes(self._chunk), self._chunk_ms
        self._chunk.clear()
        self._chunk_ms = 0
        now = self._clock()
        self.playback.sent(now, duration_ms)
        name = self.playback.place_mark(now)
        rate = self.audio_format.rate_hz
        if self.module is Module.AUDIO_FORK:
            message = fs.play_audio_message(audio, rate, mark=name)
        else:
            message = fs.stream_audio_message(audio, rate, mark=name)
        if await self._send(message) and name is not None:
            self._check.mark_placed(now)

    def _mark_message(self, name: str) -> str:
        return fs.mark_message(name)

    async def _place_mark(self) -> str | None:
        if self.playback_mode is fs.Playback.FILES:
            await self._send_chunk()  # the chunk carries its own mark
            return None
        name = await super()._place_mark()
        if name is not None:
            self._check.mark_placed(self._clock())
        return name

    async def end_of_segment(self) -> None:
        if self.playback_mode is fs.Playback.FILES:
            await self._send_chunk()
        else:
            await super().end_of_segment()
        if self._check.failed(self._clock()):
            await self._playback_failed()

    def mark_echoed(self, name: str) -> None:
        self._check.echoed()
        super().mark_echoed(name)

    def mark_cleared(self, name: str) -> None:
        """A mark dropped by a clear: the far end handles marks, which is all the check needs."""
        self._check.echoed()

    def unplayed_ms(self) -> float:
        return super().unplayed_ms() + self._chunk_ms

    # ----------------------------------------------------------------- the verdict
    async def poll(self) -> None:
        """Give the verdict when it is due, also while the agent is quiet (called on caller audio,
        which FreeSWITCH sends every 20 ms)."""
        if self._check.failed(self._clock()):
            await self._playback_failed()

    async def _playback_failed(self) -> None:
        if self.failure is not None:
            return
        if self.playback_mode is fs.Playback.STREAM and self.module is Module.AUDIO_FORK:
            reason = fs.Unplayed.BINARY_DISCARDED
        else:
            reason = fs.Unplayed.FILES_NOT_PLAYED
        self._unplayed.labels(TRANSPORT, reason.value).inc()
        waited = self._check.within
        if reason is fs.Unplayed.BINARY_DISCARDED and not self.declared:
            self.log.warning(
                "no mark came back within %.0f s of binary agent audio: %s; sending the agent as "
                "playAudio files from now on, which the dialplan must play",
                waited, _UNPLAYED_HELP[reason],
            )
            self._forget_playback()
            self._check.restart()
            self._set_mode(fs.Playback.FILES)
            return
        self.failure = reason
        self.close_reason = f"agent audio not played ({reason.value})"
        self.log.error("ending the call: no mark came back within %.0f s of agent audio: %s",
                       waited, _UNPLAYED_HELP[reason])
        if self.on_unplayable is not None:
            self.on_unplayable(self.close_reason)

    # ----------------------------------------------------------------- CallerLeg
    async def clear_playback(self) -> None:
        if self.playback_mode is fs.Playback.STREAM and self.module is Module.AUDIO_STREAM:
            return  # no command drops what mod_audio_stream holds; pacing keeps it short
        self._chunk.clear()
        self._chunk_ms = 0
        self._forget_playback()
        self._check.cleared()
        # mod_audio_fork: empties jambonz's buffer and breaks a playback; mod_audio_stream passes
        # it on as a mod_audio_stream::json event, on which the script stops the file.
        await self._send(fs.kill_audio_message(), droppable=False)
        if self.playback_mode is fs.Playback.STREAM:
            # killAudio empties the fork's audio buffer; its pending marks go the same way.
            await self._send(fs.clear_marks_message(), droppable=False)

    async def hangup(self) -> None:
        if self.playback_mode is fs.Playback.FILES and self.failure is None:
            await self._send_chunk()  # the goodbye's last words
        await super().hangup()

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
            async with asyncio.timeout(self.setup_timeout):
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
            await self._policy_violation(ws, f"nothing received within {self.setup_timeout:.0f} s")
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
            # mod_audio_fork (both builds) offers its subprotocol; mod_audio_stream offers none.
            module = Module.AUDIO_FORK if ws.ws_protocol else Module.AUDIO_STREAM
        query_playback = query.get("playback", "").strip().lower()
        if query_playback and query_playback not in tuple(fs.Playback):
            await self._policy_violation(ws, f"unknown playback {query_playback[:20]!r}")
            return

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
        presented = credentials.presented_tokens(request)
        meta_token = meta.fields.get(credentials.TOKEN_PARAMETER) if meta else None
        if isinstance(meta_token, str) and meta_token:
            presented.append(meta_token[:credentials.MAX_TOKEN_CHARS])
        if not await self._authorized(ws, request, routed.tenant, presented):
            return
        declared = (meta.playback if meta else None) or (fs.Playback(query_playback) if query_playback else None)
        playback = declared or fs.Playback.STREAM
        fmt = AudioFormat(Encoding.SLIN, rate)
        call_id = meta.call_id if meta else None
        info = CallInfo(TRANSPORT, routed.tenant, routed.number or dialled, caller_id=caller[:64])
        leg = FreeSwitchLeg(ws, request, fmt, info, self.metrics, self.clock, module, playback,
                            declared=declared is not None)

        async def read(call: Call, intake: CallerIntake) -> None:
            call.log.info("FreeSWITCH %s stream at %d Hz (subprotocol %s), agent audio as %s%s%s",
                          module.value, rate, ws.ws_protocol or "none",
                          "files" if playback is fs.Playback.FILES else "a stream",
                          "" if declared else " (not declared by the metadata)",
                          f", channel {call_id[:40]}" if call_id else "")
            if module is Module.AUDIO_STREAM and declared is None:
                call.log.warning(
                    "mod_audio_stream without \"playback\" in its metadata: agent audio goes as 20 ms "
                    "streamAudio messages, which only the streaming forks play (amigniter's build "
                    "writes each to a file that nothing plays); nothing comes back to confirm it")
                self.metrics.agent_audio_unplayed.labels(TRANSPORT, fs.Unplayed.UNCONFIRMED.value).inc()

            def unplayable(reason: str) -> None:
                call.protocol_error(reason)

            leg.on_unplayable = unplayable
            leg.log = CallLogAdapter(log, call.log.extra)
            if early_audio:
                if len(early_audio) % 2:
                    leg.close_reason = "odd-length L16 frame"
                    call.protocol_error(leg.close_reason)
                    return
                intake.feed(early_audio)
            confirmed = False

            def handle(event: fs.Event) -> bool:
                """One message from FreeSWITCH; False when it ends the call."""
                nonlocal confirmed
                if isinstance(event, fs.MarkEcho):
                    if event.cleared:
                        leg.mark_cleared(event.name)
                    else:
                        leg.mark_echoed(event.name)
                    if not confirmed and leg.confirmed:
                        confirmed = True
                        call.log.info("FreeSWITCH plays the agent audio (%s): first mark back after %.0f ms",
                                      leg.playback_mode.value, (leg.playback.delay or 0) * 1000)
                elif isinstance(event, fs.Dtmf):
                    call.receive_dtmf(event.digit)
                elif isinstance(event, fs.InvalidMessage):
                    leg.close_reason = event.reason
                    call.protocol_error(event.reason)
                    return False
                # Unknown text (send_text from the dialplan, ...) is not for the call.
                return True

            while True:
                msg = await ws.receive()
                if msg.type is WSMsgType.BINARY:
                    data = msg.data
                    if len(data) % 2:
                        leg.close_reason = f"L16 frame of {len(data)} bytes (odd)"
                        call.protocol_error(leg.close_reason)
                        return
                    intake.feed(data)
                    await leg.poll()
                elif msg.type is WSMsgType.TEXT:
                    for event in fs.parse_events(msg.data):
                        if not handle(event):
                            return
                elif is_closing(msg):
                    call.caller_hung_up()
                    return
                elif msg.type is WSMsgType.ERROR:
                    _, leg.close_reason = socket_error_reason(msg)
                    call.protocol_error(leg.close_reason)
                    return

        await self._bridge(ws, info, leg, read)


__all__ = ["TRANSPORT", "FreeSwitchEndpoint", "FreeSwitchLeg", "Module"]
