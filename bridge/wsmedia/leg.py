"""WebSocket media on the HTTP server: what ``/ws/audio``, ``/ws/twilio`` and ``/ws/freeswitch`` share.

Each flavour (``bridge.wsmedia.ws_audio``, ``bridge.wsmedia.twilio``, ``bridge.wsmedia.freeswitch``) reads its
handshake, routes the dialled number through the switchboard, builds a caller leg and runs the
call with :func:`run_call`. Only the message codec and the playback control differ; tenant
routing, admission, the model session, barge-in, recording and metrics are the call core's.

Theory of operation
-------------------
Toward the daemon, a reader task takes one message at a time from aiohttp (which refuses any
message over ``MAX_MESSAGE_BYTES`` before buffering it) and hands the audio to a
:class:`bridge.core.intake.CallerIntake` (shared with AudioSocket), which passes it to the call in
20 ms frames at no more than real time, holds at most a second of backlog and drops the oldest
frame, counted, past that. A client that sends faster than real time is therefore not an error: it
loses audio, never memory.

Toward the caller, the call's pacer sends one 20 ms frame per 20 ms. A leg never blocks the pacer
on a slow peer: past ``MAX_WRITE_BUFFER_BYTES`` of unsent data the frame is dropped and counted.
WebSocket legs send no keep-alive silence. A leg whose audio messages are base64 in a JSON
envelope (Twilio's ``media``) has each one framed in one compiled call
(``media._native.text_frame``) and written to the transport itself, as aiohttp would have written
it: the socket is uncompressed (``compress=False``), aiohttp writes every frame of its own with one
synchronous ``write``, and nothing is written once closing has begun. Without the compiled module
the message goes through ``send_str``.

Closing: the socket is closed with a code that says how the call ended (:func:`close_code_for`):
1000 normal end, 1001 shutdown, 1008 malformed frame, 1009 oversize frame, 1011 model failure,
1013 busy or draining, 4004 unknown or inactive number (before any model connection), 4401
missing or invalid media token (before any model connection), 4408 no audio for too long
(``limits.first_audio_timeout`` after set-up, ``limits.audio_idle_timeout`` in the call).

Admission, before the upgrade (``MediaEndpoint.serve``): the HTTP listener has already refused
sources outside its allow-list; a browser ``Origin`` not listed gets 403, a source over its
set-up rate 429, and credentials the request itself carries are checked by the flavour
(``_check_request``: 401 or 403). Credentials that come later in the stream (FreeSWITCH metadata,
Twilio custom parameters) are checked once the tenant is known, before the call is opened.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import WSMsgType, web

from bridge.core.call import Call, CallInfo, Outcome, leg_problem
from bridge.core.intake import CallerIntake
from bridge.core.realtime import ModelError
from bridge.core.silence import SilenceWatch
from bridge.core.switchboard import Refusal, Switchboard
from bridge.ops.metrics import Metrics
from bridge.security import credentials
from bridge.security.exposure import media_tokens_required
from bridge.security.sources import Refusal as SourceRefusal
from bridge.security.sources import SourceGate, peer_host
from media.codec import AudioFormat
from media.playback import RemotePlayback
from sip.ws_audio import CloseCode
from tenants.config import TenantConfig, TenantError, TransferTarget
from tenants.directory import DirectoryError, Resolution

log = logging.getLogger(__name__)


def _native_text_frame() -> Callable[[bytes, bytes, bytes], bytes] | None:
    try:
        from media._native import text_frame
    except ImportError:  # installed without a C compiler: aiohttp frames each message
        return None
    return text_frame


TEXT_FRAME = _native_text_frame()

Clock = Callable[[], float]

# A media message carries tens of milliseconds of audio (a few kB); a quarter of a megabyte is
# more than two seconds of 24 kHz PCM16 even as base64. aiohttp refuses bigger frames from their
# header, before reading them, and closes with 1009.
MAX_MESSAGE_BYTES = 256 * 1024
# Past this much unsent data toward the peer it is not reading: drop frames rather than buffer.
MAX_WRITE_BUFFER_BYTES = 32_000
# A playback mark every this many agent frames (and at the end of each stretch of agent audio).
MARK_EVERY_FRAMES = 5
# On an agent hang-up, how long to wait for the far end to finish playing the goodbye.
FINAL_PLAYOUT_TIMEOUT = 2.5
CLOSE_TIMEOUT = 2.0  # for the peer's reply to our close frame
MAX_CLOSE_REASON_BYTES = 123  # RFC 6455 5.5: control frame payload <= 125 bytes, 2 for the code

_CLOSE_CODES = {
    Outcome.NORMAL: CloseCode.NORMAL,
    Outcome.CALLER_HANGUP: CloseCode.NORMAL,
    Outcome.AGENT_HANGUP: CloseCode.NORMAL,
    Outcome.TRANSFERRED: CloseCode.NORMAL,
    Outcome.TIMEOUT: CloseCode.NORMAL,
    Outcome.IDLE: CloseCode.IDLE,
    Outcome.SHUTDOWN: CloseCode.GOING_AWAY,
    Outcome.PROTOCOL_ERROR: CloseCode.POLICY_VIOLATION,
    Outcome.MODEL_ERROR: CloseCode.INTERNAL_ERROR,
    Outcome.MODEL_REJECTED_CONFIG: CloseCode.INTERNAL_ERROR,
    Outcome.ERROR: CloseCode.INTERNAL_ERROR,
    Outcome.REFUSED: CloseCode.TRY_AGAIN_LATER,
}


def close_code_for(outcome: Outcome | None) -> CloseCode:
    return _CLOSE_CODES.get(outcome or Outcome.NORMAL, CloseCode.NORMAL)


def new_socket(protocols: tuple[str, ...] = ()) -> web.WebSocketResponse:
    # No permessage-deflate: audio does not compress and the CPU is better spent elsewhere. No
    # heartbeat: media flows every 20 ms, and the peers (Twilio, FreeSWITCH) ping on their own.
    return web.WebSocketResponse(protocols=protocols, max_msg_size=MAX_MESSAGE_BYTES, compress=False,
                                 timeout=CLOSE_TIMEOUT)


async def close_socket(ws: web.WebSocketResponse, code: CloseCode, reason: str = "") -> None:
    if ws.closed:
        return
    message = reason.encode("utf-8")[:MAX_CLOSE_REASON_BYTES]
    try:
        await ws.close(code=int(code), message=message)
    except (ConnectionError, OSError) as exc:
        log.debug("closing WebSocket failed: %s", exc)


def socket_error_reason(msg: Any) -> tuple[CloseCode, str]:
    """Why aiohttp failed a connection (an ERROR message), as the code it closed with."""
    code = getattr(msg.data, "code", None)
    if code == CloseCode.MESSAGE_TOO_BIG:
        return CloseCode.MESSAGE_TOO_BIG, f"message over {MAX_MESSAGE_BYTES} bytes"
    return CloseCode.POLICY_VIOLATION, f"WebSocket protocol error: {type(msg.data).__name__}"


def is_closing(msg: Any) -> bool:
    return msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)


async def route_call(
    switchboard: Switchboard, transport: str, dialled: str
) -> Resolution | tuple[CloseCode, str]:
    """The tenant for ``dialled``, or the close code and reason refusing the call."""
    if switchboard.draining:
        switchboard.refused(transport, Refusal.DRAINING, dialled=dialled)
        return CloseCode.TRY_AGAIN_LATER, "service draining"
    try:
        resolution = await switchboard.route(dialled)
    except (DirectoryError, TenantError, TimeoutError) as exc:
        log.error("%s: tenant lookup failed: %s", transport, exc)
        switchboard.refused(transport, Refusal.LOOKUP_FAILED, dialled=dialled)
        return CloseCode.INTERNAL_ERROR, "tenant lookup failed"
    if resolution is None:
        switchboard.refused(transport, Refusal.UNKNOWN_NUMBER, dialled=dialled)
        return CloseCode.UNKNOWN_NUMBER, "unknown number"
    refusal = switchboard.admit(resolution.tenant)
    if refusal is not None:
        switchboard.refused(transport, refusal, dialled=dialled, tenant=resolution.tenant)
        return CloseCode.TRY_AGAIN_LATER, refusal.value
    return resolution


class WebSocketLeg:
    """What the WebSocket caller legs share: non-blocking sends, playback marks, closing.

    Subclasses set ``transport`` and implement ``send_audio``; those whose far end echoes playback
    marks set ``marks`` and implement ``_mark_message``.
    """

    transport = "websocket"
    keepalive = False  # a WebSocket peer does not hang up on silence
    marks = False

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        audio_format: AudioFormat,
        info: CallInfo,
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self.ws = ws
        self._request = request
        self.audio_format = audio_format
        self.info = info
        self._clock = clock
        self._dropped = metrics.frames_dropped.labels("outbound", "socket_backlog")
        self.playback = RemotePlayback()
        self._frames_since_mark = 0
        self._awaiting_playout = False
        self._played_out = asyncio.Event()
        self.close_reason = ""

    # ----------------------------------------------------------------- sending
    def _backlogged(self) -> bool:
        transport = self._request.transport
        return transport is None or transport.get_write_buffer_size() > MAX_WRITE_BUFFER_BYTES

    async def _send(self, message: str | bytes, *, droppable: bool = True) -> bool:
        """Send one message; False when it was dropped (peer not reading, or gone)."""
        ws = self.ws
        if ws.closed:
            return False
        if droppable and self._backlogged():
            self._dropped.inc()
            return False
        try:
            if isinstance(message, str):
                await ws.send_str(message)
            else:
                await ws.send_bytes(message)
        except (ConnectionError, OSError):
            # The peer went away mid-send; the reader sees the close and ends the call.
            return False
        return True

    def _write_audio_frame(self, frame: bytes, duration_ms: float) -> None:
        """Write one audio message framed here (``TEXT_FRAME``) straight to the transport and do
        what ``_audio_sent`` does after it. A mark that falls due is framed here too and goes in
        the same write, right behind the audio, as ``_place_mark`` would have sent it. The audio
        is dropped when ``_send`` would have dropped it (peer not reading, or gone)."""
        assert TEXT_FRAME is not None
        ws = self.ws
        transport = self._request.transport
        if ws.closed or transport is None or transport.is_closing() or ws.compress:
            return
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER_BYTES:
            self._dropped.inc()
            return
        playback = self.playback
        playback.sent(self._clock(), duration_ms)
        if self.marks:
            self._frames_since_mark += 1
            if self._frames_since_mark >= MARK_EVERY_FRAMES:
                self._frames_since_mark = 0
                name = playback.place_mark(self._clock())
                if name is not None:
                    # JSON escapes anything beyond ASCII, which is all a built frame may carry.
                    frame += TEXT_FRAME(self._mark_message(name).encode("ascii"), b"", b"")
        transport.write(frame)

    async def _send_audio_message(self, message: str | bytes, duration_ms: float) -> None:
        if await self._send(message):
            await self._audio_sent(duration_ms)

    async def _audio_sent(self, duration_ms: float) -> None:
        """Bookkeeping once an audio message is out: playback position, and a mark when due."""
        self.playback.sent(self._clock(), duration_ms)
        if self.marks:
            self._frames_since_mark += 1
            if self._frames_since_mark >= MARK_EVERY_FRAMES:
                await self._place_mark()

    async def send_audio(self, payload: bytes) -> None:
        raise NotImplementedError

    # ----------------------------------------------------------------- playback marks
    def _mark_message(self, name: str) -> str:
        raise NotImplementedError

    async def _place_mark(self) -> str | None:
        name = self.playback.place_mark(self._clock())
        self._frames_since_mark = 0
        if name is not None:
            await self._send(self._mark_message(name), droppable=False)
        return name

    async def end_of_segment(self) -> None:
        if self.marks:
            await self._place_mark()

    def mark_echoed(self, name: str) -> None:
        self.playback.echoed(name, self._clock())
        if self._awaiting_playout and self.playback.pending_marks == 0:
            self._played_out.set()

    def unplayed_ms(self) -> float:
        return self.playback.unplayed_ms(self._clock())

    def _forget_playback(self) -> None:
        """The far end dropped its queue (barge-in): outstanding marks say nothing any more."""
        self.playback.clear()
        self._frames_since_mark = 0

    # ----------------------------------------------------------------- CallerLeg
    async def clear_playback(self) -> None:
        return None

    async def transfer(self, target: TransferTarget) -> bool:
        # A media stream has no call control; the carrier's or PBX's API would be needed.
        return False

    async def _before_close(self) -> None:
        return None

    async def hangup(self) -> None:
        outcome = self.info.outcome
        if self.marks and outcome in (Outcome.AGENT_HANGUP, Outcome.NORMAL, Outcome.TIMEOUT) \
                and self.playback.delay is not None:
            # The far end echoes marks: let it play the goodbye it holds before the stream goes.
            await self._place_mark()
            if self.playback.pending_marks:
                self._awaiting_playout = True
                try:
                    async with asyncio.timeout(FINAL_PLAYOUT_TIMEOUT):
                        await self._played_out.wait()
                except TimeoutError:
                    pass
        await self._before_close()
        reason = self.close_reason or (outcome or Outcome.NORMAL).value
        await close_socket(self.ws, close_code_for(outcome), reason)


async def run_call(
    switchboard: Switchboard,
    call: Call,
    intake: CallerIntake,
    reader: Coroutine[Any, Any, None],
) -> Outcome:
    """Run ``call`` with its socket reader, intake and silence watch beside it, in one TaskGroup."""
    limits = switchboard.settings.limits
    silence = intake.silence = SilenceWatch(call, limits.first_audio_timeout, limits.audio_idle_timeout,
                                            switchboard.clock)
    async with asyncio.TaskGroup() as tg:
        helpers = [tg.create_task(reader), tg.create_task(intake.run()), tg.create_task(silence.run())]
        outcome = await switchboard.run_call(call)
        for task in helpers:
            task.cancel()
    return outcome


class MediaEndpoint:
    """One WebSocket media flavour: ``serve`` upgrades the request and bridges the call.

    ``serve`` is the call boundary: whatever one connection does wrong is logged and ends that
    connection (1011 for a bug), never the HTTP server.
    """

    transport = "websocket"
    protocols: tuple[str, ...] = ()

    def __init__(self, switchboard: Switchboard, gate: SourceGate | None = None) -> None:
        self.switchboard = switchboard
        self.metrics = switchboard.metrics
        self.clock = switchboard.clock
        self.security = switchboard.settings.security
        # How long a peer may take to send its first message (Twilio "start", FreeSWITCH metadata).
        self.setup_timeout = switchboard.settings.limits.setup_timeout
        self.gate = gate  # the HTTP listener's: per-source set-up rate

    def _refused(self, reason: SourceRefusal, request: web.Request) -> None:
        host = peer_host(request.transport.get_extra_info("peername") if request.transport else None)
        if self.gate is not None:
            self.gate.refused(reason, host)
        else:
            self.metrics.connections_refused.labels("http", reason.value).inc()

    async def _admit_request(self, request: web.Request) -> web.StreamResponse | None:
        """The refusal to answer instead of upgrading, or None to go on."""
        if not credentials.origin_allowed(request, self.security.allowed_origins):
            self._refused(SourceRefusal.ORIGIN, request)
            return web.Response(status=403, text="origin not allowed\n")
        if self.gate is not None:
            peer = request.transport.get_extra_info("peername") if request.transport else None
            if not self.gate.allows_setup(peer_host(peer)):
                return web.Response(status=429, text="too many call set-ups from this address\n",
                                    headers={"Retry-After": "1"})
        return await self._check_request(request)

    async def _check_request(self, request: web.Request) -> web.StreamResponse | None:
        """Credentials the upgrade request itself carries; a flavour's refusal, or None."""
        return None

    def tokens_required(self, tenant: TenantConfig) -> bool:
        return credentials.token_required(tenant, media_tokens_required(self.switchboard.settings))

    async def _authorized(self, ws: web.WebSocketResponse, request: web.Request, tenant: TenantConfig,
                          presented: list[str], *, required: bool = False) -> bool:
        """Whether the call may go on for ``tenant`` with the tokens presented (needed when the
        tenant or deployment says so, or ``required``); when not, the refusal is counted and the
        socket closed with 4401."""
        if not (required or self.tokens_required(tenant)) or credentials.token_matches(presented, tenant):
            return True
        self._refused(SourceRefusal.AUTH, request)
        await close_socket(ws, CloseCode.UNAUTHORIZED,
                           "invalid media token" if presented else "media token required")
        return False

    async def serve(self, request: web.Request) -> web.StreamResponse:
        refusal = await self._admit_request(request)
        if refusal is not None:
            return refusal
        ws = new_socket(self.protocols)
        await ws.prepare(request)
        try:
            await self._converse(ws, request)
        except asyncio.CancelledError:
            await close_socket(ws, CloseCode.GOING_AWAY, "shutting down")
            raise
        except (ConnectionError, OSError) as exc:
            log.info("%s connection lost: %s", self.transport, exc)
        except Exception:
            log.error("%s connection failed", self.transport, exc_info=True)
            await close_socket(ws, CloseCode.INTERNAL_ERROR, "internal error")
        await close_socket(ws, CloseCode.NORMAL)
        return ws

    async def _converse(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        raise NotImplementedError

    async def _bridge(
        self,
        ws: web.WebSocketResponse,
        info: CallInfo,
        leg: WebSocketLeg,
        read: Callable[[Call, CallerIntake], Coroutine[Any, Any, None]],
    ) -> Outcome | None:
        """Run the call on ``leg`` with ``read`` feeding it; close the socket with the outcome.

        The model session is opened before the call starts, as soon as the stream has said which
        number it is for: a model that cannot be reached closes the stream at once (1011, reason
        ``model unavailable``; a Twilio ``<Connect><Stream>`` then goes on to the next verb)."""
        switchboard = self.switchboard
        try:
            problem = leg_problem(info.tenant, leg.audio_format)
            if problem is not None:
                raise ValueError(problem)
            session = await switchboard.open_model(info.tenant)
        except ModelError as exc:
            log.warning("%s: model unavailable (%s); refusing the call", self.transport, exc)
            switchboard.refused(info.transport, Refusal.MODEL_UNAVAILABLE, dialled=info.dialled,
                                caller_id=info.caller_id, tenant=info.tenant)
            await close_socket(ws, CloseCode.INTERNAL_ERROR, "model unavailable")
            return Outcome.REFUSED
        except ValueError as exc:  # the tenant names a provider this deployment cannot serve
            log.error("%s: cannot set up call for tenant %s: %s", self.transport, info.tenant.slug, exc)
            self.metrics.model_errors.labels(switchboard.endpoint.provider.value, "config").inc()
            await close_socket(ws, CloseCode.INTERNAL_ERROR, "the tenant cannot be served on this stream")
            return None
        try:
            call = self.switchboard.open_call(info, leg, session)
        except ValueError as exc:  # the tenant's model or audio settings cannot be served here
            log.error("%s: cannot set up call for tenant %s: %s", self.transport, info.tenant.slug, exc)
            self.metrics.model_errors.labels(self.switchboard.endpoint.provider.value, "config").inc()
            await session.close()
            await close_socket(ws, CloseCode.INTERNAL_ERROR, "the tenant cannot be served on this stream")
            return None
        intake = CallerIntake(call, self.metrics, self.clock)
        outcome = await run_call(self.switchboard, call, intake, read(call, intake))
        await close_socket(ws, close_code_for(outcome), leg.close_reason or outcome.value)
        return outcome

    async def _refuse(self, ws: web.WebSocketResponse, code: CloseCode, reason: str) -> None:
        await close_socket(ws, code, reason)

    async def _policy_violation(self, ws: web.WebSocketResponse, reason: str) -> None:
        log.warning("%s: closing connection: %s", self.transport, reason)
        await close_socket(ws, CloseCode.POLICY_VIOLATION, reason)
