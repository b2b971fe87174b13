"""What the built-in model simulator does for a tenant beyond echoing: tools it calls on cue.

A real model decides on its own to end or transfer a call; the simulator does it when told. Each
action names a tool the session declares and one cue (the first to happen fires it, once):

* ``after_turn: N``: the response to the caller's Nth turn says a short goodbye and then calls
  the tool, in one response, as a model does;
* ``on_digit: "9"``: the response to the keypad digit 9 does the same;
* ``on_silence_seconds: S``: S seconds of caller silence after the agent last spoke.

Only the simulator reads this block (the bridge passes it on when the tenant's calls go to the
simulator); real models ignore it.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ScriptedAction(_Frozen):
    tool: str = Field(..., pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    arguments: dict[str, Any] = Field(default_factory=dict)
    after_turn: int | None = Field(None, ge=1)
    on_digit: str | None = Field(None, pattern=r"^[0-9*#A-D]$")
    on_silence_seconds: float | None = Field(None, gt=0, le=600)

    @model_validator(mode="after")
    def _one_cue(self) -> ScriptedAction:
        cues = [c for c in (self.after_turn, self.on_digit, self.on_silence_seconds) if c is not None]
        if len(cues) != 1:
            raise ValueError("an action needs exactly one of after_turn, on_digit, on_silence_seconds")
        return self


class SimulatorScript(_Frozen):
    actions: tuple[ScriptedAction, ...] = ()

    def to_query(self) -> str:
        """The script as the simulator reads it from the session URL (``?script=``)."""
        return json.dumps(self.model_dump(mode="json", exclude_none=True), separators=(",", ":"))
