"""Runs the shipped Asterisk dialplan (asterisk-conf/extensions.conf) for one channel, as far as
the callbridge contexts need: contexts, ``exten =>`` / ``same =>`` priorities with labels, the
``[globals]`` section and ``#tryinclude``, extension patterns (``_X.``, ``_+X.`` ...), variable
and function substitution (``${VAR}``, ``${VAR:offset}``, FIELDQTY, CUT, RAND, CALLERID), ``$[...]``
expressions, and the applications NoOp, Set, Goto, GotoIf, AGI, Playback, Hangup.

Semantics follow Asterisk's documentation: AGI() sets ``AGISTATUS`` to SUCCESS, FAILURE (the
FastAGI server cannot be reached) or HANGUP; a channel hung up by the AGI server stops the
dialplan; a SET VARIABLE command sets a channel variable. AGI() is carried out by the FastAGI
side of ``tests.peers.asterisk.AsteriskCaller``; what the call does on its AudioSocket leg is up
to the test (``on_media``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tests.peers.asterisk import AsteriskCaller

MediaHook = Callable[[AsteriskCaller], Awaitable[None]]


@dataclass
class Priority:
    number: int
    label: str | None
    app: str
    args: str


@dataclass
class Dialplan:
    contexts: dict[str, dict[str, list[Priority]]] = field(default_factory=dict)
    globals: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Dialplan:
        plan = cls()
        plan._read(path)
        return plan

    def _read(self, path: Path) -> None:
        context: str | None = None
        last_exten: str | None = None
        for raw in path.read_text().splitlines():
            line = re.sub(r"(?<!\\);.*$", "", raw).strip()
            if not line:
                continue
            if line.startswith("#tryinclude") or line.startswith("#include"):
                name = line.split(None, 1)[1].strip().strip('"')
                included = path.parent / name
                if included.exists():
                    self._read(included)
                elif line.startswith("#include"):
                    raise FileNotFoundError(included)
                continue
            section = re.fullmatch(r"\[([^\]]+)\](\(\+\))?", line)
            if section:
                context = section.group(1)
                self.contexts.setdefault(context, {})
                continue
            assert context is not None, f"line outside a context: {raw}"
            if context == "globals":
                name, _, value = line.partition("=")
                self.globals[name.strip()] = value.strip()
                continue
            key, _, rest = line.partition("=>")
            key = key.strip()
            rest = rest.strip()
            if key == "exten":
                exten, prio, app = rest.split(",", 2)
                last_exten = exten.strip()
            elif key == "same":
                assert last_exten is not None
                prio, app = rest.split(",", 1)
                exten = last_exten
            else:
                raise ValueError(f"unsupported dialplan line: {raw}")
            priorities = self.contexts[context].setdefault(exten, [])
            match = re.fullmatch(r"(\d+|n)(?:\(([^)]+)\))?", prio.strip())
            assert match, prio
            number = len(priorities) + 1 if match.group(1) == "n" else int(match.group(1))
            name, _, args = app.strip().partition("(")
            priorities.append(Priority(number, match.group(2), name.strip(), args[:-1] if args else ""))

    def find(self, context: str, exten: str) -> tuple[str, list[Priority]]:
        extensions = self.contexts[context]
        if exten in extensions:
            return exten, extensions[exten]
        for pattern, priorities in extensions.items():
            if pattern.startswith("_") and _pattern(pattern).fullmatch(exten):
                return pattern, priorities
        raise LookupError(f"no extension {exten} in [{context}]")


def _pattern(pattern: str) -> re.Pattern[str]:
    out = []
    chars = iter(pattern[1:])
    for ch in chars:
        if ch == "X":
            out.append("[0-9]")
        elif ch == "Z":
            out.append("[1-9]")
        elif ch == "N":
            out.append("[2-9]")
        elif ch == ".":
            out.append(".+")
        elif ch == "!":
            out.append(".*")
        elif ch == "[":
            body = ""
            for inner in chars:
                if inner == "]":
                    break
                body += inner
            out.append(f"[{body}]")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out))


@dataclass
class ChannelResult:
    variables: dict[str, str]
    agi_calls: list[tuple[str, str]]  # (target URL, AGISTATUS)
    callers: list[AsteriskCaller]
    played: list[str]
    hung_up_by_server: bool = False


class Channel:
    """One inbound channel walking the dialplan."""

    def __init__(self, plan: Dialplan, *, caller_id: str = "5511988887777", rng: random.Random | None = None,
                 on_media: MediaHook | None = None) -> None:
        self.plan = plan
        self.caller_id = caller_id
        self.rng = rng or random.Random(0)
        self.on_media = on_media
        self.variables: dict[str, str] = {}
        self.result = ChannelResult(self.variables, [], [], [])

    # ------------------------------------------------------------------ substitution
    def _lookup(self, name: str) -> str:
        if name in self.variables:
            return self.variables[name]
        return self.plan.globals.get(name, "")

    def substitute(self, text: str) -> str:
        # Innermost first, as Asterisk does: ${...} then $[...], repeated until none remain.
        while True:
            match = re.search(r"\$\{([^${}\[\]]*)\}", text)
            if match:
                text = text[:match.start()] + self._expand(match.group(1)) + text[match.end():]
                continue
            match = re.search(r"\$\[([^$\[\]]*)\]", text)
            if match:
                text = text[:match.start()] + self._evaluate(match.group(1)) + text[match.end():]
                continue
            return text

    def _expand(self, inner: str) -> str:
        func = re.fullmatch(r"([A-Z_]+)\((.*)\)", inner)
        if func:
            name, args = func.group(1), [a.strip() for a in func.group(2).split(",")]
            if name == "FIELDQTY":
                value = self._lookup(args[0])
                return str(len(value.split(args[1]))) if value else "0"
            if name == "CUT":
                fields = self._lookup(args[0]).split(args[1])
                index = int(args[2])
                return fields[index - 1] if 0 < index <= len(fields) else ""
            if name == "RAND":
                return str(self.rng.randint(int(args[0]), int(args[1])))
            if name == "CALLERID" and args[0] == "num":
                return self.caller_id
            raise NotImplementedError(f"dialplan function {name}")
        name, _, offset = inner.partition(":")
        value = self._lookup(name)
        return value[int(offset):] if offset else value

    @staticmethod
    def _evaluate(expr: str) -> str:
        tokens = re.findall(r'"[^"]*"|>=|<=|!=|[-+*/%()<>=]|[^\s"()<>=!+*/%-]+', expr)
        python = []
        for token in tokens:
            if token == "=":
                python.append("==")
            elif token.startswith('"') or re.fullmatch(r"-?\d+", token) or token in (
                    ">=", "<=", "!=", "<", ">", "+", "-", "*", "/", "%", "(", ")"):
                python.append(token.replace("/", "//"))
            else:
                python.append(repr(token))
        value = eval(" ".join(python), {"__builtins__": {}}, {})  # tokens checked above
        if isinstance(value, bool):
            return "1" if value else "0"
        return str(value)

    # ------------------------------------------------------------------ execution
    async def run(self, context: str, exten: str) -> ChannelResult:
        priority = 1
        for _ in range(1000):  # a runaway loop is a dialplan bug
            self.variables["EXTEN"] = exten
            _, priorities = self.plan.find(context, exten)
            step = next(p for p in priorities if p.number == priority)
            jump = await self._execute(context, priorities, step)
            if jump == "hangup":
                return self.result
            if jump is None:
                priority += 1
            else:
                context, exten, priority = jump
        raise AssertionError("dialplan did not finish")

    async def _execute(self, context: str, priorities: list[Priority], step: Priority):
        app = step.app
        if app == "NoOp":
            return None
        if app == "Set":
            name, _, value = step.args.partition("=")
            self.variables[name] = self.substitute(value)
            return None
        if app == "Hangup":
            return "hangup"
        if app == "Playback":
            self.result.played.append(self.substitute(step.args))
            return None
        if app == "Goto":
            parts = [self.substitute(p) for p in step.args.split(",")]
            if len(parts) == 3:
                return parts[0], parts[1], int(parts[2])
            return context, self.variables["EXTEN"], self._label(priorities, parts[-1])
        if app == "GotoIf":
            condition, _, targets = step.args.partition("?")
            when_true, _, when_false = targets.partition(":")
            chosen = when_true if self.substitute(condition) not in ("", "0") else when_false
            if not chosen:
                return None
            parts = chosen.split(",")
            if len(parts) == 3:
                return parts[0], self.substitute(parts[1]), int(parts[2])
            return context, self.variables["EXTEN"], self._label(priorities, parts[0])
        if app == "AGI":
            return await self._agi(self.substitute(step.args))
        raise NotImplementedError(f"dialplan application {app}")

    @staticmethod
    def _label(priorities: list[Priority], label: str) -> int:
        if label.isdigit():
            return int(label)
        return next(p.number for p in priorities if p.label == label)

    async def _agi(self, args: str):
        url, *agi_args = args.split(",")
        target = urlsplit(url)
        dialled = agi_args[0] if agi_args else self.variables["EXTEN"]
        caller = AsteriskCaller(target.port or 4573, dialled, caller_id=self.caller_id,
                                host=target.hostname or "127.0.0.1")
        try:
            await caller.dial()
        except OSError:
            self.variables["AGISTATUS"] = "FAILURE"
            self.result.agi_calls.append((url, "FAILURE"))
            return None
        self.result.callers.append(caller)
        await _wait_any(caller)
        if caller.audiosocket_requested.is_set():
            await caller.connect_media()
            if self.on_media is not None:
                await self.on_media(caller)
            await caller.hang_up()
        await caller.agi_done.wait()
        await caller.close()
        self.variables.update(caller.agi.variables)
        hung_up = any(command.upper().startswith("HANGUP") for command in caller.agi.commands)
        status = "HANGUP" if hung_up else "SUCCESS"
        self.variables["AGISTATUS"] = status
        self.result.agi_calls.append((url, status))
        if hung_up:
            self.result.hung_up_by_server = True
            return "hangup"
        return None


async def _wait_any(caller: AsteriskCaller) -> None:
    import asyncio

    media = asyncio.ensure_future(caller.audiosocket_requested.wait())
    done = asyncio.ensure_future(caller.agi_done.wait())
    try:
        await asyncio.wait({media, done}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    finally:
        media.cancel()
        done.cancel()
