"""AudioSocket listener: Asterisk connects over TCP, sends the call's UUID, then audio.

The UUID is the only thing AudioSocket carries about the call; the dialled number, caller ID and
tenant were registered under it beforehand by the signalling side (FastAGI or ARI). A connection
with an unregistered UUID is refused with a HANGUP message. Toward Asterisk the daemon sends only
audio and hangup: any other kind makes Asterisk end the call (PROTOCOLS.md section 1).

Each connection is an ``asyncio.Protocol``: bytes go straight from ``data_received`` through the
sans-I/O parser into the call, with no reader task to wake 50 times a second per call. The call
itself runs in a task of its own (held by the server), and ends when Asterisk hangs up, closes or
resets the connection, sends something that is not AudioSocket, or sends no audio for
``limits.first_audio_timeout`` after set-up / ``limits.audio_idle_timeout`` in the call (Asterisk
sends a frame every 20 ms while the channel is up; outcome ``idle``).

AudioSocket carries no credentials: a peer outside ``audiosocket.allow_from`` is disconnected as
soon as it connects, set-ups over the per-source rate likewise, and a UUID must have been
registered by FastAGI or ARI first.

Caller audio passes through a :class:`bridge.core.intake.CallerIntake`, as on the WebSocket legs: a
peer sending faster than real time has the excess held in a one-second backlog, then dropped
(oldest first) and counted, instead of reaching the model and taking the event loop from other
calls.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import replace
from typing import Any, cast

from bridge.core.call import Call, CallInfo, Outcome
from bridge.core.intake import CallerIntake
from bridge.core.silence import SilenceWatch
from bridge.core.switchboard import PendingCall, Refusal, Switchboard
from bridge.security.exposure import listeners
from bridge.security.sources import gate_for, peer_host
from bridge.settings import AudioSocketSettings
from media.codec import SLIN_8K, AudioFormat, Encoding
from sip import audiosocket as aso
from tenants.config import TransferTarget

log = logging.getLogger(__name__)

# The label of AudioSocket connections refused before a call is known (an unregistered UUID); a
# call's own label says how it was set up (PendingCall.transport: audiosocket_fastagi or
# audiosocket_ari).
TRANSPORT = "audiosocket"
# Past this much unsent audio toward Asterisk the peer is not reading: drop rather than buffer.
MAX_WRITE_BUFFER_BYTES = 32_000


class AudioSocketLeg:
    """The caller direction of one AudioSocket connection."""

    keepalive = True

    def __init__(
        self,
        protocol: aso.AudioSocketProtocol,
        connection: AudioSocketConnection,
        audio_format: AudioFormat,
        pending: PendingCall | None,
        on_drop: Any = None,
    ) -> None:
        self.transport = pending.transport if pending is not None else TRANSPORT
        self._protocol = protocol
        self._connection = connection
        self.audio_format = audio_format
        self._kind = aso.audio_kind_for_rate(audio_format.rate_hz) if audio_format.encoding is Encoding.SLIN \
            else aso.Kind.AUDIO
        self._pending = pending
        self._on_drop = on_drop
        self._closed = False

    def _flush(self) -> None:
        data = self._protocol.data_to_send()
        transport = self._connection.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data[0] if len(data) == 1 else b"".join(data))

    async def send_audio(self, payload: bytes) -> None:
        transport = self._connection.transport
        if self._closed or transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER_BYTES:
            if self._on_drop is not None:
                self._on_drop()
            return
        self._protocol.send_audio(payload, self._kind)
        self._flush()

    async def clear_playback(self) -> None:
        # Asterisk plays AudioSocket frames as they arrive: nothing is buffered remotely.
        return None

    async def hangup(self) -> None:
        if self._closed:
            return
        self._closed = True
        transport = self._connection.transport
        if transport is not None and not transport.is_closing():
            self._protocol.send_hangup()
            self._flush()
            await self._connection.drain()
            transport.close()

    async def transfer(self, target: TransferTarget) -> bool:
        # Over FastAGI the AGI session continues once AudioSocket() returns: hand it the target,
        # then end the AudioSocket leg.
        pending = self._pending
        if pending is None or pending.after_call.done():
            return False
        pending.after_call.set_result(target)
        await self.hangup()
        return True


class AudioSocketConnection(asyncio.Protocol):
    """One TCP connection from Asterisk: the UUID message, then the call's media.

    ``data_received`` runs the parser and hands each event to the call at once. The UUID must come
    within ``limits.setup_timeout`` seconds. EOF, a reset, a HANGUP or ERROR message and a protocol error
    all end the call; the first one wins and later input is ignored.
    """

    def __init__(self, server: AudioSocketServer) -> None:
        self._server = server
        self._parser = aso.AudioSocketProtocol(aso.Side.SERVER)
        self.transport: asyncio.Transport | None = None
        self._call: Call | None = None
        self._intake: CallerIntake | None = None
        self._media_over = False
        self._expected_rate = 0
        self._nominal = False
        self._uuid_timer: asyncio.TimerHandle | None = None
        self._writable: asyncio.Future[None] | None = None
        self._silence: SilenceWatch | None = None

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's do not subclass asyncio.Transport, hence no isinstance).
        self.transport = cast(asyncio.Transport, transport)
        gate = self._server.gate
        host = peer_host(transport.get_extra_info("peername"))
        if not (gate.allows_peer(host) and gate.allows_setup(host)):
            self._media_over = True
            self.transport.abort()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server.connections.add(self)
        self._uuid_timer = asyncio.get_running_loop().call_later(self._server.setup_timeout,
                                                                 self._uuid_timed_out)

    def data_received(self, data: bytes) -> None:
        if self._media_over and self._call is None:
            return  # refused: nothing from this peer is read
        parser = self._parser
        parser.receive_data(data)
        self._dispatch(parser.events_received())

    def eof_received(self) -> bool | None:
        self._parser.receive_eof()
        self._dispatch(self._parser.events_received())
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        # A reset from Asterisk is a hangup like any other.
        self._parser.receive_eof()
        self._dispatch(self._parser.events_received())
        self._server.connections.discard(self)
        if self._uuid_timer is not None:
            self._uuid_timer.cancel()
        self._resume()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._resume()

    def _resume(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    async def drain(self) -> None:
        """Wait until the transport takes more data (flow control), or the connection is gone."""
        if self._writable is not None:
            await asyncio.shield(self._writable)

    # ------------------------------------------------------------------ events
    def _dispatch(self, events: list[aso.Event]) -> None:
        for event in events:
            if self._media_over:
                return
            call = self._call
            if call is None:
                self._before_call(event)
                continue
            if isinstance(event, aso.Audio):
                # Kind 0x10 is also used for non-slin formats (its rate is nominal then).
                if not self._nominal and event.rate_hz != self._expected_rate:
                    self._media_over = True
                    call.protocol_error(f"audio kind {event.kind:#04x} does not match the call's "
                                        f"{self._expected_rate} Hz format")
                    return
                if self._silence is not None:
                    self._silence.heard()
                assert self._intake is not None
                self._intake.feed(event.payload)
            elif isinstance(event, aso.Dtmf):
                call.receive_dtmf(event.digit)
            elif isinstance(event, (aso.Closed, aso.Hangup)):
                self._media_over = True
                call.caller_hung_up()
            elif isinstance(event, aso.ErrorMessage):
                self._media_over = True
                call.log.warning("AudioSocket error message from Asterisk (code %s)", event.code)
                call.caller_hung_up()
            elif isinstance(event, aso.ProtocolError):
                self._media_over = True
                call.protocol_error(event.reason)
            elif isinstance(event, aso.Unknown):
                call.log.debug("ignoring AudioSocket kind %#04x", event.kind)

    def _before_call(self, event: aso.Event) -> None:
        if isinstance(event, aso.Uuid):
            if self._uuid_timer is not None:
                self._uuid_timer.cancel()
                self._uuid_timer = None
            self._start_call(event.uuid)
        elif isinstance(event, aso.ProtocolError):
            log.warning("AudioSocket handshake failed: %s", event.reason)
            self._media_over = True
            self._close()
        elif isinstance(event, aso.Closed):
            self._media_over = True  # gone before saying which call it is

    def _uuid_timed_out(self) -> None:
        self._uuid_timer = None
        if self._call is None and not self._media_over:
            log.warning("AudioSocket peer sent no UUID within %.0f s", self._server.setup_timeout)
            self._media_over = True
            self._close()

    def _start_call(self, call_uuid: Any) -> None:
        server = self._server
        switchboard = server.switchboard
        pending = switchboard.claim(str(call_uuid))
        if pending is None:
            log.warning("AudioSocket connection with unregistered UUID refused")
            switchboard.refused(TRANSPORT, Refusal.UNKNOWN_CALL)
            self._refuse()
            return
        if switchboard.draining:
            switchboard.refused(pending.transport, Refusal.DRAINING)
            self._refuse(pending)
            return
        audio_format = pending.audio_format or SLIN_8K
        drops = switchboard.metrics.frames_dropped.labels("outbound", "socket_backlog")
        leg = AudioSocketLeg(self._parser, self, audio_format, pending, on_drop=drops.inc)
        info = CallInfo(pending.transport, pending.resolution.tenant, pending.dialled, pending.caller_id,
                        call_id=str(call_uuid))
        # The model session the signalling side opened before answering, if it did.
        session, pending.session = pending.session, None
        try:
            call = switchboard.open_call(info, leg, session)
        except ValueError as exc:  # the tenant's model or audio settings cannot be served here
            log.error("cannot set up call for tenant %s: %s", info.tenant.slug, exc)
            if session is not None:
                server.run_in_background(session.close())
            switchboard.metrics.model_errors.labels(switchboard.endpoint.provider.value, "config").inc()
            self._refuse(pending)
            return
        self._call = call
        self._intake = intake = CallerIntake(call, switchboard.metrics, switchboard.clock)
        self._expected_rate = call.caller_format.rate_hz
        self._nominal = call.caller_format.encoding is not Encoding.SLIN
        server.run_in_background(self._run(call, intake, pending))

    async def _run(self, call: Call, intake: CallerIntake, pending: PendingCall) -> None:
        limits = self._server.switchboard.settings.limits
        silence = self._silence = SilenceWatch(call, limits.first_audio_timeout, limits.audio_idle_timeout,
                                               self._server.switchboard.clock)
        try:
            async with asyncio.TaskGroup() as tg:
                watch = tg.create_task(silence.run())
                intake_task = tg.create_task(intake.run())
                try:
                    await self._server.switchboard.run_call(call)
                finally:
                    watch.cancel()
                    intake_task.cancel()
        except Exception:
            # The call boundary: a bug in one call never takes the listener down.
            log.error("AudioSocket connection failed", exc_info=True)
        finally:
            self._media_over = True
            if not pending.after_call.done():
                pending.after_call.set_result(None)
            self._close()

    def _refuse(self, pending: PendingCall | None = None) -> None:
        self._media_over = True
        if pending is not None and not pending.after_call.done():
            pending.after_call.set_result(None)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self._parser.send_hangup()
            transport.write(b"".join(self._parser.data_to_send()))
            transport.close()  # after the buffered HANGUP is written

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class AudioSocketServer:
    def __init__(self, switchboard: Switchboard, settings: AudioSocketSettings) -> None:
        self.switchboard = switchboard
        self.settings = settings
        self._server: asyncio.Server | None = None
        self.connections: set[AudioSocketConnection] = set()
        self.gate = gate_for("audiosocket", settings, switchboard.settings, switchboard.metrics, switchboard.clock)
        self.setup_timeout = switchboard.settings.limits.setup_timeout
        self._calls: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: AudioSocketConnection(self), self.settings.host, self.settings.port
        )
        log.info("AudioSocket listening on %s:%d", self.settings.host, self.port)
        for exposure in listeners(self.switchboard.settings):
            if exposure.name == "audiosocket":
                log.info("%s", replace(exposure, port=self.port).line())

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    def run_in_background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def close(self) -> None:
        self.stop_accepting()
        for task in list(self._calls):
            task.cancel()
        if self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)
        for connection in list(self.connections):
            connection._close()
        if self._server is not None:
            await self._server.wait_closed()


__all__ = ["AudioSocketConnection", "AudioSocketLeg", "AudioSocketServer", "Outcome"]
