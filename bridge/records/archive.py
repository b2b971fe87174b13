"""The call archive: recordings, transcripts and metadata of every call, from the first frame to
object storage, the index, the post-call webhook and retention.

Life of a call's files
----------------------
1. ``open_tap`` (the switchboard's tap factory) builds the call's ``CallRecorder``; the writer
   thread creates the ``.unfinished/<call id>`` marker and the in-progress metadata, then writes
   audio and transcript as they come. The index gets an ``in_progress`` row, so ops see live calls.
2. The call ends: the writer closes the WAV, draws the peaks, writes the final metadata and hands
   the record back to the event loop, which puts it in the index, queues the upload (S3) and the
   webhook, and only then removes the marker.
3. ``recover`` (at start) takes every marker left by a daemon that died: repairs the WAV header,
   cuts a torn last transcript line, marks the call ``interrupted`` and resumes step 2, the
   tenant's ``call.completed`` webhook included. The call ends where its audio ends (start plus
   the repaired recording's length, or the last transcript line without audio), not when the
   daemon came back.
4. S3: the upload spool uploads WAV, transcript, peaks and metadata, records the object key, and
   drops the local WAV unless ``keep_local``; while the store is down the call waits on disk.
5. Retention: calls past their ``expires_at`` lose their files, objects and index row.

A full disk (or an index that cannot be written) never leaves a finished call ``in_progress``
until a restart: the final record stays in memory (up to ``MAX_UNINDEXED`` calls) and its
metadata file and index row are written again every ``retry_interval`` seconds until they land;
only then does its unfinished marker go. Each failed write is logged and counted
(``callbridge_archive_write_errors_total{kind="index"|"metadata"}``). At start, a call whose
marker survived but whose index row is already final keeps that row's outcome instead of being
marked interrupted.

Metadata is the source of truth; the index is derived from it and re-fed on recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.records.callstore import (
    CallIndex,
    CallPage,
    CallQuery,
    CallRecord,
    CallStatus,
    CallStoreError,
    PostgresCallIndex,
    SqliteCallIndex,
    valid_call_id,
)
from bridge.records.evaluation import Evaluator
from bridge.records.layout import (
    UNFINISHED_DIR,
    UPLOADS_DIR,
    ArchiveLayout,
    RecordingError,
    write_json_atomic,
    write_peaks,
)
from bridge.records.objectstore import ObjectStoreError, S3Store, UploadSpool
from bridge.records.recorder import CallRecorder
from bridge.records.scoring import EvaluationRunner, evaluation_view, read_document
from bridge.records.webhook import WebhookSender
from bridge.records.writer import RecordingWriter
from bridge.settings import (
    CallIndexBackend,
    ConfigError,
    ModelProvider,
    RecordingStorage,
    Settings,
)
from media.wav import WavError, WavFormat, repair

if TYPE_CHECKING:
    from bridge.core.call import CallInfo
    from bridge.core.switchboard import RefusedCall
    from bridge.ops.live import LiveEvents
    from bridge.ops.metrics import Metrics
    from bridge.records.callstore import TranscriptEntry
    from tenants.config import TenantConfig
    from tenants.directory import TenantDirectory
    from tenants.evaluation import EvaluationConfig

from bridge.records.views import cut_torn_line, iso, read_transcript_file, record_view
from tenants.settings import TenantBackend

log = logging.getLogger(__name__)

Clock = Callable[[], float]

RETENTION_PERIOD_SECONDS = 3600.0
RETENTION_FIRST_RUN_SECONDS = 60.0
SHUTDOWN_TIMEOUT = 15.0
WEBHOOK_GRACE_SECONDS = 5.0
MAX_REFUSAL_WRITES = 100  # refused calls being indexed at once
ARCHIVE_RETRY_SECONDS = 30.0
MAX_UNINDEXED = 10_000  # finished calls held for another index write; past that, left to recovery
_CONTENT_TYPES = {".wav": "audio/wav", ".jsonl": "application/x-ndjson",
                  ".peaks.json": "application/json", ".json": "application/json",
                  ".evaluation.json": "application/json"}
_FILES = (".wav", ".jsonl", ".peaks.json", ".evaluation.json", ".json")


def index_from_settings(settings: Settings) -> CallIndex:
    rec = settings.recording
    backend = rec.index
    if backend is CallIndexBackend.AUTO:
        backend = (CallIndexBackend.POSTGRES if settings.tenants.backend is TenantBackend.POSTGRES
                   else CallIndexBackend.SQLITE)
    if backend is CallIndexBackend.POSTGRES:
        url = rec.database_url or settings.tenants.database_url
        if url is None:
            raise ConfigError("recording.index postgres needs recording.database_url or DATABASE_URL")
        return PostgresCallIndex(url.get_secret_value())
    return SqliteCallIndex(rec.sqlite_path or rec.directory / "calls.sqlite3")


def deployment_model(settings: Settings) -> str:
    provider = settings.resolved_provider
    if provider is ModelProvider.AZURE_VOICELIVE:
        return settings.model.voicelive_model
    if provider is ModelProvider.AZURE_OPENAI:
        return settings.model.azure_deployment or settings.model.model
    return settings.model.model


@dataclass(frozen=True, slots=True)
class _Entry:
    """A transcript line read back from disk, shaped as the webhook payload reads it."""

    role: str
    text: str
    at: float
    offset: Any
    interrupted: bool = False  # an agent line cut off by a barge-in


class CallArchive:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        index: CallIndex | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        evaluator: Evaluator | None = None,
        live: LiveEvents | None = None,
        tenants: TenantDirectory | None = None,
    ) -> None:
        rec = settings.recording
        # Where recovery finds a tenant's webhook (the live calls carry theirs in CallInfo).
        self.tenants = tenants
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.wall_clock = wall_clock
        self.layout = ArchiveLayout(rec.directory)
        self.index = index if index is not None else index_from_settings(settings)
        self.store: S3Store | None = None
        self.uploads: UploadSpool | None = None
        if rec.storage is RecordingStorage.S3:
            assert rec.s3 is not None
            self.store = S3Store(rec.s3)
            self.uploads = UploadSpool(
                self.layout.root / UPLOADS_DIR, self._upload_call,
                initial_delay=rec.s3.retry_initial_seconds, max_delay=rec.s3.retry_max_seconds,
                clock=time.monotonic, on_pending=metrics.uploads_pending.set,
            )
        self.writer = RecordingWriter(flush_interval=rec.flush_interval, clock=clock, metrics=metrics,
                                      on_finished=self._finished_from_thread)
        # Retry schedules wait on the event loop's timers, so they run on the monotonic clock (the
        # injected ``clock`` places audio on call timelines).
        self.webhooks = WebhookSender(settings.webhooks, clock=time.monotonic, wall_clock=wall_clock,
                                      on_result=lambda r: metrics.webhooks.labels(r).inc())
        self.default_model = deployment_model(settings)
        self.live = live
        self.scoring = (EvaluationRunner(evaluator, self.layout, self._put, metrics=metrics, live=live)
                        if evaluator is not None else None)
        self._recorders: dict[str, CallRecorder] = {}
        self._index_writes: dict[str, asyncio.Task[bool]] = {}
        self._post_calls: set[asyncio.Task[None]] = set()
        self._webhook_targets: dict[str, tuple[str, str | None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.recovered: list[CallRecord] = []
        self._refusal_writes = 0
        self.retry_interval = ARCHIVE_RETRY_SECONDS
        self._unindexed: dict[str, CallRecord] = {}  # finished calls whose index write failed

    # ------------------------------------------------------------------ lifecycle
    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[CallArchive]:
        """Open the index, recover unfinished calls, run uploads, webhooks and retention; on
        exit finish every recording and flush what can be flushed in ``SHUTDOWN_TIMEOUT``."""
        self._loop = asyncio.get_running_loop()
        for name in (UNFINISHED_DIR, UPLOADS_DIR):
            await asyncio.to_thread((self.layout.root / name).mkdir, parents=True, exist_ok=True)
        await self.index.open()
        # An exception from the body is held and re-raised after the TaskGroup, so that callers
        # see it as it is rather than wrapped in an ExceptionGroup of the archive's own tasks.
        body_error: BaseException | None = None
        try:
            self.writer.start()
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                background = [tg.create_task(self.webhooks.run()),
                              tg.create_task(self._retention_loop()),
                              tg.create_task(self._retry_loop())]
                if self.uploads is not None:
                    assert self.store is not None
                    await self.store.open()
                    await self.uploads.load()
                    background.append(tg.create_task(self.uploads.run()))
                await self.recover()
                try:
                    yield self
                except BaseException as exc:  # re-raised below, unchanged
                    body_error = exc
                finally:
                    await self._shutdown()
                    for task in background:
                        task.cancel()
                    if self.scoring is not None:
                        # Unfinished evaluations are recorded as failed; the upload they held
                        # back goes at the next start (its marker is on disk).
                        await self.scoring.abandon()
                    for post in list(self._post_calls):
                        post.cancel()
        finally:
            self._tg = None
            await asyncio.to_thread(self.writer.stop, SHUTDOWN_TIMEOUT)
            await self.index.close()
            if self.store is not None:
                await self.store.close()
        if body_error is not None:
            raise body_error

    async def _shutdown(self) -> None:
        for recorder in list(self._recorders.values()):
            if not recorder.ended:
                recorder.end("shutdown")
        self.writer.wake()
        try:
            async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                await self._idle.wait()
        except TimeoutError:
            log.error("archive: %d call(s) not finished at shutdown", len(self._recorders))
        if self.webhooks.pending:
            try:
                async with asyncio.timeout(WEBHOOK_GRACE_SECONDS):
                    await self.webhooks.wait_idle()
            except TimeoutError:
                log.warning("archive: %d webhook delivery(ies) not sent before shutdown",
                            self.webhooks.pending)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        assert self._tg is not None, "archive is not running"
        return self._tg.create_task(coro)

    # ------------------------------------------------------------------ calls
    def open_tap(self, info: CallInfo) -> CallRecorder | None:
        """The switchboard's tap factory."""
        if self._tg is None:
            return None
        tenant = info.tenant
        try:
            stem = self.layout.stem_for(tenant.slug, info.call_id, info.started_at)
        except RecordingError as exc:
            log.warning("call not archived: %s", exc)
            return None
        record = CallRecord(
            call_id=info.call_id,
            tenant=tenant.slug,
            tenant_id=tenant.tenant_id,
            transport=info.transport,
            dialled=info.dialled,
            caller_id=info.caller_id,
            started_at=info.started_at,
            model=tenant.model or self.default_model,
            voice=tenant.voice_name,
            path=stem,
            expires_at=self._expires_at(tenant, info.started_at),
        )
        recorder = CallRecorder(
            info, record, self.layout,
            record_audio=tenant.recording,
            clock=self.clock,
            max_backlog_seconds=self.settings.recording.max_backlog_seconds,
            header_interval=self.settings.recording.header_interval,
            metrics=self.metrics,
            on_end=lambda _r: self.writer.wake(),
        )
        self._recorders[info.call_id] = recorder
        self._idle.clear()
        if tenant.webhook_url:
            self._webhook_targets[info.call_id] = (tenant.webhook_url, tenant.webhook_secret)
        if self.scoring is not None and tenant.evaluation.enabled:
            self.scoring.expect(info.call_id, tenant.evaluation)
        self.writer.attach(recorder)
        self._index_writes[info.call_id] = self._spawn(self._put(record))
        return recorder

    def _expires_at(self, tenant: TenantConfig | None, started_at: float, *,
                    refused: bool = False) -> float | None:
        """When a call's files and index entry are due for deletion (None: kept for good)."""
        days = self.settings.recording.retention_days
        if tenant is not None and tenant.retention_days is not None:
            days = tenant.retention_days
        short = self.settings.recording.refusal_retention_days
        if refused and short > 0:
            days = min(days, short) if days > 0 else short
        return started_at + days * 86400.0 if days > 0 else None

    def record_refusal(self, refused: RefusedCall) -> None:
        """Index a call turned away before reaching the model (no files: nothing was said)."""
        if self._tg is None:
            return
        if self._refusal_writes >= MAX_REFUSAL_WRITES:
            # A flood of refused calls must not queue without bound: counted, not indexed.
            self.metrics.refusals_not_indexed.inc()
            return
        tenant = refused.tenant
        record = CallRecord(
            call_id=str(uuid.uuid4()),
            tenant=tenant.slug if tenant is not None else "",
            tenant_id=tenant.tenant_id if tenant is not None else "",
            transport=refused.transport,
            dialled=refused.dialled,
            caller_id=refused.caller_id,
            started_at=refused.at,
            status=CallStatus.COMPLETE,
            ended_at=refused.at,
            outcome="refused",
            expires_at=self._expires_at(tenant, refused.at, refused=True),
            extra={"refusal": refused.reason.value},
        )
        self._refusal_writes += 1
        task = self._spawn(self._put(record))
        task.add_done_callback(self._refusal_written)

    def _refusal_written(self, _task: asyncio.Task[bool]) -> None:
        self._refusal_writes -= 1

    def _finished_from_thread(self, recorder: CallRecorder, record: CallRecord) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop stopped in between
            loop.call_soon_threadsafe(self._finished, recorder, record)

    def _finished(self, recorder: CallRecorder, record: CallRecord) -> None:
        if self._tg is None:
            self._recorders.pop(record.call_id, None)
            if not self._recorders:
                self._idle.set()
            return
        task = self._spawn(self._post_call(recorder, record))
        self._post_calls.add(task)
        task.add_done_callback(self._post_calls.discard)

    async def _post_call(self, recorder: CallRecorder, record: CallRecord) -> None:
        call_id = record.call_id
        try:
            opening = self._index_writes.pop(call_id, None)
            if opening is not None:
                # The in-progress row must not land after the final one.
                with contextlib.suppress(Exception):
                    await opening
            config = self.scoring.wanted(record) if self.scoring is not None else None
            await self._archive(record, upload_now=config is None)
            target = self._webhook_targets.pop(call_id, None)
            if config is not None:
                await self._evaluate(config, record, recorder.entries, target)
            elif target is not None:
                self.webhooks.submit(target[0], target[1], self.webhook_payload(record, recorder.entries))
        finally:
            self._recorders.pop(call_id, None)
            if not self._recorders:
                self._idle.set()

    async def _evaluate(self, config: EvaluationConfig, record: CallRecord, entries: list[TranscriptEntry],
                        target: tuple[str, str | None] | None) -> None:
        """Start the call's evaluation; the webhook, if any, waits for it (``EvaluationRunner``)."""
        assert self.scoring is not None
        deliver = None
        if target is not None:
            url, secret = target

            def deliver(final: CallRecord, document: dict[str, Any] | None, event: str) -> None:
                payload = self.webhook_payload(final, entries, document)
                payload["event"] = event
                self.webhooks.submit(url, secret, payload, event=event)

        release = self.uploads.submit if self.uploads is not None else None
        await self.scoring.start(config, record, entries, spawn=self._spawn, deliver=deliver,
                                 release_upload=release, webhook_wait=self.settings.evaluation.webhook_wait)

    async def wait_idle(self) -> None:
        """Until every call opened so far is finished, indexed and queued for upload/webhook."""
        await self._idle.wait()

    async def wait_evaluations(self) -> None:
        """Until every evaluation started so far has finished (tests, shutdown)."""
        if self.scoring is not None and self.scoring.tasks:
            await asyncio.wait(set(self.scoring.tasks))

    async def _archive(self, record: CallRecord, *, upload_now: bool = True) -> None:
        """Index the finished record, queue its upload (or only write its marker, when the upload
        waits for the evaluation), then drop the unfinished marker."""
        indexed = await self._put(record)
        if not indexed and record.status is not CallStatus.IN_PROGRESS:
            if len(self._unindexed) < MAX_UNINDEXED or record.call_id in self._unindexed:
                self._unindexed[record.call_id] = record
        elif indexed:
            self._unindexed.pop(record.call_id, None)
        if self.uploads is not None:
            try:
                await asyncio.to_thread(write_json_atomic, self.layout.upload_marker(record.call_id),
                                        {"path": record.path})
                if upload_now:
                    self.uploads.submit(record.call_id)
            except OSError as exc:
                log.error("call %s: cannot queue the upload: %s", record.call_id, exc)
                return
        if indexed:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(os.unlink, self.layout.unfinished_marker(record.call_id))

    async def _put(self, record: CallRecord) -> bool:
        try:
            await self.index.put(record)
            return True
        except CallStoreError as exc:
            # The marker stays; the record is written again by the retry loop, or at the next start.
            self.metrics.archive_write_errors.labels("index").inc()
            if record.call_id not in self._unindexed:
                log.error("call %s: index write failed: %s", record.call_id, exc)
            return False

    async def _retry_loop(self) -> None:
        while True:
            await asyncio.sleep(self.retry_interval)
            await self.retry_unindexed()

    async def retry_unindexed(self) -> int:
        """Write the metadata and index row of finished calls again; the number still missing."""
        for call_id, record in list(self._unindexed.items()):
            try:
                await asyncio.to_thread(write_json_atomic, self.layout.path(record.path, ".json"),
                                        record.to_json())
            except (OSError, RecordingError):
                self.metrics.archive_write_errors.labels("metadata").inc()
                continue  # no point in indexing a call whose metadata would say otherwise at restart
            if await self._put(record):
                self._unindexed.pop(call_id, None)
                with contextlib.suppress(FileNotFoundError):
                    await asyncio.to_thread(os.unlink, self.layout.unfinished_marker(call_id))
                log.info("call %s: indexed after an earlier failure", call_id)
        if self._unindexed:
            log.warning("archive: %d finished call(s) still not indexed (disk full or index down?); "
                        "retrying in %.0f s", len(self._unindexed), self.retry_interval)
        return len(self._unindexed)

    def webhook_payload(self, record: CallRecord, transcript: Any,
                        evaluation: dict[str, Any] | None = None) -> dict[str, Any]:
        entries = [{"role": e.role, "text": e.text, "at": iso(e.at), "offset": e.offset}
                   | ({"interrupted": True} if e.interrupted else {}) for e in transcript]
        payload = {
            "event": "call.completed",
            "call": record_view(record),
            "transcript": entries,
            "recording_url": self.recording_url(record) if record.recorded else None,
        }
        view = evaluation_view(evaluation, record)
        if view is not None:
            payload["evaluation"] = view
        return payload

    def recording_url(self, record: CallRecord) -> str | None:
        base = self.settings.ops.public_url
        if not base:
            return None
        return f"{base.rstrip('/')}/api/calls/{record.call_id}/recording"

    # ------------------------------------------------------------------ recovery
    async def recover(self) -> list[CallRecord]:
        """Repair and archive the calls of a daemon that died (see the module docstring)."""
        directory = self.layout.root / UNFINISHED_DIR
        names = await asyncio.to_thread(
            lambda: sorted(p.name for p in directory.iterdir() if p.is_file() and valid_call_id(p.name))
        )
        recovered: list[CallRecord] = []
        for call_id in names:
            if call_id in self._recorders:
                continue
            final = await self._final_in_index(call_id)
            if final is not None:
                # Finished and indexed, but the metadata file or the marker's removal was lost
                # (a full disk): the index knows how the call ended.
                with contextlib.suppress(OSError, RecordingError):
                    await asyncio.to_thread(write_json_atomic, self.layout.path(final.path, ".json"),
                                            final.to_json())
                    await asyncio.to_thread(os.unlink, self.layout.unfinished_marker(call_id))
                continue
            try:
                record = await asyncio.to_thread(self._recover_files, call_id)
            except (OSError, ValueError, TypeError, RecordingError) as exc:
                log.error("call %s: cannot recover: %s", call_id, exc)
                continue
            if record is None:
                log.info("call %s is being recorded by another process; left alone", call_id)
                continue
            await self._archive(record)
            recovered.append(record)
            if record.status is CallStatus.INTERRUPTED:
                await self._recovered_webhook(record)
        if recovered:
            log.info("recovered %d unfinished call(s)", len(recovered))
        self.recovered.extend(recovered)
        return recovered

    async def _final_in_index(self, call_id: str) -> CallRecord | None:
        try:
            record = await self.index.get(call_id)
        except CallStoreError:
            return None
        if record is None or record.status in (CallStatus.IN_PROGRESS, CallStatus.INTERRUPTED):
            return None
        return record

    async def _recovered_webhook(self, record: CallRecord) -> None:
        """The tenant's ``call.completed`` for a call the daemon died during (status interrupted)."""
        if self.tenants is None or not record.tenant:
            return
        try:
            tenant = await self.tenants.tenant_by_slug(record.tenant)
        except Exception as exc:  # the tenant store may be down at start: the call is still recovered
            log.warning("call %s: no webhook after recovery (tenant lookup failed: %s)", record.call_id, exc)
            return
        if tenant is None or not tenant.webhook_url:
            return
        transcript: list[_Entry] = []
        with contextlib.suppress(OSError, RecordingError):
            path = self.layout.path(record.path, ".jsonl")
            if await asyncio.to_thread(path.is_file):
                transcript = [_Entry(str(e.get("role", "")), str(e.get("text", "")), float(e.get("at", 0.0)),
                                     e.get("offset"), bool(e.get("interrupted", False)))
                              for e in await asyncio.to_thread(read_transcript_file, path)]
        self.webhooks.submit(tenant.webhook_url, tenant.webhook_secret, self.webhook_payload(record, transcript))

    def _recover_files(self, call_id: str) -> CallRecord | None:
        """Repair of one unfinished call (blocking; runs in a thread); None while the call's
        recorder, in another process, still holds the marker's lock."""
        marker = self.layout.unfinished_marker(call_id)
        fd = os.open(marker, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            return self._repair_call(marker)
        finally:
            os.close(fd)

    def _repair_call(self, marker: Path) -> CallRecord:
        call_id = marker.name
        record = CallRecord.from_json(json.loads(marker.read_text(encoding="utf-8")))
        meta = self.layout.path(record.path, ".json")
        with contextlib.suppress(FileNotFoundError, ValueError, TypeError):
            record = CallRecord.from_json(json.loads(meta.read_text(encoding="utf-8")))
        if record.status is not CallStatus.IN_PROGRESS:
            return record  # finished before the crash; only the index or upload step was lost
        wav = self.layout.path(record.path, ".wav")
        transcript = self.layout.path(record.path, ".jsonl")
        # The call ended where its audio or its last words end. File times say when the daemon
        # came back (repair rewrites the header), not when the call ended.
        ended = record.started_at
        if wav.exists():
            fallback = WavFormat(record.sample_rate or 8000, 2)
            try:
                result = repair(wav, fallback)
            except WavError as exc:
                log.error("call %s: recording cannot be repaired: %s", call_id, exc)
                record = record.evolve(recorded=False, extra={**record.extra, "recording_error": str(exc)})
            else:
                write_peaks(wav, self.layout.path(record.path, ".peaks.json"))
                record = record.evolve(recorded=True, sample_rate=result.info.format.rate_hz,
                                       recording_bytes=wav.stat().st_size,
                                       recording_seconds=round(result.info.duration_seconds, 3))
                ended = max(ended, record.started_at + result.info.duration_seconds)
                self.metrics.recordings.labels("repaired").inc()
                log.info("call %s: repaired recording, %.1f s", call_id, result.info.duration_seconds)
        entries = 0
        if transcript.exists():
            lines = read_transcript_file(transcript)
            entries = len(lines)
            cut_torn_line(transcript)
            for line in lines:
                at = line.get("at")
                if isinstance(at, int | float) and record.started_at <= at <= record.started_at + 86400.0:
                    ended = max(ended, float(at))
        record = record.evolve(status=CallStatus.INTERRUPTED, ended_at=ended, transcript_entries=entries)
        write_json_atomic(meta, record.to_json())
        return record

    # ------------------------------------------------------------------ object storage
    async def _upload_call(self, call_id: str) -> None:
        assert self.store is not None
        store = self.store
        s3 = self.settings.recording.s3
        assert s3 is not None
        marker = self.layout.upload_marker(call_id)
        try:
            stem = json.loads(await asyncio.to_thread(marker.read_text, encoding="utf-8"))["path"]
            meta = self.layout.path(stem, ".json")
            text = await asyncio.to_thread(meta.read_text, encoding="utf-8")
            record = CallRecord.from_json(json.loads(text))
        except FileNotFoundError:
            log.warning("call %s: nothing left to upload", call_id)
            return
        except (ValueError, KeyError, TypeError, RecordingError) as exc:
            log.error("call %s: unreadable upload entry, dropped: %s", call_id, exc)
            return
        try:
            for suffix in _FILES[:-1]:
                path = self.layout.path(stem, suffix)
                if await asyncio.to_thread(path.exists):
                    await store.upload(path, store.key(stem, suffix), _CONTENT_TYPES[suffix])
            record = record.evolve(object_key=store.key(stem, ".wav") if record.recorded else None)
            await asyncio.to_thread(write_json_atomic, meta, record.to_json())
            await store.upload(meta, store.key(stem, ".json"), _CONTENT_TYPES[".json"])
        except ObjectStoreError:
            self.metrics.uploads.labels("failed").inc()
            raise
        self.metrics.uploads.labels("ok").inc()
        if not await self._put(record):
            raise ObjectStoreError("uploaded, but the index could not be updated")
        if not s3.keep_local:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(os.unlink, self.layout.path(stem, ".wav"))

    # ------------------------------------------------------------------ reading (ops API)
    async def get(self, call_id: str) -> CallRecord | None:
        if not valid_call_id(call_id):
            return None
        return await self.index.get(call_id)

    async def search(self, query: CallQuery) -> CallPage:
        return await self.index.search(query)

    async def local_file(self, record: CallRecord, suffix: str) -> Path | None:
        try:
            path = self.layout.path(record.path, suffix)
        except RecordingError:
            return None
        return path if await asyncio.to_thread(path.is_file) else None

    async def transcript(self, record: CallRecord) -> list[dict[str, Any]]:
        path = await self.local_file(record, ".jsonl")
        if path is not None:
            return await asyncio.to_thread(read_transcript_file, path)
        if self.store is not None and record.object_key:
            try:
                data = await self.store.get(self.store.key(record.path, ".jsonl"))
            except ObjectStoreError:
                return []
            return [json.loads(line) for line in data.splitlines() if line.strip()]
        return []

    async def evaluation(self, record: CallRecord) -> dict[str, Any] | None:
        """The call's evaluation as the API shows it; None when it is not evaluated."""
        if record.evaluation_status is None:
            return None
        raw: bytes | None = None
        path = await self.local_file(record, ".evaluation.json")
        if path is not None:
            raw = await asyncio.to_thread(path.read_bytes)
        elif self.store is not None and record.object_key:
            with contextlib.suppress(ObjectStoreError):
                raw = await self.store.get(self.store.key(record.path, ".evaluation.json"))
        return evaluation_view(read_document(raw) if raw is not None else None, record)

    async def peaks(self, record: CallRecord) -> dict[str, Any] | None:
        path = await self.local_file(record, ".peaks.json")
        raw: bytes | None = None
        if path is not None:
            raw = await asyncio.to_thread(path.read_bytes)
        elif self.store is not None and record.object_key:
            with contextlib.suppress(ObjectStoreError):
                raw = await self.store.get(self.store.key(record.path, ".peaks.json"))
        if raw is None:
            return None
        data = json.loads(raw)
        return data if isinstance(data, dict) else None

    async def presigned_recording(self, record: CallRecord, seconds: int | None = None) -> str | None:
        if self.store is None or not record.object_key:
            return None
        return await self.store.presign(record.object_key, seconds=seconds, filename=f"{record.call_id}.wav")

    # ------------------------------------------------------------------ retention
    async def _retention_loop(self) -> None:
        await asyncio.sleep(RETENTION_FIRST_RUN_SECONDS)
        while True:
            try:
                await self.purge_expired()
            except (CallStoreError, OSError, ObjectStoreError) as exc:
                log.warning("retention pass failed: %s", exc)
            await asyncio.sleep(RETENTION_PERIOD_SECONDS)

    async def purge_expired(self, now: float | None = None) -> int:
        """Delete calls past their retention: files, objects, then the index row."""
        now = self.wall_clock() if now is None else now
        removed = 0
        while True:
            batch = await self.index.expired(now, 100)
            if not batch:
                return removed
            busy = 0
            for record in batch:
                if record.call_id in self._recorders:
                    busy += 1
                    continue
                await asyncio.to_thread(self._delete_files, record)
                if self.store is not None and record.object_key:
                    await self.store.delete([self.store.key(record.path, s) for s in _FILES])
                await self.index.delete(record.call_id)
                removed += 1
            if len(batch) < 100 or busy == len(batch):
                return removed

    def _delete_files(self, record: CallRecord) -> None:
        for suffix in _FILES:
            with contextlib.suppress(FileNotFoundError, RecordingError):
                self.layout.path(record.path, suffix).unlink()
