"""One ARI-driven call: routing, its External Media channel and bridge, the call on it, teardown.

The application that owns these calls and their events is ``bridge.asterisk.stasis``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bridge.asterisk.ari import AriError, AriHttpError, media_base_url
from bridge.asterisk.chan_websocket import MediaWebSocketConnection, MediaWebSocketError
from bridge.asterisk.rtp import RtpEndpoint, RtpEndpointStatistics
from bridge.core.call import Call, CallInfo, Outcome
from bridge.core.realtime import ModelError, ModelSession
from bridge.core.switchboard import PendingCall, Refusal
from bridge.ops import logs
from bridge.settings import ExternalMediaTransport
from media.codec import SLIN_8K, SLIN_16K, AudioFormat
from sip import ari
from tenants.config import TransferTarget
from tenants.directory import Resolution

if TYPE_CHECKING:
    from bridge.asterisk.stasis import StasisApplication

log = logging.getLogger(__name__)


Clock = Callable[[], float]

TRANSPORT_NAMES = {
    ExternalMediaTransport.RTP: "rtp",
    ExternalMediaTransport.AUDIOSOCKET: "audiosocket_ari",
    ExternalMediaTransport.WEBSOCKET: "chan_websocket",
}
TEARDOWN_TIMEOUT = 5.0
MEDIA_GONE_WAIT = 1.0
FINISHED_KEPT = 32
# Stasis arguments that name the dialled number: digits with an optional leading "+".
_NUMBER_ARG = re.compile(r"^\+?[0-9][0-9 ().-]*$")


class Status(enum.StrEnum):
    """``CALLBRIDGE_STATUS`` as the dialplan sees it (the same values the FastAGI path sets)."""

    DONE = "DONE"
    TRANSFER = "TRANSFER"
    UNKNOWN_NUMBER = "UNKNOWN_NUMBER"
    BUSY = "BUSY"
    UNAVAILABLE = "UNAVAILABLE"
    MODEL_UNAVAILABLE = "MODEL_UNAVAILABLE"


class CallerGone(Exception):
    """The caller hung up (or left Stasis) while the call was being set up."""


class SetupFailed(Exception):
    """A set-up step failed for a reason other than the caller leaving."""


def dialled_number(start: ari.StasisStart) -> str:
    """The dialled number: the first Stasis argument that is a phone number, else the extension."""
    for arg in start.args:
        value = arg.strip()
        if value.startswith("dialled="):
            value = value.partition("=")[2].strip()
        if _NUMBER_ARG.match(value):
            return value
    return start.channel.dialplan.exten


class ExternalMediaLeg:
    """The caller leg of an RTP external-media call: audio through the endpoint, control via ARI."""

    transport = "rtp"
    keepalive = True  # chan_rtp expects a steady 20 ms stream with continuous timestamps

    def __init__(self, endpoint: RtpEndpoint, control: StasisCall) -> None:
        self.endpoint = endpoint
        self.audio_format = endpoint.audio_format
        self._control = control

    async def send_audio(self, payload: bytes) -> None:
        self.endpoint.send(payload)

    async def clear_playback(self) -> None:
        return None  # RTP is played as it arrives: nothing is queued at the far end

    async def hangup(self) -> None:
        await self._control.hang_up()

    async def transfer(self, target: TransferTarget) -> bool:
        return await self._control.transfer(target)


class StasisCall:
    """One caller channel in the application, from StasisStart to teardown."""

    def __init__(self, app: StasisApplication, start: ari.StasisStart) -> None:
        self.app = app
        self.settings = app.settings.ari
        self.caller = start.channel
        self.caller_id = start.channel.id
        self.dialled = dialled_number(start)
        self.caller_number = start.channel.caller.number
        self.transport = app.settings.ari.transport
        token = uuid.uuid4().hex[:12]
        self.media_id = f"{self.settings.app}-media-{token}"
        self.bridge_id = f"{self.settings.app}-bridge-{token}"
        self.state = "routing"
        self.call_id = ""
        self.call: Call | None = None
        self.audiosocket_uuid: str | None = None
        self.pending: PendingCall | None = None
        self.model_session: ModelSession | None = None  # opened before answering, until a call takes it
        self.caller_gone = asyncio.Event()
        self._media_gone = asyncio.Event()
        self._bridge_created = False
        self._media_requested = False
        self._answered = False
        self._handed_back = False  # the caller continues in the dialplan (transfer, fallback)
        self._hung_up = False
        self._torn_down = False
        self._call_started = False
        self.transferred_to: TransferTarget | None = None
        self.rtp_statistics: RtpEndpointStatistics | None = None
        self.log = logging.LoggerAdapter(log, {"channel": self.caller_id})

    # ----------------------------------------------------------------- events from the app
    def channel_gone(self, channel_id: str, why: str) -> None:
        if channel_id == self.caller_id:
            if not self.caller_gone.is_set():
                self.log.info("caller channel %s (%s)", why, self.state)
            self.caller_gone.set()
            call = self._active_call()
            if call is not None and not self._handed_back:
                call.caller_hung_up()
        elif channel_id == self.media_id:
            self._media_gone.set()
            call = self.call
            if call is not None and not call.ended and not self._handed_back:
                call.protocol_error(f"external media channel {why}")

    def dtmf(self, channel_id: str, digit: str) -> None:
        if channel_id == self.caller_id and not self._handed_back:
            call = self._active_call()
            if call is not None:
                call.receive_dtmf(digit)

    def _active_call(self) -> Call | None:
        if self.call is not None:
            return self.call
        if self.audiosocket_uuid is not None:
            # The AudioSocket listener runs that call; find it by its id (the UUID).
            for call in self.app.switchboard.calls():
                if call.info.call_id == self.audiosocket_uuid:
                    return call
        return None

    # ----------------------------------------------------------------- requests
    async def _request(self, req: ari.AriRequest) -> Any:
        """One set-up request, abandoned as soon as the caller is gone."""
        if self.caller_gone.is_set():
            raise CallerGone()
        return await self._race(self.app.client.request(req))

    async def _race(self, awaitable: Awaitable[Any]) -> Any:
        """Await ``awaitable`` unless the caller leaves first (then CallerGone)."""
        task = asyncio.ensure_future(awaitable)
        gone = asyncio.ensure_future(self.caller_gone.wait())
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            gone.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise CallerGone()
        return task.result()

    # ----------------------------------------------------------------- the call
    async def run(self) -> None:
        try:
            resolution = await self._route()
            if resolution is None:
                return
            if not await self._open_model(resolution):
                return
            await self._bridge_caller()
            await self._run_media(resolution)
        except CallerGone:
            self.log.info("caller left during %s", self.state)
        except (AriError, SetupFailed, MediaWebSocketError, OSError, TimeoutError, ValueError) as exc:
            self.log.warning("call set-up failed during %s: %s", self.state, exc)
            if not self._call_started:
                metrics = self.app.switchboard.metrics
                metrics.calls.labels(TRANSPORT_NAMES[self.transport], Outcome.ERROR.value).inc()
        finally:
            await self._teardown()

    async def _route(self) -> Resolution | None:
        switchboard = self.app.switchboard
        transport = TRANSPORT_NAMES[self.transport]
        if switchboard.draining:
            switchboard.refused(transport, Refusal.DRAINING)
            await self._fallback(Status.UNAVAILABLE)
            return None
        try:
            resolution: Resolution | None = await self._race(switchboard.route(self.dialled))
        except (CallerGone, asyncio.CancelledError):
            raise
        except Exception as exc:  # a tenant store failure must not strand the caller
            self.log.error("tenant lookup failed: %s", exc)
            switchboard.refused(transport, Refusal.LOOKUP_FAILED)
            await self._fallback(Status.UNAVAILABLE)
            return None
        if resolution is None:
            self.log.info("no tenant for dialled number; continuing at the fallback location")
            switchboard.refused(transport, Refusal.UNKNOWN_NUMBER)
            await self._fallback(Status.UNKNOWN_NUMBER)
            return None
        refusal = switchboard.admit(resolution.tenant)
        if refusal is not None:
            switchboard.refused(transport, refusal, tenant=resolution.tenant)
            await self._fallback(Status.UNAVAILABLE if refusal is Refusal.DRAINING else Status.BUSY)
            return None
        # One id names the call everywhere: logs, records, and for AudioSocket the UUID Asterisk
        # sends first on the media connection.
        self.call_id = str(uuid.uuid4())
        logs.bind_call(self.call_id, resolution.tenant.slug)  # this task's log lines name the call
        # Hold a place under the switchboard's limits while the media is set up.
        key = self.media_id
        audio_format: AudioFormat | None = None
        if self.transport is ExternalMediaTransport.AUDIOSOCKET:
            key = self.audiosocket_uuid = self.call_id
            audio_format = SLIN_16K if self.settings.format == "slin16" else SLIN_8K
        self.pending = switchboard.register_pending(
            key, resolution, resolution.number or self.dialled, self.caller_number, audio_format,
            transport=TRANSPORT_NAMES[self.transport])
        return resolution

    async def _open_model(self, resolution: Resolution) -> bool:
        """Open the tenant's model session before answering; a model that cannot be reached
        continues the caller in the dialplan (MODEL_UNAVAILABLE), still unanswered."""
        self.state = "model"
        switchboard = self.app.switchboard
        try:
            session: ModelSession = await self._race(switchboard.open_model(resolution.tenant))
        except ModelError as exc:
            self.log.warning("model unavailable (%s); continuing at the fallback location", exc)
            switchboard.refused(TRANSPORT_NAMES[self.transport], Refusal.MODEL_UNAVAILABLE)
            if self.pending is not None:
                switchboard.forget(self.pending.key)
            await self._fallback(Status.MODEL_UNAVAILABLE)
            return False
        if self.transport is ExternalMediaTransport.AUDIOSOCKET and self.pending is not None:
            self.pending.session = session  # the AudioSocket listener's call takes it over
        else:
            self.model_session = session
        return True

    async def _bridge_caller(self) -> None:
        self.state = "answering"
        await self._request(ari.answer(self.caller_id))
        self._answered = True
        self.state = "bridging"
        await self._request(ari.create_bridge("mixing", bridge_id=self.bridge_id, name=self.bridge_id))
        self._bridge_created = True
        # Digits are read from ARI events; absorbed here they do not also reach the media leg.
        await self._request(ari.add_channel(self.bridge_id, self.caller_id, absorb_dtmf=True))

    async def _run_media(self, resolution: Resolution) -> None:
        if self.transport is ExternalMediaTransport.RTP:
            await self._run_rtp(resolution)
        elif self.transport is ExternalMediaTransport.WEBSOCKET:
            await self._run_websocket(resolution)
        else:
            await self._run_audiosocket()

    def _media_format(self) -> str:
        if self.transport is ExternalMediaTransport.AUDIOSOCKET:
            # AudioSocket always carries signed linear (kind 0x10 is slin, 0x12 slin16).
            return "slin16" if self.settings.format == "slin16" else "slin"
        return self.settings.format

    async def _create_media(self, **kwargs: Any) -> ari.Channel:
        """``POST /channels/externalMedia``; the channel's StasisStart is awaited separately."""
        self.state = "media"
        req = ari.external_media(self.settings.app, self._media_format(), channel_id=self.media_id, **kwargs)
        self._media_requested = True
        body = await self._request(req)
        if not isinstance(body, dict):
            raise SetupFailed("externalMedia answered without a channel")
        try:
            return ari.Channel.from_json(body)
        except ValueError as exc:
            raise SetupFailed(f"externalMedia answered with an unusable channel: {exc}") from None

    async def _join_media(self, started: asyncio.Future[ari.StasisStart]) -> None:
        self.state = "waiting_media"
        try:
            await self._race(asyncio.wait_for(asyncio.shield(started), self.settings.setup_timeout))
        except TimeoutError:
            raise SetupFailed(f"external media channel did not enter Stasis within "
                              f"{self.settings.setup_timeout:.1f} s") from None
        self.state = "bridging_media"
        await self._request(ari.add_channel(self.bridge_id, self.media_id))
        self.state = "bridged"

    def _open_call(self, resolution: Resolution, leg: Any) -> Call:
        switchboard = self.app.switchboard
        info = CallInfo(TRANSPORT_NAMES[self.transport], resolution.tenant,
                        resolution.number or self.dialled, self.caller_number, call_id=self.call_id)
        if self.pending is not None:
            switchboard.claim(self.pending.key)
        session, self.model_session = self.model_session, None
        call = switchboard.open_call(info, leg, session)
        self.call = call
        return call

    async def _run_call(self, call: Call) -> None:
        self._call_started = True
        if self.caller_gone.is_set():
            call.caller_hung_up()
        outcome = await self.app.switchboard.run_call(call)
        self.log.info("call ended: %s", outcome.value)

    async def _run_rtp(self, resolution: Resolution) -> None:
        app = self.app
        endpoint = await RtpEndpoint.open(
            self.settings.format, self.settings.rtp_host, self.settings.rtp_port_min,
            self.settings.rtp_port_max, clock=app.clock, metrics=app.switchboard.metrics,
            start=app.next_rtp_port())
        try:
            host = await app.advertise_host()
            started = app.expect_stasis_start(self.media_id, self)
            channel = await self._create_media(external_host=host_port(host, endpoint.local_address[1]),
                                               encapsulation="rtp")
            media = ari.ExternalMediaInfo.from_channel(channel)
            if media.rtp_address is None or media.rtp_port is None:
                raise SetupFailed("externalMedia did not report UNICASTRTP_LOCAL_ADDRESS/PORT")
            address = media.rtp_address
            if address in ("0.0.0.0", "::"):
                address = app.client.host
            endpoint.set_remote(address, media.rtp_port)
            await self._join_media(started)
            leg = ExternalMediaLeg(endpoint, self)
            call = self._open_call(resolution, leg)
            endpoint.attach(call)
            await self._run_call(call)
        finally:
            self.rtp_statistics = endpoint.statistics()
            endpoint.close()

    async def _run_websocket(self, resolution: Resolution) -> None:
        app = self.app
        started = app.expect_stasis_start(self.media_id, self)
        channel = await self._create_media(encapsulation="none", transport="websocket",
                                           connection_type="server")
        media = ari.ExternalMediaInfo.from_channel(channel)
        if media.websocket_connection_id is None:
            raise SetupFailed("externalMedia did not report MEDIA_WEBSOCKET_CONNECTION_ID")
        url = f"{media_base_url(self.settings)}/media/{media.websocket_connection_id}"
        self.state = "connecting_media"
        connection: MediaWebSocketConnection = await self._race(MediaWebSocketConnection.open(
            url, control=self, metrics=app.switchboard.metrics, clock=app.clock))
        try:
            await self._join_media(started)
            call = self._open_call(resolution, connection)
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(connection.run(call))
                await self._run_call(call)
                reader.cancel()
        finally:
            await connection.close()
            # Closing the media socket makes Asterisk hang the WebSocket channel up itself; give
            # that a moment so teardown does not race it with a DELETE.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(MEDIA_GONE_WAIT):
                    await self._media_gone.wait()

    async def _run_audiosocket(self) -> None:
        app = self.app
        pending = self.pending
        assert pending is not None and self.audiosocket_uuid is not None
        started = app.expect_stasis_start(self.media_id, self)
        target = await app.audiosocket_target()
        await self._create_media(external_host=target, encapsulation="audiosocket",
                                 data=self.audiosocket_uuid)
        await self._join_media(started)
        self._call_started = True
        # The AudioSocket listener runs the call; it resolves after_call when the call is over
        # (with the transfer target when the agent transferred the caller).
        self.state = "bridged"
        after = await self._race(asyncio.shield(pending.after_call))
        if isinstance(after, TransferTarget):
            await self.transfer(after)

    # ----------------------------------------------------------------- control (LegControl)
    async def hang_up(self) -> None:
        """End the call toward Asterisk: the caller's channel is hung up (idempotent)."""
        if self._hung_up or self._handed_back or self.caller_gone.is_set():
            return
        self._hung_up = True
        await self._quietly(ari.hangup(self.caller_id, reason="normal"))

    async def transfer(self, target: TransferTarget) -> bool:
        """Hand the caller to ``target`` in the dialplan; False if Asterisk would not."""
        if self.caller_gone.is_set() or self._handed_back:
            return False
        client = self.app.client
        # Set before the request: the caller's StasisEnd may come before the HTTP answer, and it
        # must not be taken for a hangup.
        self._handed_back = True
        try:
            await client.request(ari.set_channel_var(self.caller_id, "CALLBRIDGE_STATUS", Status.TRANSFER))
            await client.request(ari.set_channel_var(self.caller_id, "CALLBRIDGE_TRANSFER_KIND", target.kind))
            await client.request(ari.continue_in_dialplan(
                self.caller_id, context=target.context, extension=target.destination, priority=1))
        except AriError as exc:
            self._handed_back = False
            self.log.warning("transfer to %s failed: %s", target.name, exc)
            return False
        self.transferred_to = target
        self.log.info("caller continues at %s@%s (%s)", target.destination, target.context, target.kind)
        return True

    async def _fallback(self, status: Status) -> None:
        """Give the caller back to the dialplan at the fallback location."""
        if self.caller_gone.is_set() or self._handed_back:
            return
        s = self.settings
        self._handed_back = True
        try:
            await self.app.client.request(ari.set_channel_var(self.caller_id, "CALLBRIDGE_STATUS", status))
            # Without a location, Asterisk carries on after the Stasis() line.
            await self.app.client.request(ari.continue_in_dialplan(
                self.caller_id, context=s.fallback_context or None, extension=s.fallback_extension or None,
                priority=s.fallback_priority))
        except AriHttpError as exc:
            self._handed_back = False
            if exc.status != 404:
                self.log.warning("could not continue the caller at the fallback location: %s", exc)
        except AriError as exc:
            self._handed_back = False
            self.log.warning("could not continue the caller at the fallback location: %s", exc)

    # ----------------------------------------------------------------- teardown
    async def _quietly(self, req: ari.AriRequest) -> None:
        try:
            await self.app.client.request(req)
        except AriHttpError as exc:
            if exc.status not in (404, 422):  # already gone / not in Stasis any more
                self.log.warning("teardown request failed: %s", exc)
        except AriError as exc:
            self.log.warning("teardown request failed: %s", exc)

    async def _teardown(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        self.state = "teardown"
        app = self.app
        try:
            async with asyncio.timeout(TEARDOWN_TIMEOUT):
                await asyncio.shield(self._release())
        except TimeoutError:
            self.log.warning("teardown did not finish in %.0f s", TEARDOWN_TIMEOUT)
        finally:
            pending = self.pending
            if pending is not None:
                app.switchboard.forget(pending.key)
                if not pending.after_call.done():
                    pending.after_call.set_result(None)
            unused = [s for s in (self.model_session, pending.session if pending else None) if s is not None]
            self.model_session = None
            if pending is not None:
                pending.session = None
            for session in unused:
                await asyncio.shield(session.close())
            app.call_finished(self)

    async def _release(self) -> None:
        if self._media_requested and not self._media_gone.is_set():
            await self._quietly(ari.hangup(self.media_id))
        if self._bridge_created:
            await self._quietly(ari.destroy_bridge(self.bridge_id))
        if self.caller_gone.is_set() or self._handed_back:
            return
        if not self._call_started:
            # Set-up failed (or the daemon is stopping) before the conversation began: let the
            # dialplan try elsewhere rather than drop the caller.
            await self._fallback(Status.UNAVAILABLE)
            if self._handed_back:
                return
        await self.hang_up()



def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def local_address_toward(host: str) -> str:
    """The local address the system routes to ``host`` from (no packet is sent)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(address)
        return str(probe.getsockname()[0])


