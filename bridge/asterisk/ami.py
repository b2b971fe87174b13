"""AMI (Asterisk Manager Interface) connection through panoramisk: login, reconnect, actions, events.

Used where ARI is not: a FastAGI call's transfer can be carried out with the ``Redirect`` action on
the caller's channel, and manager events (``Hangup``, ``DTMFEnd``, ...) can be followed by name.

panoramisk owns the socket and the AMI framing; it reconnects on its own after the connection drops
(every ``reconnect_interval`` seconds) and logs in again, which is what an Asterisk restart needs.
This wrapper adds a ``logged_in`` event, bounded waits, and errors that say what went wrong.

panoramisk keeps the text of an unfinished message without limit; here a message (the text up to
its blank line) of more than ``MAX_MESSAGE_BYTES`` closes the connection, which panoramisk then
re-opens. Asterisk's largest messages (``CoreShowChannels`` entries, long variable lists) are a
few kilobytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from panoramisk import Manager
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message

from bridge.settings import AmiSettings

log = logging.getLogger(__name__)

ACTION_TIMEOUT = 5.0
# Seconds without traffic before panoramisk sends a Ping, and between Pings.
PING_SECONDS = 10

EventCallback = Callable[[Message], None]
MAX_MESSAGE_BYTES = 256 * 1024


class AmiError(Exception):
    """An AMI action failed; the message carries Asterisk's ``Message:`` text."""


class AmiUnavailable(AmiError):
    """Not connected and logged in to AMI."""


class _BoundedProtocol(AMIProtocol):  # type: ignore[misc]
    """panoramisk's protocol with a bound on the unfinished message it holds."""

    def data_received(self, data: bytes) -> None:
        held = len(self.queue[0]) if self.queue else 0
        if held + len(data) > MAX_MESSAGE_BYTES:
            log.warning("AMI message over %d bytes; closing the manager connection", MAX_MESSAGE_BYTES)
            self.queue.clear()
            self.transport.close()
            return
        super().data_received(data)


class _Manager(Manager):  # type: ignore[misc]
    """panoramisk's Manager, minus the reconnect it would still schedule after ``close()``."""

    stopped = False

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        if self.stopped:
            return None
        return super().connect(*args, **kwargs)


class _PanoramiskLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """panoramisk's logger, minus its ERROR for a dropped connection.

    A planned Asterisk restart drops the manager connection; panoramisk logs that as
    ``ERROR Connection lost`` and reconnects by itself. ``AmiConnection`` logs the loss as a
    warning that names the reconnect interval, so panoramisk's own line goes to DEBUG.
    """

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if msg == "Connection lost":
            self.debug(msg, *args, **kwargs)
        else:
            super().error(msg, *args, **kwargs)


class AmiConnection:
    """One logged-in manager connection that comes back after Asterisk restarts."""

    def __init__(self, settings: AmiSettings) -> None:
        self.settings = settings
        secret = settings.secret.get_secret_value() if settings.secret is not None else ""
        self.logged_in = asyncio.Event()
        self.logins = 0
        self.login_failures = 0
        self._closed = False
        self._manager = _Manager(
            host=settings.host,
            port=settings.port,
            username=settings.username,
            secret=secret,
            events="on",
            protocol_factory=_BoundedProtocol,
            reconnect_timeout=settings.reconnect_interval,
            ping_delay=PING_SECONDS,
            ping_interval=PING_SECONDS,
            on_connect=self._connected,
            on_login=self._login_ok,
            on_disconnect=self._disconnected,
            log=_PanoramiskLog(logging.getLogger("panoramisk"), {}),
        )

    async def start(self) -> None:
        """Start connecting; returns at once (the daemon does not wait for Asterisk)."""
        self._manager.loop = asyncio.get_running_loop()
        self._manager.connect()

    async def wait_logged_in(self, wait_seconds: float) -> None:
        try:
            async with asyncio.timeout(wait_seconds):
                await self.logged_in.wait()
        except TimeoutError:
            where = f"{self.settings.host}:{self.settings.port}"
            raise AmiUnavailable(f"not logged in to AMI at {where}") from None

    # ----------------------------------------------------------------- panoramisk callbacks
    def _connected(self, manager: Manager) -> None:
        log.info("AMI connected to %s:%d", self.settings.host, self.settings.port)
        future = manager.authenticated_future
        if future is not None:
            future.add_done_callback(self._login_answered)

    def _login_answered(self, future: asyncio.Future[Message]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        if not future.result().success:
            self.login_failures += 1
            log.error("AMI login as %r refused: %s (check manager.conf)", self.settings.username,
                      future.result().message or "no reason given")

    def _login_ok(self, manager: Manager) -> None:
        self.logins += 1
        self.logged_in.set()
        log.info("AMI logged in as %r", self.settings.username)

    def _disconnected(self, manager: Manager, exc: object) -> None:
        self.logged_in.clear()
        if not self._closed:
            log.warning("AMI connection lost; reconnecting every %d s", self.settings.reconnect_interval)

    # ----------------------------------------------------------------- actions and events
    async def action(self, fields: Mapping[str, str], wait_seconds: float = ACTION_TIMEOUT) -> Message:
        """Send one action and return its response; raises AmiError unless it succeeded."""
        if not self.logged_in.is_set():
            raise AmiUnavailable(f"not logged in to AMI at {self.settings.host}:{self.settings.port}")
        name = fields.get("Action", "?")
        try:
            async with asyncio.timeout(wait_seconds):
                response = await self._manager.send_action(dict(fields))
        except TimeoutError:
            raise AmiError(f"{name}: no response in {wait_seconds:.0f} s") from None
        if isinstance(response, list):  # an event list: the first message is the response
            response = response[0]
        if not response.success:
            raise AmiError(f"{name}: {response.message or response.response or 'failed'}")
        return response

    async def redirect(self, channel: str, context: str, exten: str, priority: int = 1) -> None:
        """Move ``channel`` to ``exten@context`` at ``priority`` (what a transfer does)."""
        await self.action({"Action": "Redirect", "Channel": channel, "Context": context,
                           "Exten": exten, "Priority": str(priority)})

    async def hangup(self, channel: str, cause: int = 16) -> None:
        await self.action({"Action": "Hangup", "Channel": channel, "Cause": str(cause)})

    async def set_variable(self, channel: str, name: str, value: str) -> None:
        await self.action({"Action": "Setvar", "Channel": channel, "Variable": name, "Value": value})

    def on_event(self, pattern: str, callback: EventCallback) -> None:
        """Call ``callback(message)`` for every event whose name matches ``pattern`` (fnmatch)."""

        def relay(_manager: Manager, message: Message) -> None:
            try:
                callback(message)
            except Exception:
                log.error("AMI event callback for %s failed", pattern, exc_info=True)

        self._manager.register_event(pattern, relay)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.logged_in.clear()
        self._manager.stopped = True
        self._manager.close()


def describe(message: Message) -> dict[str, Any]:
    """The headers of an AMI message as a plain dict (for logs and tests)."""
    return dict(message.items())
