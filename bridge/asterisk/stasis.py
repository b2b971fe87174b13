"""The Stasis application: ARI-driven calls with External Media.

Theory of operation
-------------------
The dialplan hands a call over with ``Stasis(<app>[,<dialled number>])``. For each caller channel
that enters the application a ``StasisCall`` runs these steps, each an ARI request:

1. read the dialled number (the first Stasis argument that is a phone number, else the channel's
   dialplan extension) and the caller ID; resolve the tenant and ask the switchboard for room;
   an unknown number, a full instance or a failed lookup *continues* the channel in the dialplan
   with ``CALLBRIDGE_STATUS`` set (UNKNOWN_NUMBER, BUSY, UNAVAILABLE): after the ``Stasis()`` line
   by default, or at the configured fallback location, so the dialplan can play a message or try
   another instance;
2. answer the caller, create a mixing bridge, add the caller to it;
3. open the daemon's end of the media (an RTP port; nothing for AudioSocket, whose connection
   comes in on the AudioSocket listener under a UUID registered with the switchboard first;
   chan_websocket is connected after step 4 because its connection id comes from Asterisk), then
   ``POST /channels/externalMedia`` with a channel id chosen here;
4. wait for the external channel's own ``StasisStart``: it is not in the application before
   that, and adding it to the bridge earlier fails with 422 "Channel not in Stasis application".
   (chan_websocket answers, and so enters Stasis, only once the media WebSocket is connected);
5. add it to the bridge and run the call until it ends.

Teardown is idempotent and runs whatever ended the call (caller hangup at any step, the external
channel going away, the agent hanging up, a transfer, shutdown): delete the external channel,
destroy the bridge, then hang the caller up, unless the caller was handed back to the dialplan
(transfer or fallback). A 404 during teardown means that part is already gone.

Transfers are ``POST /channels/<caller>/continue`` to the target's context, extension and priority
1, which also takes the caller out of the bridge (res/stasis/control.c app_control_continue).

DTMF comes from ARI ``ChannelDtmfReceived`` events on the caller's channel, and the caller joins
the bridge with ``absorbDTMF`` so that the digit is not also passed to the external channel. That
is one source per call, whatever the transport and version: chan_rtp has no DTMF callbacks (as
of 22.10), so Asterisk would play a digit passed to a UnicastRTP channel as in-band tones into the
model's ear; chan_audiosocket forwards digits only since 20.14 / 22.4; chan_websocket's DTMF_END
would duplicate the event.

Per call::

    routing --refused--> fallback (continue) --------------------------------> done
    routing --admitted--> answering --> bridging --> media --> waiting_media --> bridged
    any step --caller gone / error--> teardown --> done
    bridged --call ends--> teardown (hang up caller | caller transferred) --> done
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from bridge.asterisk.ari import AriClient, AriError, AriHttpError
from bridge.asterisk.stasis_call import (
    FINISHED_KEPT,
    Clock,
    ExternalMediaLeg,
    SetupFailed,
    StasisCall,
    Status,
    dialled_number,
    host_port,
    local_address_toward,
)
from bridge.core.call import Outcome
from bridge.core.switchboard import Switchboard
from bridge.settings import Settings
from sip import ari

log = logging.getLogger(__name__)

class StasisApplication:
    """Registers the Stasis application and runs one ``StasisCall`` per caller channel."""

    def __init__(
        self,
        settings: Settings,
        client: AriClient,
        switchboard: Switchboard,
        *,
        audiosocket_port: int | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self.client = client
        self.switchboard = switchboard
        self.audiosocket_port = audiosocket_port
        self.clock = clock
        self._calls: dict[str, StasisCall] = {}  # by caller channel id
        self._owners: dict[str, StasisCall] = {}  # by any channel id (caller or media)
        self._media_waiters: dict[str, asyncio.Future[ari.StasisStart]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._advertise: str | None = None
        self._next_port = settings.ari.rtp_port_min
        self._closing = False
        self.finished: deque[StasisCall] = deque(maxlen=FINISHED_KEPT)  # recent calls, for inspection

    @property
    def active(self) -> int:
        return len(self._calls)

    async def run(self) -> None:
        """Hold the events connection and run calls until cancelled."""
        try:
            await self.client.run_events(self._on_event, self._reconcile)
        finally:
            self._closing = True
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    # ----------------------------------------------------------------- events
    def _on_event(self, event: ari.Event) -> None:
        try:
            self._dispatch(event)
        except Exception:
            # The events loop serves every call: one bad event must not stop it.
            log.error("failed to handle ARI event %s", type(event).__name__, exc_info=True)

    def _dispatch(self, event: ari.Event) -> None:
        if isinstance(event, ari.StasisStart):
            channel_id = event.channel.id
            waiter = self._media_waiters.pop(channel_id, None)
            if waiter is not None:
                if not waiter.done():
                    waiter.set_result(event)
                return
            if channel_id in self._owners or self._closing:
                return
            self._start_call(event)
        elif isinstance(event, ari.StasisEnd):
            self._gone(event.channel.id, "left Stasis")
        elif isinstance(event, ari.ChannelDestroyed):
            self._gone(event.channel.id, f"destroyed (cause {event.cause})")
        elif isinstance(event, ari.ChannelHangupRequest):
            self._gone(event.channel.id, "hung up")
        elif isinstance(event, ari.ChannelDtmfReceived):
            owner = self._owners.get(event.channel.id)
            if owner is not None:
                owner.dtmf(event.channel.id, event.digit)
        elif isinstance(event, ari.Unknown):
            log.debug("ARI event %s", event.type)

    def _gone(self, channel_id: str, why: str) -> None:
        owner = self._owners.get(channel_id)
        if owner is not None:
            owner.channel_gone(channel_id, why)

    def _start_call(self, event: ari.StasisStart) -> None:
        call = StasisCall(self, event)
        self._calls[call.caller_id] = call
        self._owners[call.caller_id] = call
        self._owners[call.media_id] = call
        task = asyncio.get_running_loop().create_task(self._guarded(call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, call: StasisCall) -> None:
        try:
            await call.run()
        except Exception:
            log.error("Stasis call on %s failed", call.caller_id, exc_info=True)

    def expect_stasis_start(self, channel_id: str, owner: StasisCall) -> asyncio.Future[ari.StasisStart]:
        """Register interest in the StasisStart of a channel about to be created."""
        future: asyncio.Future[ari.StasisStart] = asyncio.get_running_loop().create_future()
        self._media_waiters[channel_id] = future
        self._owners[channel_id] = owner
        return future

    def call_finished(self, call: StasisCall) -> None:
        self.finished.append(call)
        self._calls.pop(call.caller_id, None)
        self._owners.pop(call.caller_id, None)
        self._owners.pop(call.media_id, None)
        waiter = self._media_waiters.pop(call.media_id, None)
        if waiter is not None and not waiter.done():
            waiter.cancel()

    async def _reconcile(self) -> None:
        """After a reconnect: calls whose caller vanished while events were not arriving end now."""
        for call in list(self._calls.values()):
            try:
                await self.client.request(ari.AriRequest("GET", f"/channels/{call.caller_id}", {}))
            except AriHttpError as exc:
                if exc.status == 404:
                    call.channel_gone(call.caller_id, "vanished while the events connection was down")
            except AriError:
                return

    # ----------------------------------------------------------------- addresses
    def next_rtp_port(self) -> int:
        """Spread RTP ports over the range so a port just released is not reused at once."""
        s = self.settings.ari
        port = self._next_port
        self._next_port = s.rtp_port_min + (port - s.rtp_port_min + 1) % (s.rtp_port_max - s.rtp_port_min + 1)
        return port

    async def advertise_host(self) -> str:
        """The address Asterisk should send media to."""
        s = self.settings.ari
        if s.advertise_host:
            return s.advertise_host
        if s.rtp_host not in ("0.0.0.0", "::", ""):
            return s.rtp_host
        if self._advertise is None:
            self._advertise = await local_address_toward(self.client.host)
        return self._advertise

    async def audiosocket_target(self) -> str:
        """``host:port`` of the AudioSocket listener as Asterisk should dial it."""
        listener = self.settings.audiosocket
        if listener.advertise:
            return listener.advertise
        if self.audiosocket_port is None:
            raise SetupFailed("transport audiosocket needs the AudioSocket listener enabled")
        host = listener.host if listener.host not in ("0.0.0.0", "::", "") else await self.advertise_host()
        return host_port(host, self.audiosocket_port)



__all__ = ["ExternalMediaLeg", "Outcome", "StasisApplication", "StasisCall", "Status", "dialled_number"]
