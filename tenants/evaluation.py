"""A tenant's post-call evaluation: the criteria a finished call is scored against.

When ``enabled``, every answered call's transcript is sent to a text model after the call, which
returns an overall score (0-100), a score and rationale per criterion, strengths, weaknesses and a
summary (``bridge.records.evaluation``). Criteria weights are relative: the overall score the
model is asked for is the weighted mean of the criterion scores.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EvaluationCriterion(_Frozen):
    name: str = Field(..., min_length=1, max_length=80)
    description: str = ""
    weight: float = Field(1.0, gt=0, le=100)


class EvaluationConfig(_Frozen):
    enabled: bool = False
    model: str | None = None  # None: the deployment's evaluation model (evaluation.model setting)
    criteria: tuple[EvaluationCriterion, ...] = ()
    instructions: str = ""  # what the evaluator should know about the agent's job
    language: str | None = None  # language of rationales, strengths, weaknesses and summary

    @field_validator("criteria")
    @classmethod
    def _unique_names(cls, value: tuple[EvaluationCriterion, ...]) -> tuple[EvaluationCriterion, ...]:
        names = [c.name for c in value]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"criterion names must be unique: {', '.join(duplicated)}")
        return value
