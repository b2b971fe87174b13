"""Post-call evaluation through the real ``openai`` SDK against the simulator's text model, over
loopback HTTP: the answer, its schema, Azure and Responses clients, failures, retries, concurrency."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from openai import AsyncAzureOpenAI, AsyncOpenAI

from bridge.records.callstore import CallRecord, TranscriptEntry
from bridge.records.evaluation import Evaluator, check_result, messages, result_schema
from bridge.settings import EvaluationSettings
from bridge.simulator import SimulatorServer
from tenants.evaluation import EvaluationConfig

CONFIG = EvaluationConfig.model_validate({
    "enabled": True,
    "criteria": [
        {"name": "greeting", "description": "Greets the caller and names the business", "weight": 2},
        {"name": "resolution", "description": "Solves what the caller asked", "weight": 1},
    ],
    "instructions": "The agent books appointments for a clinic.",
    "language": "pt",
})


def record(outcome: str = "agent_hangup") -> CallRecord:
    return CallRecord(call_id="c0ffee00-0000-4000-8000-000000000001", tenant="acme", tenant_id="acme",
                      transport="audiosocket", dialled="+5511999990101", caller_id="5511988887777",
                      started_at=1_750_000_000.0, answered_at=1_750_000_000.5, ended_at=1_750_000_030.0,
                      outcome=outcome)


ENTRIES = [
    TranscriptEntry("agent", "Hello, clinic speaking.", 1_750_000_002.0, 2.0),
    TranscriptEntry("caller", "I need an appointment", 1_750_000_006.0, 6.0),
    TranscriptEntry("agent", "Sure, what day would", 1_750_000_008.0, 8.0, interrupted=True),
    TranscriptEntry("caller", "Tomorrow", 1_750_000_010.0, 10.0),
    TranscriptEntry("agent", "Booked for tomorrow. Goodbye.", 1_750_000_014.0, 14.0),
]


def evaluator(server: SimulatorServer, **overrides) -> Evaluator:
    settings = EvaluationSettings(**{"retry_initial_seconds": 0.05, "retry_max_seconds": 0.1,
                                     "timeout": 5.0, **overrides})
    return Evaluator(settings, lambda: AsyncOpenAI(api_key="test", base_url=server.text_base_url, max_retries=0))


def test_prompt_carries_offsets_cuts_and_the_ending():
    prompt = messages(CONFIG, record(), ENTRIES)
    assert "greeting (weight 2)" in prompt[0]["content"] and "in pt" in prompt[0]["content"]
    assert "books appointments" in prompt[0]["content"]
    user = prompt[1]["content"]
    assert "[00:02.0] agent: Hello, clinic speaking." in user
    assert "[00:08.0] agent (cut off by the caller): Sure, what day would" in user
    assert "Call outcome: agent_hangup (the agent ended the call)." in user
    schema = result_schema(CONFIG)
    assert schema["properties"]["criteria"]["required"] == ["greeting", "resolution"]
    assert schema["additionalProperties"] is False


async def test_schema_valid_deterministic_evaluation_derived_from_the_transcript():
    async with SimulatorServer() as server:
        ev = evaluator(server)
        first = await ev.evaluate(CONFIG, record(), ENTRIES)
        again = await ev.evaluate(CONFIG, record(), ENTRIES)
        await ev.close()
        assert first["status"] == "complete", first
        assert first["attempts"] == 1
        assert 0 <= first["overall_score"] <= 100
        assert [c["name"] for c in first["criteria"]] == ["greeting", "resolution"]
        assert [c["weight"] for c in first["criteria"]] == [2, 1]
        assert all(0 <= c["score"] <= 100 and c["rationale"] for c in first["criteria"])
        assert first["agent_ended_call"] is True
        assert first["strengths"] and first["weaknesses"] and first["summary"]
        # The simulator read the transcript: one agent turn was cut off.
        assert "cut the agent off 1 time" in first["weaknesses"][0]
        same = {k: v for k, v in first.items() if k != "evaluated_at"}
        assert same == {k: v for k, v in again.items() if k != "evaluated_at"}
        # A call the caller ended scores differently and says so.
        other = await evaluator(server).evaluate(CONFIG, record("caller_hangup"), ENTRIES[:2])
        assert other["agent_ended_call"] is False
        assert other["overall_score"] != first["overall_score"]
        # What went over the wire: the SDK's structured-output request with the strict schema.
        request = server.text_model.requests[0]
        assert request["response_format"]["type"] == "json_schema"
        assert request["response_format"]["json_schema"]["strict"] is True
        assert request["response_format"]["json_schema"]["schema"] == result_schema(CONFIG)
        assert request["model"] == "gpt-4.1-mini"


async def test_azure_client_and_responses_api_reach_the_simulator():
    async with SimulatorServer(api_key="azure-key") as server:
        base = server.http_url
        settings = EvaluationSettings(retry_initial_seconds=0.05)
        azure = Evaluator(settings, lambda: AsyncAzureOpenAI(azure_endpoint=base, api_key="azure-key",
                                                              api_version="2024-10-21", max_retries=0),
                          default_model="eval-deployment")
        result = await azure.evaluate(CONFIG, record(), ENTRIES)
        await azure.close()
        assert result["status"] == "complete", result
        assert result["model"] == "eval-deployment"
        assert server.text_model.requests[-1]["model"] == "eval-deployment"
        assert server.text_model.paths[-1] == "/openai/deployments/eval-deployment/chat/completions"
        # A wrong key is refused before any answer, and that is final (no retry).
        wrong = Evaluator(settings, lambda: AsyncAzureOpenAI(azure_endpoint=base, api_key="nope",
                                                              api_version="2024-10-21", max_retries=0))
        refused = await wrong.evaluate(CONFIG, record(), ENTRIES)
        await wrong.close()
        assert refused["status"] == "failed" and refused["evaluation_error"].startswith("HTTP 401")
        assert refused["attempts"] == 1
        # The Responses API with a JSON-schema text format.
        client = AsyncOpenAI(api_key="azure-key", base_url=server.text_base_url, max_retries=0)
        response = await client.responses.create(
            model="gpt-4.1-mini",
            input=messages(CONFIG, record(), ENTRIES),  # type: ignore[arg-type]
            text={"format": {"type": "json_schema", "name": "call_evaluation", "strict": True,
                             "schema": result_schema(CONFIG)}},
        )
        await client.close()
        checked = check_result(json.loads(response.output_text), CONFIG)
        assert checked["agent_ended_call"] is True


@pytest.mark.parametrize(("model", "reason", "attempts"), [
    ("simulator-refusal", "refused: I'm sorry", 1),
    ("simulator-malformed", "malformed evaluation: not JSON", 3),
    ("simulator-error", "InternalServerError", 3),
    ("simulator-slow-3", "timed out after 0.3 s", 3),
])
async def test_failure_modes_become_evaluation_errors(model, reason, attempts):
    async with SimulatorServer() as server:
        ev = evaluator(server, max_attempts=3, timeout=0.3)
        config = CONFIG.model_copy(update={"model": model})
        started = time.monotonic()
        result = await ev.evaluate(config, record(), ENTRIES)
        await ev.close()
        assert result["status"] == "failed"
        assert result["evaluation_error"].startswith(reason), result["evaluation_error"]
        assert result["attempts"] == attempts
        assert len(server.text_model.requests) == attempts
        assert "overall_score" not in result
        if attempts > 1:
            # Back-off between attempts: 0.05 s then 0.1 s, each +-20 %.
            assert time.monotonic() - started >= 0.12


async def test_concurrency_is_bounded():
    async with SimulatorServer() as server:
        ev = evaluator(server, max_concurrent=2)
        config = CONFIG.model_copy(update={"model": "simulator-slow-0.3"})
        results = await asyncio.gather(*(ev.evaluate(config, record(), ENTRIES) for _ in range(5)))
        await ev.close()
        assert all(r["status"] == "complete" for r in results)
        assert server.text_model.peak_active == 2


async def test_deployment_without_evaluation_credentials_starts_and_says_why():
    from bridge.records.evaluation import evaluator_from_settings
    from bridge.settings import load_settings

    settings = load_settings(env_file=None, environ={}, model={
        "provider": "azure_voicelive", "voicelive_endpoint": "https://x.services.ai.azure.com",
        "voicelive_api_key": "k"})
    ev = evaluator_from_settings(settings, None)
    assert ev is not None
    result = await ev.evaluate(CONFIG, record(), ENTRIES)
    assert result["status"] == "failed" and "no evaluation model configured" in result["evaluation_error"]
    explicit = load_settings(env_file=None, environ={}, evaluation={"provider": "openai"})
    with pytest.raises(ValueError, match=r"evaluation\.api_key"):
        evaluator_from_settings(explicit, None)
    assert evaluator_from_settings(load_settings(env_file=None, environ={}, evaluation={"enabled": False}),
                                   None) is None


async def test_azure_settings_build_an_azure_openai_client():
    from bridge.records.evaluation import evaluator_from_settings
    from bridge.settings import load_settings

    async with SimulatorServer(api_key="azure-key") as server:
        endpoint = server.http_url
        # The realtime model on Azure OpenAI: evaluations go to the same resource, by deployment.
        settings = load_settings(env_file=None, environ={}, model={
            "azure_endpoint": endpoint, "azure_api_key": "azure-key", "azure_deployment": "realtime-dep"},
            evaluation={"model": "eval-dep"})
        ev = evaluator_from_settings(settings, None)
        assert ev is not None
        result = await ev.evaluate(CONFIG, record(), ENTRIES)
        await ev.close()
        assert result["status"] == "complete" and result["model"] == "eval-dep"
        assert list(server.text_model.paths) == ["/openai/deployments/eval-dep/chat/completions"]
