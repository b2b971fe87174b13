"""FastAGI server: how the dialled number and caller ID of an AudioSocket call reach the daemon.

The dialplan runs ``AGI(agi://callbridge:4573,${EXTEN})``. The daemon reads the dialled number
(first AGI argument, else the DNID, else the extension) and the caller ID, resolves the tenant,
registers the call under a fresh UUID and has Asterisk run ``AudioSocket(<uuid>,<host>:<port>)``
on the same channel. When AudioSocket() returns, the AGI session is still open: a transfer chosen
during the call is carried out by moving the channel to the target's context/extension.

The tenant's model session is opened before the channel is answered: when the model cannot be
reached the caller has not been answered yet and another instance (or the dialplan's fallback)
can take the call.

Outcomes are reported in the channel variable ``CALLBRIDGE_STATUS`` so that the dialplan can act:
``DONE``, ``TRANSFER``, ``UNKNOWN_NUMBER``, ``BUSY`` (capacity), ``UNAVAILABLE`` (draining or
tenant lookup failed: try another instance), ``MODEL_UNAVAILABLE`` (the model could not be
reached; the channel was not answered: try another instance).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from dataclasses import replace
from typing import Any

from bridge.core.realtime import ModelError
from bridge.core.switchboard import Refusal, Switchboard
from bridge.ops import logs
from bridge.security.exposure import listeners
from bridge.security.sources import gate_for, peer_host
from bridge.settings import AgiSettings, AudioSocketSettings
from sip import agi
from tenants.config import TransferTarget
from tenants.settings import TenantSettings

log = logging.getLogger(__name__)

# Calls set up over FastAGI (their media is AudioSocket) carry this transport label; ARI-routed
# AudioSocket calls carry "audiosocket_ari".
TRANSPORT = "audiosocket_fastagi"
COMMAND_TIMEOUT = 10.0
CLOSE_GRACE = 5.0
# Channels of recent calls kept for AMI Hangup events that come after the AGI session.
CHANNELS_REMEMBERED = 256


class ChannelGone(Exception):
    """Asterisk hung the channel up or closed the AGI connection."""


class _Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = agi.AgiProtocol()
        self._events: list[agi.Event] = []
        self.error: str | None = None  # why the peer was cut off (sip.agi's bounds), if it was

    async def next_event(self) -> agi.Event:
        while not self._events:
            data = await self.reader.read(4096)
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            events = self.protocol.events_received()
            for event in events:
                if isinstance(event, agi.ProtocolError) and self.error is None:
                    self.error = event.reason
            self._events.extend(events)
        return self._events.pop(0)

    async def command(self, name: str, *args: str, timeout: float | None = COMMAND_TIMEOUT) -> agi.AgiResponse:
        self.protocol.send_command(name, *args)
        self.writer.write(b"".join(self.protocol.data_to_send()))
        await self.writer.drain()
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next_event()
                if isinstance(event, agi.AgiResponse):
                    if event.code == 511:
                        raise ChannelGone("dead channel")
                    return event
                if isinstance(event, (agi.HangupNotice, agi.Closed, agi.ProtocolError)):
                    raise ChannelGone(type(event).__name__)


class FastAgiServer:
    def __init__(
        self,
        switchboard: Switchboard,
        settings: AgiSettings,
        audiosocket: AudioSocketSettings,
        tenants: TenantSettings,
        audiosocket_port: int,
    ) -> None:
        self.switchboard = switchboard
        self.settings = settings
        self.audiosocket = audiosocket
        self.tenants = tenants
        self.audiosocket_port = audiosocket_port
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        # FastAGI carries no credentials: the allow-list (and the binding) are its protection.
        self.gate = gate_for("agi", settings, switchboard.settings, switchboard.metrics, switchboard.clock)
        # An AMI connection (bridge.asterisk.ami.AmiConnection) when configured: transfers then use the
        # Redirect action if ``ami.redirect_transfers`` is set, and the PBX's hangup cause of each
        # call is logged from the Hangup event.
        self.ami: Any = None
        self._channel_calls: OrderedDict[str, str] = OrderedDict()  # channel name -> call id

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.settings.host, self.settings.port)
        log.info("FastAGI listening on %s:%d", self.settings.host, self.port)
        for exposure in listeners(self.switchboard.settings):
            if exposure.name == "agi":
                log.info("%s", replace(exposure, port=self.port).line())

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self, grace: float = CLOSE_GRACE) -> None:
        self.stop_accepting()
        # A session whose call just ended still has to tell Asterisk how it went (and carry out a
        # transfer): let it finish before cancelling what is left.
        if self._sessions:
            await asyncio.wait(list(self._sessions), timeout=grace)
        for task in list(self._sessions):
            task.cancel()
        if self._sessions:
            await asyncio.gather(*self._sessions, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host = peer_host(writer.get_extra_info("peername"))
        if not (self.gate.allows_peer(host) and self.gate.allows_setup(host)):
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        session = _Session(reader, writer)
        try:
            await self._serve(session)
        except (ChannelGone, ConnectionError, OSError, TimeoutError) as exc:
            log.info("FastAGI session ended early: %s", type(exc).__name__)
        except Exception:
            log.error("FastAGI session failed", exc_info=True)
        finally:
            self._sessions.discard(task)
            writer.close()
            if session.error is not None:
                log.warning("FastAGI peer cut off: %s", session.error)
                self.switchboard.metrics.peers_closed.labels("agi", "protocol_error").inc()

    def _advertised_audiosocket(self, writer: asyncio.StreamWriter) -> str:
        if self.audiosocket.advertise:
            return self.audiosocket.advertise
        host = writer.get_extra_info("sockname")[0]
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.audiosocket_port}"

    async def _serve(self, session: _Session) -> None:
        async with asyncio.timeout(self.switchboard.settings.limits.setup_timeout):
            event = await session.next_event()
        if not isinstance(event, agi.AgiRequest):
            log.warning("FastAGI peer sent no environment: %s", event)
            return
        request = event
        dialled = (request.args[0] if request.args and request.args[0] else "") or request.dnid or request.extension
        caller_id = request.caller_id
        switchboard = self.switchboard

        if switchboard.draining:
            switchboard.refused(TRANSPORT, Refusal.DRAINING, dialled=dialled, caller_id=caller_id)
            await session.command("SET VARIABLE", "CALLBRIDGE_STATUS", "UNAVAILABLE")
            return
        try:
            resolution = await switchboard.route(dialled)
        except Exception as exc:  # a tenant store failure must not take the call down silently
            log.error("tenant lookup failed: %s", exc)
            switchboard.refused(TRANSPORT, Refusal.LOOKUP_FAILED, dialled=dialled, caller_id=caller_id)
            await session.command("SET VARIABLE", "CALLBRIDGE_STATUS", "UNAVAILABLE")
            return
        if resolution is None:
            switchboard.refused(TRANSPORT, Refusal.UNKNOWN_NUMBER, dialled=dialled, caller_id=caller_id)
            await session.command("SET VARIABLE", "CALLBRIDGE_STATUS", "UNKNOWN_NUMBER")
            if self.tenants.refuse_announcement:
                await session.command("EXEC", "Playback", self.tenants.refuse_announcement, timeout=60)
            await session.command("HANGUP")
            return
        refusal = switchboard.admit(resolution.tenant)
        if refusal is not None:
            switchboard.refused(TRANSPORT, refusal, dialled=dialled, caller_id=caller_id,
                                tenant=resolution.tenant)
            await session.command("SET VARIABLE", "CALLBRIDGE_STATUS", "BUSY")
            return

        call_id = str(uuid.uuid4())
        logs.bind_call(call_id, resolution.tenant.slug)  # this session's log lines name the call
        if self.ami is not None and request.channel:
            self._channel_calls[request.channel] = call_id
            while len(self._channel_calls) > CHANNELS_REMEMBERED:
                self._channel_calls.popitem(last=False)
        pending = switchboard.register_pending(call_id, resolution, resolution.number or dialled, caller_id,
                                               transport=TRANSPORT)
        try:
            try:
                pending.session = await switchboard.open_model(resolution.tenant)
            except ModelError as exc:
                log.warning("model unavailable (%s); the dialplan tries elsewhere", exc)
                switchboard.refused(TRANSPORT, Refusal.MODEL_UNAVAILABLE, dialled=dialled, caller_id=caller_id,
                                    tenant=resolution.tenant)
                await session.command("SET VARIABLE", "CALLBRIDGE_STATUS", "MODEL_UNAVAILABLE")
                return
            except ValueError as exc:  # the tenant names a provider this deployment cannot serve
                log.error("cannot set up call for tenant %s: %s", resolution.tenant.slug, exc)
                switchboard.metrics.model_errors.labels(switchboard.endpoint.provider.value, "config").inc()
                await session.command("SET VARIABLE", "CALLBRIDGE_STATUS", "UNAVAILABLE")
                return
            answered = await session.command("ANSWER")
            if not answered.ok or answered.result == -1:
                return
            await session.command("SET VARIABLE", "CALLBRIDGE_CALL_ID", call_id)
            target_addr = self._advertised_audiosocket(session.writer)
            # Blocks until the AudioSocket() application returns (call over or transferred).
            await session.command("EXEC", "AudioSocket", f"{call_id},{target_addr}", timeout=None)
        finally:
            switchboard.forget(call_id)
            unused, pending.session = pending.session, None  # no AudioSocket connection took it
            if unused is not None:
                await asyncio.shield(unused.close())
        after = pending.after_call.result() if pending.after_call.done() else None
        if isinstance(after, TransferTarget):
            await self._transfer(session, after, request.channel)
        else:
            await session.command("SET VARIABLE", "CALLBRIDGE_STATUS", "DONE")

    def ami_hangup(self, message: Any) -> None:
        """AMI ``Hangup`` event: log why the PBX ended one of this server's calls (Q.850 cause)."""
        call_id = self._channel_calls.pop(str(message.get("Channel", "")), None)
        if call_id is not None:
            log.info("call %s: PBX hangup cause %s (%s)", call_id[:8], message.get("Cause", "?"),
                     message.get("Cause-txt", ""))

    async def _transfer(self, session: _Session, target: TransferTarget, channel: str = "") -> None:
        log.info("transferring channel to %s@%s", target.destination, target.context)
        await session.command("SET VARIABLE", "CALLBRIDGE_STATUS", "TRANSFER")
        await session.command("SET VARIABLE", "CALLBRIDGE_TRANSFER_KIND", target.kind)
        ami = self.ami
        if ami is not None and ami.settings.redirect_transfers and channel:
            from bridge.asterisk.ami import AmiError

            try:
                # Redirect moves the channel at once, whatever the dialplan after AGI() does.
                await ami.redirect(channel, target.context, target.destination, 1)
                return
            except AmiError as exc:
                log.warning("AMI Redirect failed (%s); continuing the AGI session instead", exc)
        # On return from AGI() the channel continues at the location set here (res_agi.c
        # SET CONTEXT / SET EXTENSION / SET PRIORITY).
        await session.command("SET CONTEXT", target.context)
        await session.command("SET EXTENSION", target.destination)
        await session.command("SET PRIORITY", "1")
