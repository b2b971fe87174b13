"""Post-call evaluation: a finished call's transcript scored by a text model against the
tenant's criteria, through the ``openai`` SDK with a JSON schema for the answer (structured
output), on OpenAI, Azure OpenAI or the built-in simulator.

What the model sees: the tenant's instructions and criteria (name, description, weight), then the
transcript, one line per utterance with its offset into the call, agent turns the caller cut off
marked ``(cut off by the caller)``, and how the call ended. What it must answer (the schema built
by ``result_schema``): ``overall_score`` 0-100, per criterion a ``score`` 0-100 and a
``rationale``, ``strengths``, ``weaknesses``, ``summary`` and ``agent_ended_call``.

Failures are results too: a refusal, an answer that does not match the schema, a timeout or an
API error after ``max_attempts`` (retried with exponential back-off and jitter; a refusal is
final) give ``{"status": "failed", "evaluation_error": <reason>}``. Evaluations run on the event
loop as network waits only, at most ``max_concurrent`` at a time; nothing here touches a call.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import openai
from openai import AsyncAzureOpenAI, AsyncOpenAI

from bridge.records.callstore import CallRecord, TranscriptEntry
from bridge.settings import EvaluationSettings, ModelProvider, Settings
from tenants.evaluation import EvaluationConfig

log = logging.getLogger(__name__)

Json = dict[str, Any]
SCHEMA_NAME = "call_evaluation"
_RETRYABLE = (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
              openai.InternalServerError)
_OUTCOME_WORDS = {
    "agent_hangup": "the agent ended the call",
    "transferred": "the agent transferred the caller",
    "caller_hangup": "the caller hung up",
    "timeout": "the call reached its maximum duration",
    "model_error": "the agent failed",
}


class EvaluationError(Exception):
    """An attempt that produced no usable evaluation; ``retry`` says whether another may."""

    def __init__(self, reason: str, *, retry: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


def result_schema(config: EvaluationConfig) -> Json:
    """The JSON schema of the answer (strict structured output: every property required, no others)."""
    score = {"type": "integer", "minimum": 0, "maximum": 100}
    criterion = {"type": "object", "additionalProperties": False, "required": ["score", "rationale"],
                 "properties": {"score": score, "rationale": {"type": "string"}}}
    names = [c.name for c in config.criteria]
    strings = {"type": "array", "items": {"type": "string"}}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["overall_score", "criteria", "strengths", "weaknesses", "summary", "agent_ended_call"],
        "properties": {
            "overall_score": score,
            "criteria": {"type": "object", "additionalProperties": False, "required": names,
                         "properties": {name: criterion for name in names}},
            "strengths": strings,
            "weaknesses": strings,
            "summary": {"type": "string"},
            "agent_ended_call": {"type": "boolean"},
        },
    }


def _clock_text(offset: float) -> str:
    minutes, seconds = divmod(max(0.0, offset), 60)
    return f"{int(minutes):02d}:{seconds:04.1f}"


def transcript_text(entries: Sequence[TranscriptEntry]) -> str:
    lines = []
    for e in entries:
        who = e.role + (" (cut off by the caller)" if e.interrupted else "")
        lines.append(f"[{_clock_text(e.offset)}] {who}: {e.text}")
    return "\n".join(lines) if lines else "(nothing was said)"


def messages(config: EvaluationConfig, record: CallRecord, entries: Sequence[TranscriptEntry]) -> list[Json]:
    criteria = "\n".join(
        f"- {c.name} (weight {c.weight:g}): {c.description or 'no further description'}" for c in config.criteria
    ) or "- (no criteria configured: score the call overall)"
    language = f" Write rationales, strengths, weaknesses and the summary in {config.language}." \
        if config.language else ""
    system = (
        "You evaluate a recorded phone call between an AI phone agent and a caller. Score each "
        "criterion from 0 (failed) to 100 (excellent) with a short rationale quoting the transcript; "
        "overall_score is the weighted mean of the criterion scores. List the agent's strengths and "
        "weaknesses, summarise the call in two sentences, and say whether the agent ended the call "
        f"itself.{language}\n\nCriteria:\n{criteria}"
    )
    if config.instructions.strip():
        system += f"\n\nAbout the agent's job:\n{config.instructions.strip()}"
    ending = _OUTCOME_WORDS.get(record.outcome or "", "the call ended")
    user = (
        "Transcript (offsets from the start of the call):\n"
        f"{transcript_text(entries)}\n\n"
        f"Call outcome: {record.outcome or 'unknown'} ({ending})."
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def check_result(data: Any, config: EvaluationConfig) -> Json:
    """The model's answer, checked against the schema; EvaluationError (retryable) when it is not."""
    def bad(why: str) -> EvaluationError:
        return EvaluationError(f"malformed evaluation: {why}", retry=True)

    def score(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
            raise bad(f"{where} must be an integer 0-100")
        return value

    def strings(value: Any, where: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad(f"{where} must be a list of strings")
        return value

    if not isinstance(data, dict):
        raise bad("not a JSON object")
    criteria = data.get("criteria")
    if not isinstance(criteria, dict):
        raise bad("criteria missing")
    out_criteria = []
    for c in config.criteria:
        got = criteria.get(c.name)
        if not isinstance(got, dict) or not isinstance(got.get("rationale"), str):
            raise bad(f"criterion {c.name!r} missing")
        out_criteria.append({"name": c.name, "weight": c.weight,
                             "score": score(got.get("score"), f"criteria.{c.name}.score"),
                             "rationale": got["rationale"]})
    if not isinstance(data.get("summary"), str):
        raise bad("summary must be a string")
    if not isinstance(data.get("agent_ended_call"), bool):
        raise bad("agent_ended_call must be a boolean")
    return {
        "overall_score": score(data.get("overall_score"), "overall_score"),
        "criteria": out_criteria,
        "strengths": strings(data.get("strengths"), "strengths"),
        "weaknesses": strings(data.get("weaknesses"), "weaknesses"),
        "summary": data["summary"],
        "agent_ended_call": data["agent_ended_call"],
    }


class Evaluator:
    """Scores calls; one SDK client for the process, ``max_concurrent`` evaluations at a time."""

    def __init__(
        self,
        settings: EvaluationSettings,
        build_client: Callable[[], AsyncOpenAI],
        *,
        default_model: str | None = None,
        wall_clock: Callable[[], float] = time.time,
        unavailable: str | None = None,
    ) -> None:
        self.settings = settings
        # Why no model can be asked (missing credentials): every evaluation fails saying so.
        self.unavailable = unavailable
        self._build_client = build_client
        self.default_model = default_model or settings.model
        self.wall_clock = wall_clock
        self._client: AsyncOpenAI | None = None
        self._building: asyncio.Future[AsyncOpenAI] | None = None
        self._slots = asyncio.Semaphore(settings.max_concurrent)
        self.in_flight = 0

    async def _ready_client(self) -> AsyncOpenAI:
        # Building the client loads the TLS trust store: in a thread, once.
        if self._client is not None:
            return self._client
        if self._building is None:
            self._building = asyncio.ensure_future(asyncio.to_thread(self._build_client))
        client = await asyncio.shield(self._building)
        self._client = client
        return client

    async def warm_up(self) -> None:
        """Build the client and import what a request needs, in a worker thread, so that the first
        evaluation does not hold up the event loop (and the calls on it) for tens of ms."""
        if self.unavailable is not None:
            return
        client = await self._ready_client()
        await asyncio.to_thread(_import_request_modules, client)
        # The HTTP transport's first connection asks anyio for an event of the running loop's
        # backend, which imports that backend (20 ms) the first time.
        anyio.Event()

    async def close(self) -> None:
        client, self._client = self._client, None
        self._building = None
        if client is not None:
            await client.close()

    async def evaluate(self, config: EvaluationConfig, record: CallRecord,
                       entries: Sequence[TranscriptEntry]) -> Json:
        """The evaluation document of one call (``status`` ``complete`` or ``failed``); never raises
        for model or network failures."""
        model = config.model or self.default_model
        base: Json = {"call_id": record.call_id, "tenant": record.tenant, "model": model}
        attempts = 0
        reason = "not attempted"
        if self.unavailable is not None:
            return {**base, "status": "failed", "evaluation_error": self.unavailable, "attempts": 0,
                    "evaluated_at": self.wall_clock()}
        async with self._slots:
            self.in_flight += 1
            try:
                client = await self._ready_client()
                while attempts < self.settings.max_attempts:
                    attempts += 1
                    try:
                        result = await self._attempt(client, model, config, record, entries)
                    except EvaluationError as exc:
                        reason = exc.reason
                        if not exc.retry:
                            break
                    else:
                        return {**base, "status": "complete", **result, "attempts": attempts,
                                "evaluated_at": self.wall_clock()}
                    if attempts < self.settings.max_attempts:
                        delay = min(self.settings.retry_max_seconds,
                                    self.settings.retry_initial_seconds * 2 ** (attempts - 1))
                        log.info("call %s: evaluation attempt %d failed (%s); retrying", record.call_id,
                                 attempts, reason)
                        await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            finally:
                self.in_flight -= 1
        log.warning("call %s: evaluation failed after %d attempt(s): %s", record.call_id, attempts, reason)
        return {**base, "status": "failed", "evaluation_error": reason, "attempts": attempts,
                "evaluated_at": self.wall_clock()}

    async def _attempt(self, client: AsyncOpenAI, model: str, config: EvaluationConfig, record: CallRecord,
                       entries: Sequence[TranscriptEntry]) -> Json:
        try:
            prompt: Any = messages(config, record, entries)
            answer_format: Any = {"type": "json_schema", "json_schema": {
                "name": SCHEMA_NAME, "strict": True, "schema": result_schema(config)}}
            completion = await client.chat.completions.create(
                model=model, messages=prompt, response_format=answer_format, timeout=self.settings.timeout,
            )
        except openai.APITimeoutError:
            raise EvaluationError(f"timed out after {self.settings.timeout:g} s", retry=True) from None
        except _RETRYABLE as exc:
            raise EvaluationError(f"{type(exc).__name__}: {_short(exc)}", retry=True) from None
        except openai.APIStatusError as exc:
            # Other 4xx: the request itself is wrong (model name, key); asking again will not help.
            raise EvaluationError(f"HTTP {exc.status_code}: {_short(exc)}", retry=False) from None
        except openai.OpenAIError as exc:
            raise EvaluationError(f"{type(exc).__name__}: {_short(exc)}", retry=True) from None
        if not completion.choices:
            raise EvaluationError("malformed evaluation: no choices", retry=True)
        message = completion.choices[0].message
        if message.refusal:
            raise EvaluationError(f"refused: {message.refusal[:300]}", retry=False)
        try:
            data = json.loads(message.content or "")
        except ValueError:
            raise EvaluationError("malformed evaluation: not JSON", retry=True) from None
        return check_result(data, config)


def _import_request_modules(client: AsyncOpenAI) -> None:
    # What the SDK imports on the first chat completion: the resource, its parameter and result types.
    _ = client.chat.completions
    for module in ("openai.types.chat.chat_completion", "openai.types.chat.completion_create_params",
                   "openai.types.shared_params.response_format_json_schema", "openai._legacy_response"):
        importlib.import_module(module)


def _no_client() -> AsyncOpenAI:
    raise RuntimeError("no evaluation client")


def _short(exc: BaseException) -> str:
    return str(exc).replace("\n", " ")[:300]


def evaluator_from_settings(settings: Settings, simulator_base_url: str | None) -> Evaluator | None:
    """The deployment's evaluator, or None when evaluation is switched off."""
    ev = settings.evaluation
    if not ev.enabled:
        return None
    m = settings.model
    provider = ev.provider
    if provider == "auto":
        if settings.resolved_provider is ModelProvider.SIMULATOR:
            provider = "simulator"
        elif ev.azure_endpoint or m.azure_endpoint:
            provider = "azure_openai"
        else:
            provider = "openai"
    timeout = ev.timeout
    if provider == "simulator":
        if simulator_base_url is None:
            raise ValueError("evaluation.provider simulator needs the built-in simulator running")
        url = simulator_base_url
        return Evaluator(ev, lambda: AsyncOpenAI(api_key="simulator", base_url=url, max_retries=0,
                                                 timeout=timeout))
    if provider == "azure_openai":
        endpoint = ev.azure_endpoint or m.azure_endpoint
        key = ev.azure_api_key or m.azure_api_key
        if not endpoint or key is None:
            raise ValueError("evaluation on azure_openai needs an azure_endpoint and azure_api_key")
        secret = key.get_secret_value()
        return Evaluator(ev, lambda: AsyncAzureOpenAI(azure_endpoint=endpoint, api_key=secret,
                                                      api_version=ev.azure_api_version, max_retries=0,
                                                      timeout=timeout))
    api_key = ev.api_key or m.api_key
    if api_key is None:
        if ev.provider == "auto":
            # A deployment without OpenAI credentials (Voice Live only, say) still starts; calls of
            # tenants that ask for an evaluation get one that failed, saying why.
            reason = "no evaluation model configured (evaluation.api_key or evaluation.azure_endpoint)"
            log.warning("evaluation: %s; tenants' evaluations will fail", reason)
            return Evaluator(ev, _no_client, unavailable=reason)
        raise ValueError("evaluation on openai needs evaluation.api_key or model.api_key")
    secret = api_key.get_secret_value()
    base_url = ev.base_url or m.base_url
    return Evaluator(ev, lambda: AsyncOpenAI(api_key=secret, base_url=base_url, max_retries=0, timeout=timeout))
