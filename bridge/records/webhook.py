"""The post-call webhook: a signed JSON POST per finished call to the tenant's URL.

Signature: ``X-Callbridge-Signature: sha256=<hex>``, the HMAC-SHA256 (RFC 2104) keyed with the
tenant's ``webhook_secret`` over ``<timestamp>.<body>``, where ``<timestamp>`` is the Unix time
in ``X-Callbridge-Timestamp``. Signing the timestamp with the body lets a receiver reject
replays of an old delivery. ``X-Callbridge-Delivery`` is unique per delivery (the same across
its retries) for de-duplication.

Deliveries never touch a call: the call only enqueues (bounded; when full the oldest waiting
delivery is dropped and counted). One sender task delivers, retrying connection failures,
timeouts, 408, 429 and 5xx with exponential back-off; other 4xx answers are final.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bridge.settings import WebhookSettings

log = logging.getLogger(__name__)

Clock = Callable[[], float]

SIGNATURE_HEADER = "X-Callbridge-Signature"
TIMESTAMP_HEADER = "X-Callbridge-Timestamp"
DELIVERY_HEADER = "X-Callbridge-Delivery"
EVENT_HEADER = "X-Callbridge-Event"
_RETRY_STATUSES = frozenset({408, 425, 429})


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: int, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


@dataclass(slots=True)
class Delivery:
    url: str
    secret: str | None
    event: str
    payload: dict[str, Any]
    delivery_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    attempts: int = 0
    due: float = 0.0


class WebhookSender:
    def __init__(self, settings: WebhookSettings, *, clock: Clock, wall_clock: Clock = time.time,
                 on_result: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.wall_clock = wall_clock
        self._on_result = on_result
        self._queue: deque[Delivery] = deque()
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._session: aiohttp.ClientSession | None = None
        self._in_flight = 0
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def submit(self, url: str, secret: str | None, payload: dict[str, Any],
               event: str = "call.completed") -> Delivery:
        if len(self._queue) >= self.settings.queue_size:
            old = self._queue.popleft()
            self.dropped += 1
            self._result("dropped")
            log.warning("webhook queue full: dropped delivery %s", old.delivery_id)
        delivery = Delivery(url, secret, event, payload, due=self.clock())
        self._queue.append(delivery)
        self._idle.clear()
        self._ready.set()
        return delivery

    @property
    def pending(self) -> int:
        return len(self._queue) + self._in_flight

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def _result(self, result: str) -> None:
        if self._on_result is not None:
            self._on_result(result)

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self._session = session
            try:
                await self._deliver_forever(session)
            finally:
                self._session = None

    async def _deliver_forever(self, session: aiohttp.ClientSession) -> None:
        queue = self._queue
        while True:
            if not queue:
                if self._in_flight == 0:
                    self._idle.set()
                self._ready.clear()
                await self._ready.wait()
                continue
            # Earliest-due first; the queue is small and bounded.
            delivery = min(queue, key=lambda d: d.due)
            wait = delivery.due - self.clock()
            if wait > 0:
                self._ready.clear()
                try:
                    async with asyncio.timeout(wait):
                        await self._ready.wait()
                except TimeoutError:
                    pass
                continue
            queue.remove(delivery)
            self._in_flight += 1
            try:
                await self._attempt(session, delivery)
            finally:
                self._in_flight -= 1

    async def _attempt(self, session: aiohttp.ClientSession, delivery: Delivery) -> None:
        delivery.attempts += 1
        body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        timestamp = int(self.wall_clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "callbridge-webhook",
            EVENT_HEADER: delivery.event,
            DELIVERY_HEADER: delivery.delivery_id,
            TIMESTAMP_HEADER: str(timestamp),
        }
        if delivery.secret:
            headers[SIGNATURE_HEADER] = sign(delivery.secret, timestamp, body)
        retry = False
        reason = ""
        try:
            async with session.post(delivery.url, data=body, headers=headers, allow_redirects=False) as resp:
                await resp.read()
                status = resp.status
            if 200 <= status < 300:
                self.delivered += 1
                self._result("delivered")
                return
            reason = f"HTTP {status}"
            retry = status >= 500 or status in _RETRY_STATUSES
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = type(exc).__name__
            retry = True
        if retry and delivery.attempts < self.settings.max_attempts:
            delay = min(self.settings.retry_max_seconds,
                        self.settings.retry_initial_seconds * 2 ** (delivery.attempts - 1))
            delivery.due = self.clock() + delay * random.uniform(0.8, 1.2)
            log.info("webhook delivery %s failed (%s), attempt %d; retrying", delivery.delivery_id,
                     reason, delivery.attempts)
            self._queue.append(delivery)
            self._ready.set()
            return
        self.failed += 1
        self._result("failed")
        log.warning("webhook delivery %s abandoned after %d attempt(s): %s", delivery.delivery_id,
                    delivery.attempts, reason)
