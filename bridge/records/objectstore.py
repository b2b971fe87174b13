"""S3-compatible object storage for finished calls, and the spool that retries uploads.

``S3Store`` drives the AWS SDK (boto3). boto3 blocks, so every call runs in a worker thread
(``asyncio.to_thread``); its own retries are kept short because ``UploadSpool`` does the patient
retrying: a call waiting for upload is a marker file in the spool directory, so a store that is
down for hours, or a daemon restarted meanwhile, loses nothing. Attempts back off exponentially
(with jitter, so many daemons do not hammer a recovering store in step) up to a ceiling.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bridge.settings import S3Settings

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class ObjectStoreError(Exception):
    """The object store refused or could not be reached."""


class S3Store:
    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self._client: Any = None

    async def open(self) -> None:
        if self._client is None:
            self._client = await asyncio.to_thread(self._make_client)

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        s = self.settings
        config = Config(
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            retries={"max_attempts": 2, "mode": "standard"},
            signature_version="s3v4",
            s3={"addressing_style": s.addressing_style},
        )
        session = boto3.session.Session()
        return session.client(
            "s3",
            endpoint_url=s.endpoint_url,
            region_name=s.region,
            aws_access_key_id=s.access_key_id.get_secret_value() if s.access_key_id else None,
            aws_secret_access_key=s.secret_access_key.get_secret_value() if s.secret_access_key else None,
            config=config,
        )

    def key(self, stem: str, suffix: str) -> str:
        return f"{self.prefix}{stem}{suffix}"

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        if self._client is None:
            await self.open()
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise ObjectStoreError(str(exc)) from exc

    async def upload(self, path: Path, key: str, content_type: str) -> None:
        await self.open()
        await self._call(self._client.upload_file, str(path), self.bucket, key,
                         ExtraArgs={"ContentType": content_type})

    async def presign(self, key: str, *, seconds: int | None = None, filename: str | None = None) -> str:
        await self.open()
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = f'inline; filename="{filename}"'
        url = await self._call(self._client.generate_presigned_url, "get_object", Params=params,
                               ExpiresIn=seconds or self.settings.presign_seconds)
        return str(url)

    async def get(self, key: str) -> bytes:
        await self.open()

        def read() -> bytes:
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        return bytes(await self._call(read))

    async def delete(self, keys: list[str]) -> None:
        if not keys:
            return
        await self.open()
        await self._call(self._client.delete_objects, Bucket=self.bucket,
                         Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)


class UploadSpool:
    """Calls waiting for upload: one marker file each, retried with exponential back-off.

    ``attempt(call_id)`` does the upload and raises ``ObjectStoreError`` (or ``OSError``) to be
    tried again later; when it returns, the marker is removed.
    """

    def __init__(
        self,
        directory: Path,
        attempt: Callable[[str], Awaitable[None]],
        *,
        initial_delay: float,
        max_delay: float,
        clock: Clock,
        on_pending: Callable[[int], None] | None = None,
    ) -> None:
        self.directory = directory
        self._attempt = attempt
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.clock = clock
        self._on_pending = on_pending
        self._heap: list[tuple[float, int, str]] = []
        self._delays: dict[str, float] = {}
        self._seq = 0
        self._changed = asyncio.Event()
        self.attempts = 0
        self.failures = 0

    @property
    def pending(self) -> int:
        return len(self._delays)

    def marker(self, call_id: str) -> Path:
        return self.directory / call_id

    async def load(self) -> int:
        """Schedule every call left in the spool (at start)."""
        def scan() -> list[str]:
            self.directory.mkdir(parents=True, exist_ok=True)
            return sorted(p.name for p in self.directory.iterdir()
                          if p.is_file() and not p.name.endswith(".tmp"))

        names = await asyncio.to_thread(scan)
        for name in names:
            self.submit(name)
        return len(names)

    def submit(self, call_id: str, delay: float = 0.0) -> None:
        """Schedule an upload whose marker exists."""
        if call_id in self._delays:
            return
        self._delays[call_id] = 0.0
        self._push(call_id, self.clock() + delay)
        self._report()

    def _push(self, call_id: str, due: float) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, call_id))
        self._changed.set()

    def _report(self) -> None:
        if self._on_pending is not None:
            self._on_pending(len(self._delays))

    async def run(self) -> None:
        while True:
            if not self._heap:
                self._changed.clear()
                await self._changed.wait()
                continue
            due, _, call_id = self._heap[0]
            wait = due - self.clock()
            if wait > 0:
                self._changed.clear()
                try:
                    async with asyncio.timeout(wait):
                        await self._changed.wait()
                except TimeoutError:
                    pass
                continue
            heapq.heappop(self._heap)
            await self._try(call_id)

    async def _try(self, call_id: str) -> None:
        self.attempts += 1
        try:
            await self._attempt(call_id)
        except (ObjectStoreError, OSError) as exc:
            self.failures += 1
            previous = self._delays.get(call_id, 0.0)
            delay = min(self.max_delay, previous * 2 if previous else self.initial_delay)
            self._delays[call_id] = delay
            jittered = delay * random.uniform(0.8, 1.2)
            log.warning("upload of call %s failed (%s); retrying in %.1f s", call_id, exc, jittered)
            self._push(call_id, self.clock() + jittered)
            return
        self._delays.pop(call_id, None)
        try:
            await asyncio.to_thread(os.unlink, self.marker(call_id))
        except FileNotFoundError:
            pass
        self._report()
