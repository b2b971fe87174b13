"""The archive's side of post-call evaluation: which calls are evaluated, where the result goes.

A call of a tenant with ``evaluation.enabled`` that was answered (refused calls never reach the
model) is marked ``pending`` in its record and index row once the call is archived; the
evaluation then runs in the archive's task group, off the calls' path. Its document is written to
``<stem>.evaluation.json``, the record and the index row get the status, the overall score or
the error, live subscribers get an ``evaluation`` or ``evaluation_error`` event, and the call's
upload to object storage (held back while the evaluation runs, so the document goes with the
recording) is released. The webhook gets the evaluation in ``call.completed`` when it is ready
within ``evaluation.webhook_wait``, else in a later ``call.evaluated`` delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from bridge.records.callstore import CallRecord, TranscriptEntry
from bridge.records.evaluation import Evaluator
from bridge.records.layout import ArchiveLayout, RecordingError, write_json_atomic
from bridge.records.views import iso

if TYPE_CHECKING:
    from bridge.ops.live import LiveEvents
    from bridge.ops.metrics import Metrics
    from tenants.evaluation import EvaluationConfig

log = logging.getLogger(__name__)

Json = dict[str, Any]
Spawn = Callable[[Any], "asyncio.Task[Any]"]
Deliver = Callable[[CallRecord, "Json | None", str], None]  # (record, evaluation, webhook event)
Outcome = tuple[CallRecord, Json]


def evaluation_view(document: Json | None, record: CallRecord) -> Json | None:
    """What the API and webhook show of a call's evaluation (None: the call is not evaluated)."""
    if record.evaluation_status is None:
        return None
    if document is None or record.evaluation_status == "pending":
        return {"status": record.evaluation_status}
    shown = {k: v for k, v in document.items() if k not in ("call_id", "tenant")}
    if isinstance(shown.get("evaluated_at"), (int, float)):
        shown["evaluated_at"] = iso(shown["evaluated_at"])
    return shown


class EvaluationRunner:
    def __init__(
        self,
        evaluator: Evaluator,
        layout: ArchiveLayout,
        put: Callable[[CallRecord], Awaitable[bool]],
        *,
        metrics: Metrics,
        live: LiveEvents | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.layout = layout
        self._put = put
        self.metrics = metrics
        self.live = live
        self._configs: dict[str, EvaluationConfig] = {}
        self.tasks: set[asyncio.Task[Outcome]] = set()
        self._pending: dict[str, CallRecord] = {}  # call id -> record, while its evaluation runs

    def expect(self, call_id: str, config: EvaluationConfig) -> None:
        """The call's tenant wants it evaluated (at call start: the config in force then)."""
        self._configs[call_id] = config

    def forget(self, call_id: str) -> EvaluationConfig | None:
        return self._configs.pop(call_id, None)

    def wanted(self, record: CallRecord) -> EvaluationConfig | None:
        config = self._configs.pop(record.call_id, None)
        if config is None or record.answered_at is None or record.outcome == "refused":
            return None
        return config

    async def start(self, config: EvaluationConfig, record: CallRecord, entries: Sequence[TranscriptEntry], *,
                    spawn: Spawn, deliver: Deliver | None, release_upload: Callable[[str], None] | None,
                    webhook_wait: float) -> None:
        """Mark the call pending and evaluate it in a task of the archive's group; the webhook
        (``deliver``) waits in a task of its own, so the call is archived now whatever it waits for."""
        record = await self.mark_pending(record)
        self._pending[record.call_id] = record
        task: asyncio.Task[Outcome] = spawn(self.run(config, record, entries))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        if release_upload is not None:
            call_id = record.call_id

            def release(finished: asyncio.Task[Outcome]) -> None:
                if not finished.cancelled():  # cancelled at shutdown: the marker waits for the next start
                    release_upload(call_id)

            task.add_done_callback(release)
        if deliver is not None:
            spawn(self._deliver_when_ready(task, record, deliver, webhook_wait))

    async def _deliver_when_ready(self, task: asyncio.Task[Outcome], record: CallRecord, deliver: Deliver,
                                  wait: float) -> None:
        await asyncio.wait({task}, timeout=wait)
        if task.done():
            if not task.cancelled() and task.exception() is None:
                final, document = task.result()
                deliver(final, document, "call.completed")
            else:
                deliver(record, None, "call.completed")
            return
        deliver(record, None, "call.completed")  # evaluation: {"status": "pending"}

        def late(finished: asyncio.Task[Outcome]) -> None:
            if not finished.cancelled() and finished.exception() is None:
                final, document = finished.result()
                deliver(final, document, "call.evaluated")

        task.add_done_callback(late)

    async def mark_pending(self, record: CallRecord) -> CallRecord:
        record = record.evolve(evaluation_status="pending")
        await self._save(record)
        return record

    async def run(self, config: EvaluationConfig, record: CallRecord,
                  entries: Sequence[TranscriptEntry]) -> tuple[CallRecord, Json]:
        try:
            document = await self.evaluator.evaluate(config, record, list(entries))
        except Exception as exc:  # the evaluation boundary: a bug fails this evaluation, not the archive
            log.error("call %s: evaluation failed", record.call_id, exc_info=True)
            document = {"call_id": record.call_id, "tenant": record.tenant, "status": "failed",
                        "evaluation_error": f"internal error: {type(exc).__name__}", "attempts": 0}
        ok = document["status"] == "complete"
        try:
            await asyncio.to_thread(write_json_atomic, self.layout.path(record.path, ".evaluation.json"),
                                    document)
        except (OSError, RecordingError) as exc:
            log.error("call %s: cannot write the evaluation: %s", record.call_id, exc)
        self._pending.pop(record.call_id, None)
        record = record.evolve(
            evaluation_status=document["status"],
            overall_score=document.get("overall_score") if ok else None,
            evaluation_error=None if ok else str(document.get("evaluation_error")),
        )
        await self._save(record)
        self.metrics.evaluations.labels("ok" if ok else "failed").inc()
        if self.live is not None:
            if ok:
                self.live.publish(record.tenant, record.call_id, "evaluation",
                                  overall_score=document["overall_score"], summary=document["summary"],
                                  agent_ended_call=document["agent_ended_call"])
            else:
                self.live.publish(record.tenant, record.call_id, "evaluation_error",
                                  error=document.get("evaluation_error"))
        return record, document

    async def abandon(self, timeout: float = 5.0) -> None:
        """At shutdown: stop the evaluations still running and record them as failed, so that no
        call stays ``pending`` for good."""
        for task in list(self.tasks):
            task.cancel()
        left, self._pending = list(self._pending.values()), {}
        reason = "the daemon stopped before the evaluation finished"
        try:
            async with asyncio.timeout(timeout):
                for record in left:
                    document = {"call_id": record.call_id, "tenant": record.tenant, "status": "failed",
                                "evaluation_error": reason, "attempts": 0}
                    with contextlib.suppress(OSError, RecordingError):
                        await asyncio.to_thread(write_json_atomic,
                                                self.layout.path(record.path, ".evaluation.json"), document)
                    await self._save(record.evolve(evaluation_status="failed", evaluation_error=reason))
        except TimeoutError:
            log.error("%d evaluation(s) left pending at shutdown", len(left))

    async def _save(self, record: CallRecord) -> None:
        try:
            await asyncio.to_thread(write_json_atomic, self.layout.path(record.path, ".json"), record.to_json())
        except (OSError, RecordingError) as exc:
            log.error("call %s: cannot write metadata: %s", record.call_id, exc)
        await self._put(record)


def read_document(raw: bytes) -> Json | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
