"""Tool calls on cue: the simulator's stand-in for a model deciding to end or transfer a call.

A session is given its cues in the URL it connects to (``?script=<json>``, the shape of
``tenants.simulation.SimulatorScript``: ``{"actions": [{"tool", "arguments", "after_turn" |
"on_digit" | "on_silence_seconds"}]}``); the bridge adds it for tenants with a ``simulator:``
block. When a cue happens and the session declares the tool, the response says a short goodbye
(transcript ``[goodbye]``) and then calls the tool, in one response, as a model does. Each action
fires once. A keypad digit without an action of its own is answered with a short clip, transcript
``[you pressed <digit>]``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from sip.realtime_session import InvalidRequest

# How a bridge words a keypad digit it forwards as text: "... key 5 ...", "digit 5", "DTMF 5".
_KEYPAD = re.compile(r"\b(?:key|digit|DTMF)\s+([0-9*#A-D])(?![0-9A-Za-z])", re.IGNORECASE)
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def keypad_digit(text: str) -> str | None:
    match = _KEYPAD.search(text)
    return match.group(1).upper() if match else None


@dataclass(slots=True)
class Action:
    tool: str
    arguments: str  # JSON text, as a model streams it
    after_turn: int | None = None
    on_digit: str | None = None
    on_silence_seconds: float | None = None
    fired: bool = False


@dataclass(slots=True)
class Script:
    actions: list[Action] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | None) -> Script:
        """The script of a session URL; InvalidRequest (the connection is refused) when unusable."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
        except ValueError:
            raise InvalidRequest("Invalid 'script': not JSON.", param="script") from None
        raw = data.get("actions") if isinstance(data, dict) else None
        if not isinstance(raw, list):
            raise InvalidRequest("Invalid 'script': expected {\"actions\": [...]}.", param="script")
        actions = []
        for i, entry in enumerate(raw):
            actions.append(_action(entry, f"script.actions[{i}]"))
        return cls(actions)

    def _take(self, **cue: Any) -> Action | None:
        key, value = next(iter(cue.items()))
        for action in self.actions:
            if not action.fired and getattr(action, key) == value:
                return action
        return None

    def after_turn(self, turn: int) -> Action | None:
        return self._take(after_turn=turn)

    def on_digit(self, digit: str) -> Action | None:
        return self._take(on_digit=digit)

    def silence(self) -> Action | None:
        return next((a for a in self.actions if not a.fired and a.on_silence_seconds is not None), None)


def _action(entry: Any, where: str) -> Action:
    if not isinstance(entry, dict):
        raise InvalidRequest(f"Invalid '{where}': expected an object.", param=where)
    tool = entry.get("tool")
    if not isinstance(tool, str) or not _TOOL_NAME.match(tool):
        raise InvalidRequest(f"Invalid '{where}.tool'.", param=f"{where}.tool")
    arguments = entry.get("arguments", {})
    if not isinstance(arguments, dict):
        raise InvalidRequest(f"Invalid '{where}.arguments': expected an object.", param=f"{where}.arguments")
    after_turn = entry.get("after_turn")
    on_digit = entry.get("on_digit")
    silence = entry.get("on_silence_seconds")
    cues = [c for c in (after_turn, on_digit, silence) if c is not None]
    if len(cues) != 1:
        raise InvalidRequest(f"Invalid '{where}': exactly one of after_turn, on_digit, on_silence_seconds.",
                             param=where)
    if after_turn is not None and (not isinstance(after_turn, int) or after_turn < 1):
        raise InvalidRequest(f"Invalid '{where}.after_turn'.", param=f"{where}.after_turn")
    if on_digit is not None and (not isinstance(on_digit, str) or keypad_digit(f"key {on_digit}") is None):
        raise InvalidRequest(f"Invalid '{where}.on_digit'.", param=f"{where}.on_digit")
    if silence is not None and (not isinstance(silence, (int, float)) or silence <= 0):
        raise InvalidRequest(f"Invalid '{where}.on_silence_seconds'.", param=f"{where}.on_silence_seconds")
    return Action(tool, json.dumps(arguments, separators=(",", ":")), after_turn,
                  on_digit.upper() if isinstance(on_digit, str) else None,
                  float(silence) if silence is not None else None)
