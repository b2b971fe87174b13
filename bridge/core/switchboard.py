"""The switchboard: admission, tenant routing and the registry of calls, shared by all transports.

Every transport asks the switchboard whether a call may start (``admit``), which tenant answers
the dialled number (``route``), and runs the call through ``run_call`` so that capacity, drain,
metrics and recording are handled the same way whatever the transport.

Every refusal is counted; it is also logged with its reason and tenant, at most once per
``REFUSAL_LOG_INTERVAL`` seconds for each reason and tenant (the next line says how many were not
logged in between), so that a flood of refused calls cannot flood the log. What a refusal keeps
for the call index is cut to ``MAX_STORED_NUMBER_CHARS``, the caller ID an admitted call keeps to
``MAX_CALLER_ID_CHARS``. A call announced by signalling and never claimed by its media connection
leaves the registry on a timer of its own, so that it stops counting against capacity
``agi.claim_timeout`` seconds after it was announced.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.core.call import Call, CallerLeg, CallInfo, CallTap, Outcome, tenant_endpoint
from bridge.core.continuity import ModelPolicy
from bridge.core.realtime import ModelEndpoint, ModelError, ModelSession, endpoint_from_settings, open_session
from bridge.ops import logs
from bridge.ops.metrics import Metrics, TenantLabels
from bridge.settings import ModelProvider, Settings
from media.codec import AudioFormat
from sip.capabilities import refusing, setting_problems
from tenants.config import TenantConfig
from tenants.directory import Resolution, TenantDirectory
from tenants.routing import route

log = logging.getLogger(__name__)

Clock = Callable[[], float]
TapFactory = Callable[[CallInfo], CallTap | None]

REFUSAL_LOG_INTERVAL = 10.0
MAX_STORED_NUMBER_CHARS = 32  # E.164 is 16 with the "+"; a SIP user part of an extension fits
MAX_CALLER_ID_CHARS = 64  # what a call keeps of the caller ID its peer sent (records, webhook)
_REFUSAL_LOG_KEYS = 256  # (reason, tenant) pairs remembered before the oldest are forgotten


class Refusal(enum.StrEnum):
    DRAINING = "draining"
    CAPACITY = "capacity"
    TENANT_CAPACITY = "tenant_capacity"
    UNKNOWN_NUMBER = "unknown_number"
    LOOKUP_FAILED = "lookup_failed"
    UNKNOWN_CALL = "unknown_call"
    MODEL_UNAVAILABLE = "model_unavailable"


@dataclass(frozen=True, slots=True)
class RefusedCall:
    """A call turned away before reaching the model, for the call index."""

    transport: str
    reason: Refusal
    dialled: str
    caller_id: str
    tenant: TenantConfig | None
    at: float = field(default_factory=time.time)  # wall clock, for records only


@dataclass(slots=True)
class PendingCall:
    """A call announced by signalling (FastAGI, ARI) whose media connection is still to come."""

    key: str
    resolution: Resolution
    dialled: str
    caller_id: str
    expires_at: float
    audio_format: AudioFormat | None = None  # None: what the media transport says
    # A model session opened before the caller was answered, taken over by the call.
    session: ModelSession | None = None
    # The transport label of the call: how it was set up (FastAGI or ARI), not only its media.
    transport: str = "audiosocket"
    # Set by the media side when the call ends with a transfer, read by the signalling side.
    after_call: asyncio.Future[object] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    expiry: asyncio.TimerHandle | None = None


class RefusalLog:
    """Log lines for refused calls: at most one per ``interval`` per (reason, tenant)."""

    def __init__(self, clock: Clock, interval: float = REFUSAL_LOG_INTERVAL) -> None:
        self.clock = clock
        self.interval = interval
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # -> (logged at, suppressed since)

    def refused(self, transport: str, reason: Refusal, tenant: str) -> None:
        key = (reason.value, tenant)
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return
        if len(self._last) >= _REFUSAL_LOG_KEYS and key not in self._last:
            self._last.pop(next(iter(self._last)))
        self._last[key] = (now, 0)
        suppressed = last[1] if last is not None else 0
        level = logging.INFO if reason in (Refusal.UNKNOWN_NUMBER, Refusal.UNKNOWN_CALL) else logging.WARNING
        log.log(level, "call refused (%s): reason=%s tenant=%s%s", transport, reason.value, tenant or "-",
                f"; {suppressed} more refusal(s) of this kind not logged in the last {self.interval:g} s"
                if suppressed else "")


class Switchboard:
    def __init__(
        self,
        settings: Settings,
        directory: TenantDirectory,
        endpoint: ModelEndpoint,
        metrics: Metrics,
        *,
        tap_factory: TapFactory | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self.directory = directory
        self.endpoint = endpoint
        self.metrics = metrics
        self.tap_factory = tap_factory
        self.clock = clock
        self.refusal_listener: Callable[[RefusedCall], None] | None = None
        self.draining = False
        self._pending: dict[str, PendingCall] = {}
        self.refusal_log = RefusalLog(clock)
        self._endpoints: dict[str, ModelEndpoint] = {}
        self._active: set[Call] = set()
        self._per_tenant: dict[str, int] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._tenant_labels = TenantLabels(settings.metrics.tenant_labels, settings.metrics.max_tenant_labels)
        metrics.calls_capacity.set(settings.limits.max_calls)

    # ----------------------------------------------------------------- admission
    @property
    def active_calls(self) -> int:
        return len(self._active)

    def admit(self, tenant: TenantConfig | None = None) -> Refusal | None:
        """Why a new call must be refused right now, or None. Over capacity refuses, never queues."""
        if self.draining:
            return Refusal.DRAINING
        if len(self._active) + len(self._pending) >= self.settings.limits.max_calls:
            return Refusal.CAPACITY
        if tenant is not None and self._per_tenant.get(tenant.tenant_id, 0) >= tenant.max_concurrent_calls:
            return Refusal.TENANT_CAPACITY
        return None

    def refused(self, transport: str, reason: Refusal, *, dialled: str | None = None,
                caller_id: str = "", tenant: TenantConfig | None = None) -> None:
        """Count a refusal; with the dialled number known it is also kept in the call index."""
        self.metrics.calls_offered.labels(transport).inc()
        self.metrics.calls_refused.labels(transport, reason.value).inc()
        self.metrics.calls.labels(transport, Outcome.REFUSED.value).inc()
        self.refusal_log.refused(transport, reason, tenant.slug if tenant is not None else "")
        if dialled is not None and self.refusal_listener is not None:
            self.refusal_listener(RefusedCall(transport, reason, dialled[:MAX_STORED_NUMBER_CHARS],
                                              caller_id[:MAX_STORED_NUMBER_CHARS], tenant))

    async def route(self, dialled: str) -> Resolution | None:
        """Resolve the dialled number, applying the unknown-number policy. Raises on lookup failure."""
        started = self.clock()
        try:
            return await route(self.directory, dialled, self.settings.tenants)
        finally:
            self.metrics.tenant_lookup.observe(self.clock() - started)

    # ----------------------------------------------------------------- pending calls
    def register_pending(
        self,
        key: str,
        resolution: Resolution,
        dialled: str,
        caller_id: str,
        audio_format: AudioFormat | None = None,
        transport: str = "audiosocket",
    ) -> PendingCall:
        self._expire_pending()
        timeout = self.settings.agi.claim_timeout
        pending = PendingCall(key, resolution, dialled, caller_id, self.clock() + timeout, audio_format,
                              transport=transport)
        self.forget(key)
        # Its own timer: an unclaimed call stops counting against capacity even if no media
        # connection ever arrives to trigger the sweep below.
        pending.expiry = asyncio.get_running_loop().call_later(timeout, self._expire, key, pending)
        self._pending[key] = pending
        return pending

    def claim(self, key: str) -> PendingCall | None:
        self._expire_pending()
        pending = self._pending.pop(key, None)
        if pending is not None and pending.expiry is not None:
            pending.expiry.cancel()
        return pending

    def forget(self, key: str) -> None:
        pending = self._pending.pop(key, None)
        if pending is not None and pending.expiry is not None:
            pending.expiry.cancel()

    @property
    def pending_calls(self) -> int:
        return len(self._pending)

    def _expire(self, key: str, pending: PendingCall) -> None:
        if self._pending.get(key) is pending:
            del self._pending[key]
            log.info("announced call %s was not claimed by a media connection in time", key[:8])
        if not pending.after_call.done():
            pending.after_call.set_result(None)

    def _expire_pending(self) -> None:
        now = self.clock()
        for key in [k for k, p in self._pending.items() if p.expires_at < now]:
            pending = self._pending[key]
            if pending.expiry is not None:
                pending.expiry.cancel()
            self._expire(key, pending)

    # ----------------------------------------------------------------- calls
    def provider_for(self, tenant: TenantConfig) -> str:
        """The provider a tenant's calls go to."""
        if tenant.provider != "default":
            return tenant.provider
        # The built-in simulator on its Voice Live endpoint takes what Voice Live takes.
        return "azure_voicelive" if self.endpoint.voicelive is not None else self.endpoint.provider.value

    def endpoint_for(self, tenant: TenantConfig) -> ModelEndpoint:
        """The model endpoint a tenant's calls use: the deployment's, unless the tenant names
        another provider (whose credentials must then be configured). ValueError when the
        provider cannot take the tenant's settings and the tenant does not accept its defaults."""
        provider = self.provider_for(tenant)
        if tenant.unsupported_settings == "refuse":
            refused = refusing(setting_problems(tenant, provider))
            if refused:
                raise ValueError("; ".join(p.describe(tenant.slug, provider) for p in refused))
        if tenant.provider == "default":
            return self.endpoint
        endpoint = self._endpoints.get(tenant.provider)
        if endpoint is None:
            provider = ModelProvider(tenant.provider)
            simulator_url = self.endpoint.websocket_base_url if provider is ModelProvider.SIMULATOR else None
            if provider is ModelProvider.SIMULATOR and self.endpoint.provider is not ModelProvider.SIMULATOR:
                raise ValueError("tenant asks for the simulator, which this deployment does not run")
            endpoint = endpoint_from_settings(self.settings, simulator_url, provider)
            self._endpoints[tenant.provider] = endpoint
        return endpoint

    @property
    def model_policy(self) -> ModelPolicy:
        m = self.settings.model
        return ModelPolicy(m.reconnect_attempts, m.reconnect_backoff, m.stall_timeout, m.reconnect_prompt_after)

    async def open_model(self, tenant: TenantConfig) -> ModelSession:
        """A model session for a call not yet answered: a transport that can still refuse the
        call opens it first, so that a model it cannot reach sends the caller elsewhere
        (``Refusal.MODEL_UNAVAILABLE``) instead of into dead air. Raises ModelError."""
        endpoint = tenant_endpoint(self.endpoint_for(tenant), tenant)
        started = self.clock()
        try:
            session = await open_session(endpoint)
        except ModelError as exc:
            self.metrics.model_errors.labels(endpoint.provider.value, exc.kind).inc()
            raise
        self.metrics.model_connect.labels(endpoint.provider.value).observe(self.clock() - started)
        return session

    def open_call(self, info: CallInfo, leg: CallerLeg, session: ModelSession | None = None) -> Call:
        """Build the call; the transport feeds it caller audio while ``run_call`` runs it.
        ``session``: a model session opened for it beforehand (``open_model``), which it takes over."""
        self.metrics.calls_offered.labels(info.transport).inc()
        info.caller_id = info.caller_id[:MAX_CALLER_ID_CHARS]  # peer-supplied, of any length
        tap = self.tap_factory(info) if self.tap_factory is not None else None
        return Call(info, leg, self.endpoint_for(info.tenant), self.metrics, tap=tap, clock=self.clock,
                    max_duration=self.settings.limits.max_call_duration, session=session,
                    policy=self.model_policy)

    async def run_call(self, call: Call) -> Outcome:
        """Run one bridged call to its end. Per-call failures never propagate."""
        tenant_id = call.info.tenant.tenant_id
        self._active.add(call)
        self._per_tenant[tenant_id] = self._per_tenant.get(tenant_id, 0) + 1
        self._idle.clear()
        # run_call runs in the call's own task: every line it and the tasks it starts log names
        # the call and its tenant.
        log_token = logs.bind_call(call.info.call_id, call.info.tenant.slug)
        tenant_label = self._tenant_labels.label(call.info.tenant.slug)
        if tenant_label is not None:
            self.metrics.tenant_calls_active.labels(tenant_label).inc()
        try:
            outcome = await call.run()
            if tenant_label is not None:
                self.metrics.tenant_calls.labels(tenant_label, outcome.value).inc()
            return outcome
        finally:
            logs.unbind_call(log_token)
            if tenant_label is not None:
                self.metrics.tenant_calls_active.labels(tenant_label).dec()
            self._active.discard(call)
            left = self._per_tenant.get(tenant_id, 1) - 1
            if left:
                self._per_tenant[tenant_id] = left
            else:
                self._per_tenant.pop(tenant_id, None)
            if not self._active:
                self._idle.set()

    def calls(self) -> list[Call]:
        return list(self._active)

    # ----------------------------------------------------------------- drain
    def start_draining(self) -> None:
        self.draining = True
        self.metrics.ready.set(0)

    async def close_endpoints(self) -> None:
        """Release the SDK clients of the per-tenant provider endpoints (at shutdown)."""
        endpoints, self._endpoints = list(self._endpoints.values()), {}
        for endpoint in endpoints:
            await endpoint.close()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def end_all(self, outcome: Outcome = Outcome.SHUTDOWN) -> None:
        for call in list(self._active):
            call.end(outcome)
