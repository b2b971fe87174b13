"""AudioSocket listener: Asterisk connects over TCP, sends the call's UUID, then audio.

The UUID is the only thing AudioSocket carries about the call; the dialled number, caller ID and
tenant were registered under it beforehand by the signalling side (FastAGI or ARI). A connection
with an unregistered UUID is refused with a HANGUP message. Toward Asterisk the daemon sends only
audio and hangup: any other kind makes Asterisk end the call (PROTOCOLS.md section 1).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from bridge.call import CallInfo, Outcome
from bridge.settings import AudioSocketSettings
from bridge.switchboard import PendingCall, Refusal, Switchboard
from media.codec import SLIN_8K, AudioFormat, Encoding
from sip import audiosocket as aso
from tenants.config import TransferTarget

log = logging.getLogger(__name__)

TRANSPORT = "audiosocket"
UUID_TIMEOUT = 5.0
READ_BYTES = 65536
# Past this much unsent audio toward Asterisk the peer is not reading: drop rather than buffer.
MAX_WRITE_BUFFER_BYTES = 32_000


class AudioSocketLeg:
    """The caller direction of one AudioSocket connection."""

    transport = TRANSPORT
    keepalive = True

    def __init__(
        self,
        protocol: aso.AudioSocketProtocol,
        writer: asyncio.StreamWriter,
        audio_format: AudioFormat,
        pending: PendingCall | None,
        on_drop: Any = None,
    ) -> None:
        self._protocol = protocol
        self._writer = writer
        self.audio_format = audio_format
        self._kind = aso.audio_kind_for_rate(audio_format.rate_hz) if audio_format.encoding is Encoding.SLIN \
            else aso.Kind.AUDIO
        self._pending = pending
        self._on_drop = on_drop
        self._closed = False

    def _flush(self) -> None:
        data = self._protocol.data_to_send()
        if data and not self._writer.is_closing():
            self._writer.write(b"".join(data))

    async def send_audio(self, payload: bytes) -> None:
        if self._closed or self._writer.is_closing():
            return
        transport = self._writer.transport
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
        if not self._writer.is_closing():
            self._protocol.send_hangup()
            self._flush()
            try:
                await self._writer.drain()
            except (ConnectionError, OSError):
                pass
            self._writer.close()

    async def transfer(self, target: TransferTarget) -> bool:
        # Over FastAGI the AGI session continues once AudioSocket() returns: hand it the target,
        # then end the AudioSocket leg.
        pending = self._pending
        if pending is None or pending.after_call.done():
            return False
        pending.after_call.set_result(target)
        await self.hangup()
        return True


class AudioSocketServer:
    def __init__(self, switchboard: Switchboard, settings: AudioSocketSettings) -> None:
        self.switchboard = switchboard
        self.settings = settings
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.settings.host, self.settings.port, limit=READ_BYTES
        )
        log.info("AudioSocket listening on %s:%d", self.settings.host, self.port)

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        self.stop_accepting()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, OSError) as exc:
            log.info("AudioSocket connection lost: %s", exc)
        except Exception:
            # The call boundary: a bug in one call never takes the listener down.
            log.error("AudioSocket connection failed", exc_info=True)
        finally:
            self._connections.discard(task)
            if not writer.is_closing():
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        protocol = aso.AudioSocketProtocol(aso.Side.SERVER)
        call_uuid = await self._read_uuid(reader, protocol)
        if call_uuid is None:
            return
        switchboard = self.switchboard
        pending = switchboard.claim(str(call_uuid))
        if pending is None:
            log.warning("AudioSocket connection with unregistered UUID refused")
            switchboard.refused(TRANSPORT, Refusal.UNKNOWN_CALL)
            await self._refuse(protocol, writer)
            return
        if switchboard.draining:
            switchboard.refused(TRANSPORT, Refusal.DRAINING)
            if not pending.after_call.done():
                pending.after_call.set_result(None)
            await self._refuse(protocol, writer)
            return
        audio_format = pending.audio_format or SLIN_8K
        drops = switchboard.metrics.frames_dropped.labels("outbound", "socket_backlog")
        leg = AudioSocketLeg(protocol, writer, audio_format, pending, on_drop=drops.inc)
        info = CallInfo(TRANSPORT, pending.resolution.tenant, pending.dialled, pending.caller_id,
                        call_id=str(call_uuid))
        try:
            call = switchboard.open_call(info, leg)
        except ValueError as exc:  # the tenant's model or audio settings cannot be served here
            log.error("cannot set up call for tenant %s: %s", info.tenant.slug, exc)
            switchboard.metrics.model_errors.labels(switchboard.endpoint.provider.value, "config").inc()
            if not pending.after_call.done():
                pending.after_call.set_result(None)
            await self._refuse(protocol, writer)
            return
        try:
            async with asyncio.TaskGroup() as tg:
                reader_task = tg.create_task(self._read_media(reader, protocol, call))
                await switchboard.run_call(call)
                reader_task.cancel()
        finally:
            if not pending.after_call.done():
                pending.after_call.set_result(None)

    async def _read_uuid(self, reader: asyncio.StreamReader, protocol: aso.AudioSocketProtocol) -> Any:
        try:
            async with asyncio.timeout(UUID_TIMEOUT):
                while True:
                    data = await reader.read(READ_BYTES)
                    if not data:
                        return None
                    protocol.receive_data(data)
                    for event in protocol.events_received():
                        if isinstance(event, aso.Uuid):
                            return event.uuid
                        if isinstance(event, aso.ProtocolError):
                            log.warning("AudioSocket handshake failed: %s", event.reason)
                            return None
        except TimeoutError:
            log.warning("AudioSocket peer sent no UUID within %.0f s", UUID_TIMEOUT)
            return None

    async def _read_media(self, reader: asyncio.StreamReader, protocol: aso.AudioSocketProtocol, call: Any) -> None:
        expected_rate = call.caller_format.rate_hz
        nominal = call.caller_format.encoding is not Encoding.SLIN
        # Audio that arrived in the same read as the UUID.
        pending_events = protocol.events_received()
        while True:
            for event in pending_events:
                if isinstance(event, aso.Audio):
                    # Kind 0x10 is also used for non-slin formats (its rate is nominal then).
                    if not nominal and event.rate_hz != expected_rate:
                        call.protocol_error(f"audio kind {event.kind:#04x} does not match the call's "
                                            f"{expected_rate} Hz format")
                        return
                    call.receive_audio(event.payload)
                elif isinstance(event, aso.Dtmf):
                    call.receive_dtmf(event.digit)
                elif isinstance(event, (aso.Closed, aso.Hangup)):
                    call.caller_hung_up()
                    return
                elif isinstance(event, aso.ErrorMessage):
                    call.log.warning("AudioSocket error message from Asterisk (code %s)", event.code)
                    call.caller_hung_up()
                    return
                elif isinstance(event, aso.ProtocolError):
                    call.protocol_error(event.reason)
                    return
                elif isinstance(event, aso.Unknown):
                    call.log.debug("ignoring AudioSocket kind %#04x", event.kind)
            try:
                data = await reader.read(READ_BYTES)
            except (ConnectionError, OSError):
                data = b""  # a reset from Asterisk is a hangup like any other
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            pending_events = protocol.events_received()

    async def _refuse(self, protocol: aso.AudioSocketProtocol, writer: asyncio.StreamWriter) -> None:
        protocol.send_hangup()
        writer.write(b"".join(protocol.data_to_send()))
        try:
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        writer.close()


__all__ = ["AudioSocketLeg", "AudioSocketServer", "Outcome"]
