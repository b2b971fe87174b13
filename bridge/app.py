"""Application lifecycle: build every part from the settings, serve, drain, stop.

Shutdown follows the usual server pattern: the shutdown trigger (an awaitable, so tests need no
signals) flips readiness to false at once; listeners stay up only to refuse new calls the
transport's proper way; active calls get ``limits.drain_timeout`` seconds to finish; what is left
is ended with outcome ``shutdown``.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

from prometheus_client import CollectorRegistry

from bridge.asterisk.agi import FastAgiServer
from bridge.asterisk.audiosocket import AudioSocketServer
from bridge.core import heap
from bridge.core.call import CallInfo, CallTap, Outcome
from bridge.core.providers import fit_tenants
from bridge.core.realtime import endpoint_from_settings
from bridge.core.switchboard import Switchboard
from bridge.ops.accept import AcceptFailureWatch
from bridge.ops.http import HttpServer
from bridge.ops.live import LiveEvents, combined
from bridge.ops.metrics import Metrics
from bridge.settings import AppEnv, ConfigError, ModelProvider, Settings
from bridge.wsmedia.server import WebSocketMediaServer
from tenants.directory import TenantDirectory
from tenants.factory import open_directory

log = logging.getLogger(__name__)

LOOP_PROBE_PERIOD = 0.5
END_GRACE = 5.0

TapFactory = Callable[[CallInfo], CallTap | None]


async def _listen(setting: str, host: str, port: int, start: Callable[[], Awaitable[None]]) -> None:
    """Start one listener; a port that cannot be bound is a ConfigError naming the setting."""
    try:
        await start()
    except OSError as exc:
        reason = {errno.EADDRINUSE: "the port is already in use: stop what holds it (another "
                                    "callbridge?) or choose another port",
                  errno.EACCES: "permission denied: ports below 1024 need privileges; choose a "
                                "higher port",
                  errno.EADDRNOTAVAIL: "this host has no such address: choose one of its "
                                       "addresses, or 0.0.0.0"}.get(exc.errno or 0, exc.strerror or str(exc))
        variable = "CALLBRIDGE_" + setting.upper().replace(".", "__")
        raise ConfigError(f"cannot listen on {host}:{port} ({setting}, {variable}): {reason}") from None


class Application:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        directory: TenantDirectory | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics(registry)
        self.clock = clock
        self._directory = directory
        self._started = asyncio.Event()
        self.switchboard: Switchboard | None = None
        self.audiosocket: AudioSocketServer | None = None
        self.agi: FastAgiServer | None = None
        self.http: HttpServer | None = None
        self.wsmedia: WebSocketMediaServer | None = None
        self.sip: Any = None  # bridge.siptrunk.server.SipTrunkServer when the SIP trunk is enabled
        self.webrtc: Any = None  # bridge.webrtc.server.WebRtcServer when browser calls are enabled
        self.simulator: Any = None
        self.stasis: Any = None  # bridge.asterisk.stasis.StasisApplication when ARI is enabled
        self.ami: Any = None  # bridge.asterisk.ami.AmiConnection when AMI is enabled
        self.tap_factory: TapFactory | None = None
        self.archive: Any = None  # bridge.records.archive.CallArchive while recording is enabled
        self.live = LiveEvents(self.metrics)  # live call events (GET /api/calls/live)
        self.evaluator: Any = None  # bridge.records.evaluation.Evaluator when evaluation is on

    async def wait_started(self) -> None:
        await self._started.wait()

    async def run(self, shutdown: Awaitable[Any]) -> None:
        try:
            await self._run(shutdown)
        finally:
            if inspect.iscoroutine(shutdown):
                shutdown.close()  # start-up failed before awaiting it: no "never awaited" warning

    async def _run(self, shutdown: Awaitable[Any]) -> None:
        settings = self.settings
        async with AsyncExitStack() as stack:
            directory = self._directory
            if directory is None:
                opened = open_directory(settings.tenants, observer=self.metrics.tenant_cache)
                directory = await opened if inspect.isawaitable(opened) else opened
                stack.push_async_callback(directory.close)
            await self._report_tenants(directory)
            simulator_url = None
            if settings.resolved_provider is ModelProvider.SIMULATOR and settings.app_env is AppEnv.PRODUCTION:
                raise ConfigError("app_env is production but no model is configured (the built-in "
                                  "simulator is for development): set AZURE_VOICELIVE_ENDPOINT, "
                                  "OPENAI_API_KEY or an Azure OpenAI endpoint")
            if settings.resolved_provider is ModelProvider.SIMULATOR:
                from bridge.simulator import SimulatorServer

                self.simulator = SimulatorServer(settings.model.simulator_host, settings.model.simulator_port)
                await _listen("model.simulator_port", settings.model.simulator_host,
                              settings.model.simulator_port, self.simulator.start)
                stack.push_async_callback(self.simulator.close)
                simulator_url = self.simulator.url
                log.info("no model API key configured: using the built-in simulator at %s", simulator_url)
            endpoint = endpoint_from_settings(settings, simulator_url)
            stack.push_async_callback(endpoint.close)
            tap_factory = self.tap_factory
            if settings.recording.enabled and tap_factory is None:
                from bridge.records.archive import CallArchive
                from bridge.records.evaluation import evaluator_from_settings

                self.evaluator = evaluator_from_settings(
                    settings, self.simulator.text_base_url if self.simulator is not None else None)
                if self.evaluator is not None:
                    stack.push_async_callback(self.evaluator.close)
                # Entered before the listeners, left after them: recordings of calls still
                # finishing are closed and indexed before the stack unwinds further.
                self.archive = await stack.enter_async_context(
                    CallArchive(settings, self.metrics, clock=self.clock, evaluator=self.evaluator,
                                live=self.live, tenants=directory).running()
                )
                tap_factory = self.archive.open_tap
            recorder_taps, live = tap_factory, self.live

            def call_taps(info: CallInfo) -> CallTap | None:
                return combined(recorder_taps(info) if recorder_taps is not None else None, live.open_call(info))

            tap_factory = call_taps
            switchboard = self.switchboard = Switchboard(
                settings, directory, endpoint, self.metrics, tap_factory=tap_factory, clock=self.clock
            )
            stack.push_async_callback(switchboard.close_endpoints)
            if self.archive is not None:
                switchboard.refusal_listener = self.archive.record_refusal
            if settings.http.enabled:
                self.http = HttpServer(settings.http, switchboard, self.metrics)
                if self.archive is not None and settings.ops.enabled:
                    from bridge.ops.api import OpsApi

                    self.http.install(OpsApi(self.archive, settings.ops, live=self.live).install)
                if settings.webrtc.enabled:
                    from bridge.ops.tokens import BearerTokens
                    from bridge.webrtc.server import WebRtcServer

                    self.webrtc = WebRtcServer(switchboard, settings.webrtc, BearerTokens(settings.ops))
                    self.http.install(self.webrtc.install)
                    stack.push_async_callback(self.webrtc.close)
                # WebSocket media (/ws/audio/{number}, /ws/twilio, /ws/freeswitch) on the same port.
                self.wsmedia = WebSocketMediaServer(switchboard, self.http.gate)
                self.http.install(self.wsmedia.install)
                stack.push_async_callback(self.http.close)
                await _listen("http.port", settings.http.host, settings.http.port, self.http.start)
                stack.push_async_callback(self.wsmedia.close)
            if settings.audiosocket.enabled:
                self.audiosocket = AudioSocketServer(switchboard, settings.audiosocket)
                await _listen("audiosocket.port", settings.audiosocket.host, settings.audiosocket.port,
                              self.audiosocket.start)
                stack.push_async_callback(self.audiosocket.close)
                if settings.agi.enabled:
                    self.agi = FastAgiServer(switchboard, settings.agi, settings.audiosocket,
                                             settings.tenants, self.audiosocket.port)
                    await _listen("agi.port", settings.agi.host, settings.agi.port, self.agi.start)
                    stack.push_async_callback(self.agi.close)
            if settings.sip.enabled:
                await self._start_sip(stack, switchboard)
            stasis = await self._start_ari(stack, switchboard)
            # The first call must not pay for start-up: the model SDK's client is built and its
            # realtime modules imported now (in a thread), then start-up's heap is frozen.
            await endpoint.warm_up()
            if self.evaluator is not None:
                await self.evaluator.warm_up()
            heap.settle()
            accept_failures = AcceptFailureWatch(self.metrics, self._listener_ports)
            accept_failures.install(asyncio.get_running_loop())
            stack.callback(accept_failures.uninstall)
            pauses = heap.PauseWatch(self.metrics.gc_pause)
            pauses.install()
            stack.callback(pauses.uninstall)
            collections = heap.CollectionSchedule()
            collections.install()
            stack.callback(collections.uninstall)
            self.metrics.ready.set(1)
            async with asyncio.TaskGroup() as tg:
                background = [tg.create_task(self._probe_loop_lag()), tg.create_task(collections.run())]
                if stasis is not None:
                    background.append(tg.create_task(stasis.run()))
                watch = getattr(directory, "watch", None)
                if callable(watch):
                    background.append(tg.create_task(watch()))
                self._started.set()
                log.info("callbridge ready")
                await shutdown
                await self._drain(switchboard)
                for task in background:
                    task.cancel()
        log.info("callbridge stopped")

    def _listener_ports(self) -> dict[int, str]:
        ports: dict[int, str] = {}
        for name, server in (("http", self.http), ("audiosocket", self.audiosocket), ("agi", self.agi)):
            if server is None:
                continue
            try:
                ports[server.port] = name
            except (AssertionError, IndexError):  # not listening (any more)
                continue
        return ports

    async def _start_sip(self, stack: AsyncExitStack, switchboard: Switchboard) -> None:
        try:
            from bridge.siptrunk.server import SipTrunkServer
        except ImportError as exc:
            raise ConfigError(f"sip.enabled needs pjsua2 (pip install 'callbridge[sip]'): {exc}") from None
        from bridge.siptrunk.stack import SipStackError

        self.sip = SipTrunkServer(switchboard, self.settings.sip)
        try:
            await self.sip.start()
        except SipStackError as exc:  # a port in use, a certificate PJSIP cannot load
            raise ConfigError(f"cannot start the SIP trunk (sip settings, CALLBRIDGE_SIP__*): {exc}") from None
        stack.push_async_callback(self.sip.close)
        if self.http is not None:
            self.http.ready_details["sip"] = self.sip.status

    async def _report_tenants(self, directory: TenantDirectory) -> None:
        """Log which tenant store serves how many numbers, and every tenant setting the model
        provider cannot take (before any call meets it)."""
        settings = self.settings
        try:
            async with asyncio.timeout(max(5.0, settings.tenants.lookup_timeout * 5)):
                tenants = await directory.list_tenants()
        except Exception as exc:  # the store may be down at start-up: calls will retry it
            log.warning("tenant store %s: cannot list tenants at start-up: %s", settings.tenants.backend, exc)
            return
        active = [t for t in tenants if t.active]
        # At WARNING so that it shows at production's default level: after a migration it is the
        # line that says the daemon serves the deployment's own tenants.
        log.warning("tenant store %s: %d active tenant(s), %d number(s) and pattern(s); model provider %s",
                    settings.tenants.backend, len(active), sum(len(t.numbers) for t in active),
                    settings.resolved_provider.value)
        for fit in fit_tenants(settings, active):
            level = logging.ERROR if fit.refused else logging.WARNING
            for line in fit.lines():
                log.log(level, "%s", line)

    async def _start_ari(self, stack: AsyncExitStack, switchboard: Switchboard) -> Any:
        """The ARI client and Stasis application (run in the background task group), and AMI."""
        settings = self.settings
        if settings.ami.enabled:
            from bridge.asterisk.ami import AmiConnection

            self.ami = AmiConnection(settings.ami)
            await self.ami.start()
            stack.push_async_callback(self.ami.close)
            if self.agi is not None:
                self.agi.ami = self.ami
                self.ami.on_event("Hangup", self.agi.ami_hangup)
        if not settings.ari.enabled:
            return None
        from bridge.asterisk.ari import AriClient
        from bridge.asterisk.stasis import StasisApplication

        client = AriClient(settings.ari)
        stack.push_async_callback(client.close)
        port = self.audiosocket.port if self.audiosocket is not None else None
        self.stasis = StasisApplication(settings, client, switchboard, audiosocket_port=port,
                                        clock=self.clock)
        return self.stasis

    async def _drain(self, switchboard: Switchboard) -> None:
        switchboard.start_draining()
        active = switchboard.active_calls
        log.info("draining: %d active call(s), up to %.0f s", active, self.settings.limits.drain_timeout)
        try:
            async with asyncio.timeout(self.settings.limits.drain_timeout):
                await switchboard.wait_idle()
        except TimeoutError:
            log.warning("drain timeout: ending %d call(s)", switchboard.active_calls)
            switchboard.end_all(Outcome.SHUTDOWN)
            try:
                async with asyncio.timeout(END_GRACE):
                    await switchboard.wait_idle()
            except TimeoutError:
                log.error("%d call(s) did not end in time", switchboard.active_calls)
        for server in (self.audiosocket, self.agi):
            if server is not None:
                server.stop_accepting()

    async def _probe_loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        lag = self.metrics.event_loop_lag
        while True:
            expected = loop.time() + LOOP_PROBE_PERIOD
            await asyncio.sleep(LOOP_PROBE_PERIOD)
            lag.observe(max(0.0, loop.time() - expected))
