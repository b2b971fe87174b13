"""Asterisk Gateway Interface (FastAGI over TCP), sans-I/O.

Asterisk connects, sends its environment as ``agi_<name>: <value>`` lines closed by an empty line,
then waits for commands, one per line. Each command gets one reply line ``200 result=<n>
[(<data>)]``; errors are ``510`` (unknown command), ``511`` (dead channel) and a multi-line ``520-``
usage block closed by ``520 End of proper usage.``. When the channel hangs up during a FastAGI
session Asterisk writes a bare ``HANGUP`` line (res_agi.c, ``agi_handle_command`` / ``run_agi``).
Reference: Asterisk ``res/res_agi.c``; docs.asterisk.org "AGI Commands".

Every buffer has a bound, and exceeding one fails the session (``ProtocolError``; the caller closes
the connection): a line over ``MAX_LINE_BYTES``, an environment of more than ``MAX_ENV_LINES``
lines or ``MAX_ENV_BYTES`` bytes, a ``520-`` usage block of more than ``MAX_USAGE_LINES`` lines or
``MAX_USAGE_BYTES`` bytes, and more than ``MAX_PENDING_EVENTS`` events not yet collected (Asterisk
answers one command at a time, so a peer that sends reply after reply is not Asterisk). The longest
usage text in res_agi.c is a few dozen lines.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

MAX_LINE_BYTES = 8192
MAX_ENV_LINES = 256
MAX_ENV_BYTES = 65_536
MAX_USAGE_LINES = 200
MAX_USAGE_BYTES = 32_768
MAX_PENDING_EVENTS = 64
_RESULT = re.compile(r"^(\d{3})(?:[ -](.*))?$")
_RESULT_FIELDS = re.compile(r"result=(-?\d+)(?:\s+\((.*)\))?")


class AgiError(Exception):
    """A command that cannot be sent (bad characters)."""


@dataclass(frozen=True, slots=True)
class AgiRequest:
    env: dict[str, str]
    args: tuple[str, ...] = ()

    @property
    def script(self) -> str:
        return self.env.get("agi_network_script", "")

    @property
    def extension(self) -> str:
        return self.env.get("agi_extension", "")

    @property
    def dnid(self) -> str:
        value = self.env.get("agi_dnid", "")
        return "" if value == "unknown" else value

    @property
    def caller_id(self) -> str:
        value = self.env.get("agi_callerid", "")
        return "" if value == "unknown" else value

    @property
    def channel(self) -> str:
        return self.env.get("agi_channel", "")

    @property
    def unique_id(self) -> str:
        return self.env.get("agi_uniqueid", "")


@dataclass(frozen=True, slots=True)
class AgiResponse:
    code: int
    result: int | None = None
    data: str | None = None
    text: str = ""

    @property
    def ok(self) -> bool:
        return self.code == 200


@dataclass(frozen=True, slots=True)
class HangupNotice:
    pass


@dataclass(frozen=True, slots=True)
class ProtocolError:
    reason: str


@dataclass(frozen=True, slots=True)
class Closed:
    pass


Event = AgiRequest | AgiResponse | HangupNotice | ProtocolError | Closed


class _State(enum.Enum):
    ENV = 1
    COMMANDS = 2
    CLOSED = 3


@dataclass(slots=True)
class AgiProtocol:
    """The AGI script's side of one FastAGI session."""

    _buffer: bytearray = field(default_factory=bytearray)
    _state: _State = _State.ENV
    _env: dict[str, str] = field(default_factory=dict)
    _usage: list[str] = field(default_factory=list)
    _usage_bytes: int = 0
    _env_bytes: int = 0
    _events: list[Event] = field(default_factory=list)
    _out: list[bytes] = field(default_factory=list)

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    def receive_data(self, data: bytes) -> None:
        if self._state is _State.CLOSED:
            return
        self._buffer += data
        while not self.closed:  # a line handler may close the session
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE_BYTES:
                    self._fail("line too long")
                return
            raw = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
            if self._state is _State.ENV:
                self._env_line(line)
            else:
                self._reply_line(line)
                if len(self._events) > MAX_PENDING_EVENTS:
                    self._fail("too many AGI replies without a command")

    def receive_eof(self) -> None:
        if self._state is _State.CLOSED:
            return
        if self._state is _State.ENV:
            self._events.append(ProtocolError("connection closed before the AGI environment ended"))
        self._state = _State.CLOSED
        self._events.append(Closed())

    def events_received(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def send_command(self, command: str, *args: str) -> None:
        """Queue one command; arguments are quoted as res_agi.c's parser expects."""
        if not re.fullmatch(r"[A-Za-z ]+", command):
            raise AgiError(f"bad AGI command {command!r}")
        parts = [command]
        for arg in args:
            if any(c in arg for c in "\r\n\0"):
                raise AgiError("AGI arguments cannot contain line breaks or NUL")
            parts.append('"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"')
        self._out.append((" ".join(parts) + "\n").encode("utf-8"))

    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def _env_line(self, line: str) -> None:
        if line == "":
            self._state = _State.COMMANDS
            args = tuple(
                self._env[key]
                for key in sorted(
                    (k for k in self._env if re.fullmatch(r"agi_arg_\d+", k)),
                    key=lambda k: int(k.rsplit("_", 1)[1]),
                )
            )
            self._events.append(AgiRequest(dict(self._env), args))
            return
        self._env_bytes += len(line) + 1
        if len(self._env) >= MAX_ENV_LINES or self._env_bytes > MAX_ENV_BYTES:
            self._fail("AGI environment too large")
            return
        name, sep, value = line.partition(": ")
        if not sep:
            name, sep, value = line.partition(":")
        if not sep or not name.startswith("agi_"):
            self._fail("malformed AGI environment line")
            return
        self._env[name] = value.strip()

    def _reply_line(self, line: str) -> None:
        if line == "HANGUP":
            self._events.append(HangupNotice())
            return
        if line.startswith("520-") or (self._usage and not line.startswith("520 ")):
            self._usage_bytes += len(line) + 1
            if len(self._usage) >= MAX_USAGE_LINES or self._usage_bytes > MAX_USAGE_BYTES:
                self._fail("AGI usage block too long")
                return
            self._usage.append(line)
            return
        match = _RESULT.match(line)
        if match is None:
            if line == "":
                return
            self._fail("malformed AGI reply")
            return
        code = int(match.group(1))
        rest = match.group(2) or ""
        if self._usage:
            rest = "\n".join([*self._usage, rest])
            self._usage = []
            self._usage_bytes = 0
        fields = _RESULT_FIELDS.search(rest) if code == 200 else None
        if fields is not None:
            self._events.append(AgiResponse(code, int(fields.group(1)), fields.group(2), rest))
        else:
            self._events.append(AgiResponse(code, None, None, rest))

    def _fail(self, reason: str) -> None:
        self._state = _State.CLOSED
        self._buffer.clear()
        self._usage.clear()
        self._env.clear()
        self._events.append(ProtocolError(reason))
