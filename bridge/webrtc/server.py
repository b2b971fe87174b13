"""Browser calls: ``POST /api/webrtc/offer``, ``GET /api/webrtc/numbers`` and the ``/phone/`` page.

A call from the page, in order:

1. The page signs in with an ops token (admin or tenant), lists the numbers the token may call
   and posts its complete SDP offer (non-trickle) with the number.
2. The daemon checks the token (401), routes the number (404 unknown), checks that a tenant token
   calls only its own tenant's numbers (403) and admits the call (503 with ``Retry-After`` at
   capacity or while draining). It holds the call's capacity slot, answers with its complete SDP
   (ICE host candidates, and STUN/TURN ones where configured) and the call id.
3. When ICE and DTLS are up and the browser's audio track has arrived (``connect_timeout``), the
   call runs like any phone call: recording, transcripts, metrics (``transport="webrtc"``),
   limits, barge-in and drain. The page hangs up over the data channel or by closing the peer
   connection; the daemon ends the call the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
from typing import Any

from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from bridge.core.call import Call, CallInfo
from bridge.core.switchboard import Refusal, Switchboard
from bridge.ops.tokens import BearerTokens, Principal
from bridge.settings import WebRtcSettings
from bridge.webrtc import ice
from bridge.webrtc.leg import TRANSPORT, AgentTrack, EventTap, WebRtcLeg, frame_pcm
from sip import webrtc as wr
from tenants.config import TenantError
from tenants.directory import DirectoryError

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
PAGE_ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "phone.js": "text/javascript; charset=utf-8",
    "phone.css": "text/css; charset=utf-8",
}
# The page loads nothing from elsewhere. WebRTC media is not governed by connect-src.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
            "img-src 'self' data:; media-src 'self' blob:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")
_JSON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _json_error(cls: type[web.HTTPException], message: str, **headers: str) -> web.HTTPException:
    return cls(text=wr.event_message("error", error=message), content_type="application/json",
               headers={**_JSON_HEADERS, **headers})


class WebRtcServer:
    def __init__(self, switchboard: Switchboard, settings: WebRtcSettings, tokens: BearerTokens) -> None:
        self.switchboard = switchboard
        self.settings = settings
        self.tokens = tokens
        self.metrics = switchboard.metrics
        self._networks = wr.parse_networks(settings.peer_networks)
        self._calls: set[asyncio.Task[None]] = set()
        self._peers: set[RTCPeerConnection] = set()
        self._assets: dict[str, bytes] = {}
        self._host_override = ice.HostAddresses(settings.host_addresses)
        self.invalid_messages = 0

    def install(self, app: web.Application) -> None:
        web_dir = importlib.resources.files("bridge.webrtc") / "web"
        for name in PAGE_ASSETS:
            self._assets[name] = (web_dir / name).read_bytes()
        self._host_override.install()
        r = app.router
        r.add_post("/api/webrtc/offer", self._offer)
        r.add_get("/api/webrtc/numbers", self._numbers)
        r.add_get("/phone", self._redirect)
        r.add_get("/phone/", self._page)
        r.add_get("/phone/{asset}", self._asset)

    @property
    def active(self) -> int:
        return len(self._calls)

    async def close(self) -> None:
        """End what is left (calls have been drained or ended by then) and release the peers."""
        for task in list(self._calls):
            task.cancel()
        if self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)
        for pc in list(self._peers):
            await pc.close()
        self._host_override.uninstall()

    # ------------------------------------------------------------------ API
    async def _numbers(self, request: web.Request) -> web.Response:
        principal = self.tokens.authenticate(request)
        try:
            tenants = await self.switchboard.directory.list_tenants()
        except (DirectoryError, TenantError) as exc:
            log.error("webrtc: listing tenants failed: %s", exc)
            raise _json_error(web.HTTPServiceUnavailable, "tenant directory unavailable") from None
        listed = [
            {"tenant": t.slug, "name": t.name, "numbers": [n for n in t.numbers if not n.endswith("*")]}
            for t in tenants
            if t.active and principal.may_see(t.slug)
        ]
        ice_servers = [
            {"urls": s.urls, **({"username": s.username} if s.username else {}),
             **({"credential": s.credential.get_secret_value()} if s.credential else {})}
            for s in self.settings.ice_servers
        ]
        return web.json_response({"tenants": listed, "ice_servers": ice_servers}, headers=_JSON_HEADERS)

    async def _offer(self, request: web.Request) -> web.Response:
        principal = self.tokens.authenticate(request)
        if request.content_length is not None and request.content_length > wr.MAX_OFFER_BYTES:
            raise _json_error(web.HTTPRequestEntityTooLarge, f"offer over {wr.MAX_OFFER_BYTES} bytes")
        offer = wr.parse_offer(await request.content.read(wr.MAX_OFFER_BYTES + 1))
        if isinstance(offer, wr.InvalidMessage):
            raise _json_error(web.HTTPBadRequest, offer.reason)
        switchboard = self.switchboard
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        if switchboard.draining:
            switchboard.refused(TRANSPORT, Refusal.DRAINING, dialled=offer.number)
            raise _json_error(web.HTTPServiceUnavailable, "service draining", **retry)
        try:
            resolution = await switchboard.route(offer.number)
        except (DirectoryError, TenantError, TimeoutError) as exc:
            log.error("webrtc: tenant lookup failed: %s", exc)
            switchboard.refused(TRANSPORT, Refusal.LOOKUP_FAILED, dialled=offer.number)
            raise _json_error(web.HTTPServiceUnavailable, "tenant lookup failed", **retry) from None
        if resolution is None:
            switchboard.refused(TRANSPORT, Refusal.UNKNOWN_NUMBER, dialled=offer.number)
            raise _json_error(web.HTTPNotFound, "unknown number")
        tenant = resolution.tenant
        if not principal.may_see(tenant.slug):
            log.warning("webrtc: a token of tenant %s asked for a number of another tenant", principal.tenant)
            raise _json_error(web.HTTPForbidden, "this token may call only its own tenant's numbers")
        refusal = switchboard.admit(tenant)
        if refusal is not None:
            log.warning("webrtc: call refused for tenant %s: %s", tenant.slug, refusal.value)
            switchboard.refused(TRANSPORT, refusal, dialled=offer.number, tenant=tenant)
            raise _json_error(web.HTTPServiceUnavailable, refusal.value, **retry)

        info = CallInfo(TRANSPORT, tenant, resolution.number or offer.number, caller_id=_caller(principal))
        # The capacity slot is held from now until the call runs (or set-up fails).
        switchboard.register_pending(info.call_id, resolution, info.dialled, info.caller_id)
        sdp, removed = wr.filter_candidates(offer.sdp, self._networks)
        if removed:
            log.debug("webrtc: ignored %d remote candidate(s) outside the allowed networks", removed)
        pc = RTCPeerConnection(self._configuration())
        self._peers.add(pc)
        track = AgentTrack(self.metrics)
        peer = PeerCall(self, pc, track, info)  # before the offer is applied: it announces the track
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            pc.addTrack(track)
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except (ValueError, RuntimeError, AttributeError, KeyError) as exc:
            # aiortc rejects offers it cannot answer (no common codec, malformed SDP) this way.
            switchboard.forget(info.call_id)
            await self.release(pc)
            raise _json_error(web.HTTPBadRequest, f"offer not usable: {exc}") from None
        task = asyncio.create_task(peer.run())
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        local = pc.localDescription
        return web.json_response({"type": local.type, "sdp": local.sdp, "call_id": info.call_id},
                                 headers=_JSON_HEADERS)

    def _configuration(self) -> RTCConfiguration:
        servers = [
            RTCIceServer(urls=s.urls, username=s.username,
                         credential=s.credential.get_secret_value() if s.credential else None)
            for s in self.settings.ice_servers
        ]
        return RTCConfiguration(iceServers=servers)

    async def release(self, pc: RTCPeerConnection) -> None:
        self._peers.discard(pc)
        with contextlib.suppress(Exception):
            await pc.close()

    # ------------------------------------------------------------------ page
    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/phone/")

    async def _page(self, request: web.Request) -> web.Response:
        return self._asset_response("index.html")

    async def _asset(self, request: web.Request) -> web.Response:
        name = request.match_info["asset"]
        if name not in PAGE_ASSETS:
            raise web.HTTPNotFound()
        return self._asset_response(name)

    def _asset_response(self, name: str) -> web.Response:
        headers = {
            "Content-Type": PAGE_ASSETS[name],
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        if name == "index.html":
            headers["Content-Security-Policy"] = PAGE_CSP
            headers["Permissions-Policy"] = "microphone=(self)"
        return web.Response(body=self._assets[name], headers=headers)


def _caller(principal: Principal) -> str:
    return "browser (admin)" if principal.admin else f"browser ({principal.tenant})"


class PeerCall:
    """One browser's peer connection and the call on it, from the answer to the hang-up."""

    def __init__(self, server: WebRtcServer, pc: RTCPeerConnection, track: AgentTrack, info: CallInfo) -> None:
        self.server = server
        self.pc = pc
        self.track = track
        self.info = info
        self.leg = WebRtcLeg(track, self._close)
        self.call: Call | None = None
        self._remote: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._connected = asyncio.Event()
        self._gone = asyncio.Event()
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)
        pc.on("datachannel", self._on_channel)

    async def _close(self) -> None:
        await self.server.release(self.pc)

    def _on_track(self, incoming: Any) -> None:
        if incoming.kind == "audio" and not self._remote.done():
            self._remote.set_result(incoming)

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            self._connected.set()
        elif state in ("failed", "closed"):
            self._gone.set()
            if self.call is not None:
                self.call.caller_hung_up()

    def _on_channel(self, channel: Any) -> None:
        self.leg.attach_channel(channel)
        channel.on("message", self._on_message)

    def _on_message(self, data: str | bytes) -> None:
        msg = wr.parse_client_message(data)
        call = self.call
        if isinstance(msg, wr.InvalidMessage):
            self.server.invalid_messages += 1
            log.debug("webrtc: ignored a page message: %s", msg.reason)
        elif call is None:
            return
        elif isinstance(msg, wr.Dtmf):
            call.receive_dtmf(msg.digit)
        else:
            call.caller_hung_up()

    async def run(self) -> None:
        """The call's boundary: whatever goes wrong ends this call only."""
        server, info = self.server, self.info
        switchboard = server.switchboard
        try:
            try:
                async with asyncio.timeout(server.settings.connect_timeout):
                    incoming = await self._remote
                    await self._connected.wait()
            except TimeoutError:
                log.warning("webrtc: media did not connect within %.0f s; giving the call up",
                            server.settings.connect_timeout)
                server.metrics.calls.labels(TRANSPORT, "error").inc()
                return
            if switchboard.claim(info.call_id) is None or self._gone.is_set():
                log.info("webrtc: the page left during set-up")
                return
            call = self.call = switchboard.open_call(info, self.leg)
            call.tap = EventTap(call.tap, self.leg)
            self.leg.notify("call", call_id=info.call_id)
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(self._read(incoming, call))
                await switchboard.run_call(call)
                reader.cancel()
        except Exception:
            log.error("webrtc call failed", exc_info=True)
        finally:
            switchboard.forget(info.call_id)
            self.track.stop()
            await server.release(self.pc)

    async def _read(self, incoming: Any, call: Call) -> None:
        while True:
            try:
                frame = await incoming.recv()
            except MediaStreamError:
                call.caller_hung_up()
                return
            call.receive_audio(frame_pcm(frame))
