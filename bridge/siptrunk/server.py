"""The SIP trunk: INVITEs from a PBX or carrier become calls to a tenant's agent.

One call, in order (SIP thread on the left, event loop on the right)::

    INVITE arrives (100 Trying by PJSIP)
    source outside allowed_sources -> 403
    numbers from the Request-URI / To / headers ---> route, admit
                                                     draining or busy: 503 + Retry-After
                                                     unknown number: 404
    180 Ringing          <---------------------------  ring (answer_delay), open the model session
                                                     model unreachable: 503 + Retry-After
    200 OK               <---------------------------  answer
    ACK, media active: the call's port is joined ---> the call runs (recording, metrics, ...)
    re-INVITE (hold, unhold, codec change): PJSIP
    gives the stream a new conference slot; the
    port is joined to it again ---------------------> the same call, the same port
    DTMF (RFC 4733 or SIP INFO) -------------------> the call's DTMF path
    BYE from the caller ----------------------------> caller hung up
    BYE to the caller    <---------------------------  agent hung up / limits / drain
    REFER (blind transfer), NOTIFY result ----------> transfer done or failed
    CANCEL before the answer ----------------------> the call is dropped; no audio reaches the model
                                                     (a session being opened is closed)

Calls that never reach the model (refused, cancelled) are counted and indexed like every other
transport's refusals.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from typing import Any

import pjsua2 as pj

from bridge.core.call import Call, CallInfo
from bridge.core.realtime import ModelError, ModelSession
from bridge.core.switchboard import Refusal, Switchboard
from bridge.security.sources import SourceGate
from bridge.settings import SipSettings
from bridge.siptrunk.stack import CallPort, MediaPump, SipStack
from bridge.siptrunk.tls import check_port_free, tls_config
from media.codec import AudioFormat, Encoding
from sip import digest
from sip import siptrunk as st
from tenants.config import TenantError, TransferTarget
from tenants.directory import DirectoryError, Resolution

log = logging.getLogger(__name__)

TRANSPORT = "sip"
MEDIA_TIMEOUT = 10.0  # from our 200 OK to active media (the ACK)
TRANSFER_TIMEOUT = 30.0  # from REFER to the final NOTIFY
PORT_RELEASE_DELAY = 2.0  # an ended call's media port outlives its call by this (see _graveyard)
REFUSAL_LOG_INTERVAL = 10.0

_TIMERS = {"inactive": pj.PJSUA_SIP_TIMER_INACTIVE, "optional": pj.PJSUA_SIP_TIMER_OPTIONAL,
           "required": pj.PJSUA_SIP_TIMER_REQUIRED}
_SRTP = {"disabled": pj.PJMEDIA_SRTP_DISABLED, "optional": pj.PJMEDIA_SRTP_OPTIONAL,
         "mandatory": pj.PJMEDIA_SRTP_MANDATORY}
_CODEC_IDS = {"G722": "G722/16000", "PCMU": "PCMU/8000", "PCMA": "PCMA/8000"}


class InviteHandle:
    """One incoming call as both sides see it. Built in the SIP thread; its loop-side members are
    used on the loop only."""

    def __init__(self, numbers: st.InviteNumbers, source: str) -> None:
        self.numbers = numbers
        self.source = source
        self.call: TrunkCall | None = None  # SIP thread only
        self.port: CallPort | None = None
        self.remote_contact = ""
        # loop side
        self.media: asyncio.Future[int] | None = None  # the media port's rate, once media is up
        self.gone: asyncio.Event | None = None
        self.answered = False
        self.live: Call | None = None
        self.transfer: asyncio.Future[int] | None = None
        self.final_status = 0
        self.held = False

    # -- events from the SIP thread, run on the loop --------------------------------------------
    def media_ready(self, rate_hz: int) -> None:
        if self.media is not None and not self.media.done():
            self.media.set_result(rate_hz)

    def disconnected(self, status: int) -> None:
        self.final_status = status
        if self.gone is not None:
            self.gone.set()
        if self.live is not None:
            self.live.caller_hung_up()

    def dtmf(self, digit: str) -> None:
        if self.live is not None:
            self.live.receive_dtmf(digit)

    def hold(self, held: bool) -> None:
        self.held = held
        if self.live is not None:
            self.live.hold(held)

    def transfer_done(self, status: int) -> None:
        if self.transfer is not None and not self.transfer.done():
            self.transfer.set_result(status)


class TrunkCall(pj.Call):  # type: ignore[misc]
    """PJSIP's call object (SIP thread only)."""

    def __init__(self, server: SipTrunkServer, account: pj.Account, call_id: int, handle: InviteHandle) -> None:
        super().__init__(account, call_id)
        self.server = server
        self.handle = handle

    def onCallState(self, prm: Any) -> None:
        info = self.getInfo()
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.server.post(self.handle.disconnected, int(info.lastStatusCode))
            self.server.forget(self)

    def onCallMediaState(self, prm: Any) -> None:
        info = self.getInfo()
        self.handle.remote_contact = info.remoteContact
        for index, media in enumerate(info.media):
            if media.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            # Hold (RFC 3264 8.4: the caller's re-INVITE says sendonly or inactive) and unhold
            # reach the call: it stops the agent and keeps music on hold away from the model.
            self.server.post(self.handle.hold, media.status == pj.PJSUA_CALL_MEDIA_REMOTE_HOLD)
            if media.status not in (pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD):
                continue
            stream = self.getStreamInfo(index)
            rate = 16000 if stream.codecClockRate >= 16000 else 8000
            audio = self.getAudioMedia(index)
            port = self.handle.port
            if port is None:  # first media; a re-INVITE (hold, codec change) keeps the port's rate
                port = CallPort(self.server.pump, rate)
                fmt = pj.MediaFormatAudio()
                fmt.init(pj.PJMEDIA_FORMAT_PCM, rate, 1, 20000, 16)
                port.createPort(f"callbridge-{id(port):x}", fmt)
                self.handle.port = port
            # A re-INVITE that changes the SDP (hold, unhold, another codec) makes PJSIP destroy
            # the stream and its conference slot and create new ones, so the port is joined to
            # this report's slot every time, not only the first.
            audio.startTransmit(port)
            port.startTransmit(audio)
            self.server.post(self.handle.media_ready, port.rate_hz)
            return

    def onDtmfDigit(self, prm: Any) -> None:
        self.server.post(self.handle.dtmf, str(prm.digit)[:1])

    def onCallTransferStatus(self, prm: Any) -> None:
        if prm.finalNotify:
            self.server.post(self.handle.transfer_done, int(prm.statusCode))


class TrunkAccount(pj.Account):  # type: ignore[misc]
    def __init__(self, server: SipTrunkServer, name: str) -> None:
        super().__init__()
        self.server = server
        self.name = name

    def onIncomingCall(self, prm: Any) -> None:
        self.server.incoming(self, prm)

    def onRegState(self, prm: Any) -> None:
        self.server.post(self.server.registration_state, self.name, int(prm.code), str(prm.reason),
                         int(prm.expiration))


class SipLeg:
    """CallerLeg toward a SIP caller: PCM16 at the codec's rate through the call's media port."""

    transport = TRANSPORT
    keepalive = False  # PJSIP's clock sends silence itself when no agent audio is queued

    def __init__(self, server: SipTrunkServer, handle: InviteHandle, rate_hz: int) -> None:
        self.server = server
        self.handle = handle
        self.audio_format = AudioFormat(Encoding.SLIN, rate_hz)
        self._dropped = server.metrics.frames_dropped.labels("outbound", "sip_queue_full")

    async def send_audio(self, payload: bytes) -> None:
        port = self.handle.port
        if port is None:  # the call is over on the SIP side
            return
        if len(port.outbound) == port.outbound.maxlen:
            self._dropped.inc()
        port.outbound.append(payload)

    async def clear_playback(self) -> None:
        port = self.handle.port
        if port is not None:
            port.outbound.clear()

    async def hangup(self) -> None:
        self.server.hang_up(self.handle, 200)

    async def transfer(self, target: TransferTarget) -> bool:
        uri = st.refer_target(target.destination, self.handle.remote_contact)
        loop = asyncio.get_running_loop()
        self.handle.transfer = loop.create_future()
        self.server.refer(self.handle, uri)
        try:
            status = await asyncio.wait_for(self.handle.transfer, TRANSFER_TIMEOUT)
        except TimeoutError:
            log.warning("sip: no final NOTIFY for the transfer within %.0f s", TRANSFER_TIMEOUT)
            return False
        log.info("sip: transfer answered %d", status)
        if not 200 <= status < 300:
            return False
        # The transferee is connected to the target: leave its dialog (RFC 5589 section 6.1).
        self.server.hang_up(self.handle, 200)
        return True


class SipTrunkServer:
    def __init__(self, switchboard: Switchboard, settings: SipSettings) -> None:
        self.switchboard = switchboard
        self.settings = settings
        self.metrics = switchboard.metrics
        self._allowed = tuple(ipaddress.ip_network(n, strict=False) for n in settings.allowed_sources)
        auth = settings.auth
        self._trusted = tuple(ipaddress.ip_network(n, strict=False) for n in auth.trusted_sources)
        self._authority = digest.DigestAuthority(
            auth.realm, {u.username: u.password.get_secret_value() for u in auth.users},
            algorithms=tuple(digest.Algorithm(a) for a in auth.algorithms)) if auth.users else None
        self._called = tuple(st.CalledSource(h) for h in settings.called_headers)
        # INVITEs per source address, as every listener's call set-ups (limits.setup_rate): a
        # flood or a password-guessing run from one address is answered 503 before anything else.
        limits, security = switchboard.settings.limits, switchboard.settings.security
        self._gate = SourceGate(TRANSPORT, (), self.metrics, rate=limits.setup_rate, burst=limits.setup_burst,
                                log_interval=security.refusal_log_interval)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.pump: MediaPump
        self.stack: SipStack | None = None
        self._accounts: list[TrunkAccount] = []
        self._live: dict[int, TrunkCall] = {}  # SIP thread: calls PJSIP may still call back
        # SIP thread: PJSIP objects of ended calls, released outside callbacks and only once the
        # conference bridge can no longer call into them (PJSIP 2.14+ removes ports from the
        # bridge asynchronously, on its clock thread): (release after, objects).
        self._graveyard: list[tuple[float, Any]] = []
        self._calls: set[asyncio.Task[None]] = set()
        self.registrations: dict[str, dict[str, Any]] = {}
        self._last_refusal_log = 0.0
        self.port = settings.port
        self.tls_port = settings.tls.port if "tls" in settings.transports else None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.pump = MediaPump(self._loop)
        # PJSIP's conference bridge runs at one rate. A stream at another rate goes through its
        # resampler, which costs about one 20 ms frame each way (measured: bench/README.md "SIP
        # trunk calls"), so the bridge runs at 8 kHz unless G.722 may be negotiated.
        self.stack = SipStack(self._build, self._teardown, self.reap,
                              max_calls=max(4, self.switchboard.settings.limits.max_calls + 8),
                              clock_rate=16000 if "G722" in self.settings.codecs else 8000,
                              on_table_full=self._table_full)
        await asyncio.to_thread(self.stack.start)
        self.stack.register_this_thread("event-loop")
        admitted, wanted = self.stack.admitted_calls, self.switchboard.settings.limits.max_calls
        if admitted < wanted:
            log.warning("sip: PJSIP admits %d concurrent calls (the PJSUA_MAX_CALLS of its build), fewer than "
                        "limits.max_calls %d: it answers further INVITEs 486 Busy Here itself", admitted, wanted)
        where = ", ".join(f"{t.upper()} {self.settings.host}:{self.tls_port if t == 'tls' else self.port}"
                          for t in self.settings.transports)
        auth = self.settings.auth
        checked = "" if not auth.users else (
            f", digest-authenticated (realm {auth.realm})" + (
                f" except from {', '.join(auth.trusted_sources)}" if auth.trusted_sources else ""))
        log.info("SIP trunk listening on %s; INVITEs accepted from %s%s", where,
                 ", ".join(self.settings.allowed_sources) or "anywhere", checked)

    def _build(self, ep: pj.Endpoint) -> None:  # SIP thread
        s = self.settings
        # Only the configured codecs are offered and accepted, in their order (telephone-event
        # is always there).
        wanted = {_CODEC_IDS[c]: 250 - rank for rank, c in enumerate(s.codecs)}
        for codec in ep.codecEnum2():
            name = codec.codecId.rsplit("/", 1)[0] if codec.codecId.count("/") > 1 else codec.codecId
            ep.codecSetPriority(codec.codecId, wanted.get(name, 0))
        kinds = {"udp": pj.PJSIP_TRANSPORT_UDP, "tcp": pj.PJSIP_TRANSPORT_TCP, "tls": pj.PJSIP_TRANSPORT_TLS}
        port = s.port
        for transport in s.transports:
            tc = pj.TransportConfig()
            tc.port = s.tls.port if transport == "tls" else port
            tc.boundAddress = "" if s.host in ("0.0.0.0", "") else s.host
            if s.public_address:
                tc.publicAddress = s.public_address
            if transport == "tls":
                tls_config(tc.tlsConfig, s.tls)
                check_port_free(tc.boundAddress or "0.0.0.0", tc.port)
            try:
                tid = ep.transportCreate(kinds[transport], tc)
            except pj.Error as exc:
                raise OSError(f"SIP {transport.upper()} port {s.host}:{tc.port}: {exc.reason}") from None
            bound = int(ep.transportGetInfo(tid).localName.rsplit(":", 1)[-1])
            if transport == "tls":
                self.tls_port = bound
            elif port == 0:  # the kernel picked one (tests): UDP and TCP share it
                port = bound
        self.port = port
        host = s.public_address or (s.host if s.host not in ("0.0.0.0", "") else "127.0.0.1")
        trunk = TrunkAccount(self, "trunk")
        trunk.create(self._account_config(f"sip:callbridge@{host}:{self.port}"), True)
        self._accounts.append(trunk)
        for index, reg in enumerate(s.registrations):
            account = TrunkAccount(self, str(index))
            cfg = self._account_config(f"sip:{reg.username}@{reg.domain or _host_of(reg.registrar)}")
            cfg.regConfig.registrarUri = reg.registrar
            cfg.regConfig.timeoutSec = reg.expires
            cfg.regConfig.retryIntervalSec = reg.retry_interval
            cfg.regConfig.firstRetryIntervalSec = min(reg.retry_interval, 10)
            cred = pj.AuthCredInfo("digest", reg.realm, reg.username, 0, reg.password.get_secret_value())
            cfg.sipConfig.authCreds.append(cred)
            account.create(cfg)
            self._accounts.append(account)

    def reap(self) -> None:  # SIP thread, between polls
        graveyard = self._graveyard
        if graveyard and graveyard[0][0] <= time.monotonic():
            now = time.monotonic()
            self._graveyard = [entry for entry in graveyard if entry[0] > now]

    def _teardown(self) -> None:  # SIP thread, before the library goes
        for call in list(self._live.values()):
            call.handle.call = None
            call.handle.port = None
        self._live.clear()
        self._graveyard.clear()
        self._accounts.clear()

    def _account_config(self, id_uri: str) -> pj.AccountConfig:
        s = self.settings
        cfg = pj.AccountConfig()
        cfg.idUri = id_uri
        cfg.callConfig.timerUse = _TIMERS[s.session_timers]
        cfg.mediaConfig.srtpUse = _SRTP[s.srtp]
        # SDES keys ride in the SDP: with srtp_requires_tls, SRTP is negotiated only on a call whose
        # INVITE came over TLS (PJSIP level 1: a secure next hop); PJSIP answers 406 to any other.
        cfg.mediaConfig.srtpSecureSignaling = 1 if s.srtp_requires_tls else 0
        cfg.mediaConfig.transportConfig.port = s.rtp_port
        cfg.mediaConfig.transportConfig.portRange = s.rtp_port_range
        if s.host not in ("0.0.0.0", ""):
            cfg.mediaConfig.transportConfig.boundAddress = s.host
        if s.public_address:
            cfg.mediaConfig.transportConfig.publicAddress = s.public_address
        # A trunk behind NAT: answer from where requests came, and rewrite Contact and Via.
        cfg.natConfig.contactRewriteUse = 1
        cfg.natConfig.viaRewriteUse = 1
        cfg.natConfig.sdpNatRewriteUse = 1 if s.public_address else 0
        return cfg

    async def close(self) -> None:
        for task in list(self._calls):
            task.cancel()
        if self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)
        if self.stack is not None:
            await asyncio.to_thread(self.stack.stop)

    @property
    def active(self) -> int:
        return len(self._calls)

    # ------------------------------------------------------------------ SIP thread -> loop
    def post(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:
                pass  # the loop is gone: the daemon is stopping

    def forget(self, call: TrunkCall) -> None:  # SIP thread, inside PJSIP's callback
        self._live.pop(id(call), None)
        # PJSIP's call object and the media port are released in the SIP thread, but not inside
        # the callback that reports the end (SWIG would run the destructor under its own upcall):
        # they wait in the graveyard until the thread's next pass.
        port = call.handle.port
        if port is not None:
            port.consumer = None
            port.outbound.clear()
        self._graveyard.append((time.monotonic() + PORT_RELEASE_DELAY, (call, port)))
        call.handle.call = None
        call.handle.port = None

    def incoming(self, account: TrunkAccount, prm: Any) -> None:  # SIP thread
        source = str(prm.rdata.srcAddress)
        try:
            numbers = st.parse_invite(str(prm.rdata.wholeMsg), self._called)
        except st.InviteError as exc:
            numbers = st.InviteNumbers("", None, "", "")
            log.info("sip: INVITE not routable: %s", exc)
        handle = InviteHandle(numbers, source)
        call = TrunkCall(self, account, prm.callId, handle)
        handle.call = call
        self._live[id(call)] = call
        host = st.source_host(source)
        try:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
        except ValueError:
            address = None
        allowed = address is not None and (not self._allowed or any(address in net for net in self._allowed))
        if not allowed:
            self._answer_now(call, 403, "Forbidden")
            self.metrics.calls_refused.labels(TRANSPORT, "source_not_allowed").inc()
            self._log_refusal("sip: INVITE from %s refused: source not allowed", host)
            return
        if not self._gate.allows_setup(host):
            self._answer_now(call, 503, "Service Unavailable", self.settings.retry_after)
            return
        if self._authority is not None and not any(address in net for net in self._trusted):
            if not self._authenticated(call, str(prm.rdata.wholeMsg), host):
                return
        self.post(self._on_invite, handle)

    def _authenticated(self, call: TrunkCall, text: str, host: str) -> bool:  # SIP thread
        """Digest-check an INVITE: True to go on; otherwise it has been answered 401 or 403."""
        assert self._authority is not None
        method, _ = digest.request_line(text)
        now = time.monotonic()
        check = self._authority.check(method, digest.authorization_headers(text), host, now)
        if check.verdict is digest.Verdict.OK:
            return True
        if check.verdict is digest.Verdict.FAILED:
            self._answer_now(call, 403, "Forbidden")
            self.metrics.calls_refused.labels(TRANSPORT, "auth_failed").inc()
            self._log_refusal("sip: INVITE from %s refused: digest authentication failed (%s)", host, check.reason)
            return False
        stale = check.verdict is digest.Verdict.STALE
        self._answer_now(call, 401, "Unauthorized",
                         headers=[("WWW-Authenticate", c) for c in self._authority.challenges(host, now, stale=stale)])
        self.metrics.sip_challenges.inc()
        return False

    def _table_full(self) -> None:  # SIP thread, from PJSIP's log writer
        """PJSIP answered an INVITE 486 because its call table is full: counted as a capacity
        refusal (the INVITE never reached the trunk, so its numbers are unknown)."""
        self.metrics.calls_refused.labels(TRANSPORT, Refusal.CAPACITY.value).inc()
        self._log_refusal("sip: INVITE refused 486 by PJSIP: its %d call slots are in use",
                          self.stack.admitted_calls if self.stack is not None else 0)

    def _log_refusal(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_refusal_log >= REFUSAL_LOG_INTERVAL:
            self._last_refusal_log = now
            log.warning(message, *args)

    def _answer_now(self, call: TrunkCall, status: int, reason: str = "", retry_after: int | None = None,
                    headers: list[tuple[str, str]] | None = None) -> None:
        op = pj.CallOpParam(True)
        op.statusCode = status
        if reason:
            op.reason = reason
        extra = list(headers or [])
        if retry_after is not None:
            extra.append(("Retry-After", str(retry_after)))
        for name, value in extra:
            header = pj.SipHeader()
            header.hName = name
            header.hValue = value
            op.txOption.headers.append(header)
        call.answer(op)

    # ------------------------------------------------------------------ loop -> SIP thread
    def _answer(self, handle: InviteHandle, status: int, reason: str = "", retry_after: int | None = None) -> None:
        assert self.stack is not None

        def command() -> None:
            call = handle.call
            if call is not None and id(call) in self._live:
                self._answer_now(call, status, reason, retry_after)

        self.stack.submit(command)

    def hang_up(self, handle: InviteHandle, status: int) -> None:
        assert self.stack is not None

        def command() -> None:
            call = handle.call
            if call is not None and id(call) in self._live:
                op = pj.CallOpParam(True)
                op.statusCode = status
                call.hangup(op)

        self.stack.submit(command)

    def refer(self, handle: InviteHandle, uri: str) -> None:
        assert self.stack is not None

        def command() -> None:
            call = handle.call
            if call is not None and id(call) in self._live:
                call.xfer(uri, pj.CallOpParam(True))

        self.stack.submit(command)

    def registration_state(self, index: str, code: int, reason: str, expires: int) -> None:
        ok = 200 <= code < 300 and expires > 0
        registrar = self.settings.registrations[int(index)].registrar
        self.registrations[index] = {"registrar": registrar, "registered": ok, "code": code, "reason": reason,
                                     "expires": expires}
        self.metrics.sip_registered.labels(index).set(1 if ok else 0)
        if ok:
            log.info("sip: registered with %s for %d s", registrar, expires)
        else:
            log.warning("sip: registration with %s failed: %d %s (retrying)", registrar, code, reason)

    def status(self) -> dict[str, Any]:
        """What /ready says of the trunk."""
        admitted = self.stack.admitted_calls if self.stack is not None else None
        return {"port": self.port, "tls_port": self.tls_port, "max_calls": admitted, "registrations": [
            self.registrations.get(str(i), {"registrar": r.registrar, "registered": False, "code": 0})
            for i, r in enumerate(self.settings.registrations)]}

    # ------------------------------------------------------------------ one call, on the loop
    def _on_invite(self, handle: InviteHandle) -> None:
        loop = asyncio.get_running_loop()
        handle.media = loop.create_future()
        handle.gone = asyncio.Event()
        task = loop.create_task(self._serve(handle))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _serve(self, handle: InviteHandle) -> None:
        """The call's boundary: what goes wrong ends this call only."""
        switchboard = self.switchboard
        numbers = handle.numbers
        dialled = numbers.dialled
        retry = self.settings.retry_after
        try:
            if switchboard.draining:
                switchboard.refused(TRANSPORT, Refusal.DRAINING, dialled=dialled, caller_id=numbers.caller)
                self._answer(handle, 503, "Service Unavailable", retry)
                return
            resolution: Resolution | None = None
            if dialled:
                try:
                    resolution = await switchboard.route(dialled)
                except (DirectoryError, TenantError, TimeoutError) as exc:
                    log.error("sip: tenant lookup failed: %s", exc)
                    switchboard.refused(TRANSPORT, Refusal.LOOKUP_FAILED, dialled=dialled)
                    self._answer(handle, 503, "Service Unavailable", retry)
                    return
            if resolution is None:
                log.info("sip: no active tenant for the dialled number; 404")
                switchboard.refused(TRANSPORT, Refusal.UNKNOWN_NUMBER, dialled=dialled or "-",
                                    caller_id=numbers.caller)
                self._answer(handle, 404, "Not Found")
                return
            refusal = switchboard.admit(resolution.tenant)
            if refusal is not None:
                self._log_refusal("sip: call for tenant %s refused: %s", resolution.tenant.slug, refusal.value)
                switchboard.refused(TRANSPORT, refusal, dialled=dialled, caller_id=numbers.caller,
                                    tenant=resolution.tenant)
                self._answer(handle, 503, "Service Unavailable", retry)
                return
            assert handle.gone is not None and handle.media is not None
            if handle.gone.is_set():  # CANCEL arrived while we routed
                return
            key = f"sip-{id(handle):x}"
            switchboard.register_pending(key, resolution, dialled, numbers.caller)
            session: ModelSession | None = None
            try:
                self._answer(handle, 180, "Ringing")
                if self.settings.answer_delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(handle.gone.wait(), self.settings.answer_delay)
                    if handle.gone.is_set():  # CANCEL while ringing: no model session was opened
                        log.info("sip: the caller hung up while ringing")
                        return
                session = await self._open_model(handle, resolution)
                if session is None:
                    return
                self._answer(handle, 200, "OK")
                handle.answered = True
                gone: asyncio.Future[Any] = asyncio.ensure_future(handle.gone.wait())
                media: asyncio.Future[Any] = handle.media
                try:
                    await asyncio.wait({media, gone}, timeout=MEDIA_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    gone.cancel()
                if handle.gone.is_set() and not handle.media.done():
                    log.info("sip: the caller went away before media started")
                    return
                if not handle.media.done():
                    log.warning("sip: no media within %.0f s of the answer; hanging up", MEDIA_TIMEOUT)
                    self.hang_up(handle, 408)
                    return
                rate_hz = handle.media.result()
                info = CallInfo(TRANSPORT, resolution.tenant, resolution.number or dialled,
                                caller_id=numbers.caller)
                leg = SipLeg(self, handle, rate_hz)
                try:
                    call = switchboard.open_call(info, leg, session)
                except ValueError as exc:
                    log.error("sip: cannot set up the call for tenant %s: %s", resolution.tenant.slug, exc)
                    self.hang_up(handle, 500)
                    return
                session = None  # the call owns it now
            finally:
                switchboard.claim(key)
                if session is not None:  # opened, then the caller left or the answer failed
                    await session.close()
            handle.live = call
            port = handle.port
            if port is not None:
                port.consumer = call.receive_audio
            del port
            if handle.held:
                call.hold(True)
            if handle.gone.is_set():
                call.caller_hung_up()
            await switchboard.run_call(call)
        except Exception:
            log.error("sip call failed", exc_info=True)
            self.hang_up(handle, 500)

    async def _open_model(self, handle: InviteHandle, resolution: Resolution) -> ModelSession | None:
        """The model session, opened while the caller hears ringing: a model that cannot be
        reached is answered 503 with Retry-After (the PBX tries its next route) instead of a
        200 into dead air. None when the call was refused here or the caller gave up."""
        switchboard = self.switchboard
        numbers = handle.numbers
        assert handle.gone is not None
        opening = asyncio.ensure_future(switchboard.open_model(resolution.tenant))
        gone = asyncio.ensure_future(handle.gone.wait())
        abandoned = False
        try:
            await asyncio.wait({opening, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not opening.done():  # CANCEL (or the daemon stopping) while the model was reached
                abandoned = True
                opening.cancel()
                await asyncio.wait({opening})
                if not opening.cancelled() and opening.exception() is None:  # it opened all the same
                    await opening.result().close()
        if abandoned:
            log.info("sip: the caller hung up while ringing")
            return None
        try:
            session = opening.result()
        except ModelError as exc:
            self._log_refusal("sip: model unavailable (%s); 503 so that the caller is routed elsewhere", exc)
            switchboard.refused(TRANSPORT, Refusal.MODEL_UNAVAILABLE, dialled=numbers.dialled,
                                caller_id=numbers.caller, tenant=resolution.tenant)
            self._answer(handle, 503, "Service Unavailable", self.settings.retry_after)
            return None
        except ValueError as exc:  # the tenant names a provider this deployment cannot serve
            log.error("sip: cannot set up the call for tenant %s: %s", resolution.tenant.slug, exc)
            self.metrics.model_errors.labels(switchboard.endpoint.provider.value, "config").inc()
            self._answer(handle, 500, "Server Internal Error")
            return None
        if handle.gone.is_set():  # CANCEL just as the session opened
            await session.close()
            log.info("sip: the caller hung up while ringing")
            return None
        return session


def _host_of(uri: str) -> str:
    rest = uri.split(":", 1)[-1]
    return rest.split("@", 1)[-1].split(";", 1)[0].split(">", 1)[0]
