"""A local AMI server speaking Asterisk's manager protocol for the actions callbridge uses.

Wire format (``main/manager.c``): on connect the banner ``Asterisk Call Manager/<version>\\r\\n``;
then messages of ``Key: Value`` lines ended by an empty line, CRLF throughout. Actions carry
``Action`` and ``ActionID``; responses echo the ``ActionID`` with ``Response: Success|Error`` and a
``Message``; events carry ``Event``. Asterisk sends ``FullyBooted`` after a successful login and
closes the connection after a failed one. Handled here: Login, Logoff, Ping, Redirect, Hangup,
Setvar; anything else is answered ``Response: Error`` / ``Message: Invalid/unknown command``, as
Asterisk does.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

BANNER = "Asterisk Call Manager/11.0.0\r\n"


@dataclass
class Connection:
    writer: asyncio.StreamWriter
    logged_in: bool = False
    actions: list[dict[str, str]] = field(default_factory=list)


class AmiServer:
    def __init__(self, username: str = "callbridge", secret: str = "ami-secret") -> None:
        self.username = username
        self.secret = secret
        self.channels: set[str] = set()  # channels Redirect/Hangup/Setvar may act on
        self.actions: list[dict[str, str]] = []
        self.logins = 0
        self.failed_logins = 0
        self.connections: list[Connection] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Asterisk goes away: every manager connection is closed."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.writer.close()
        self.connections.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def restart(self, down_seconds: float = 0.2) -> None:
        port = self.port
        await self.stop()
        await asyncio.sleep(down_seconds)
        await self.start(port)

    def emit(self, **fields: str) -> None:
        """Send an event to every logged-in connection (events are not sent before login)."""
        for connection in self.connections:
            if connection.logged_in:
                self._send(connection, fields)

    @staticmethod
    def _send(connection: Connection, fields: dict[str, str]) -> None:
        if not connection.writer.is_closing():
            connection.writer.write(("".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n").encode())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(writer)
        self.connections.append(connection)
        writer.write(BANNER.encode())
        try:
            message: dict[str, str] = {}
            while True:
                line = await reader.readline()
                if not line:
                    return
                text = line.decode().rstrip("\r\n")
                if text:
                    key, _, value = text.partition(":")
                    message[key.strip()] = value.strip()
                    continue
                if message:
                    done = self._handle(connection, message)
                    message = {}
                    if done:
                        await writer.drain()
                        return
        except (ConnectionError, OSError):
            return
        finally:
            if connection in self.connections:
                self.connections.remove(connection)
            writer.close()

    def _handle(self, connection: Connection, message: dict[str, str]) -> bool:
        """Answer one action; True when the connection is to be closed."""
        action = message.get("Action", "").lower()
        reply = {"ActionID": message.get("ActionID", "")}
        connection.actions.append(message)
        self.actions.append(message)
        if action == "login":
            if message.get("Username") == self.username and message.get("Secret") == self.secret:
                connection.logged_in = True
                self.logins += 1
                self._send(connection, {"Response": "Success", **reply, "Message": "Authentication accepted"})
                self._send(connection, {"Event": "FullyBooted", "Privilege": "system,all",
                                        "Uptime": "12", "LastReload": "12", "Status": "Fully Booted"})
                return False
            self.failed_logins += 1
            self._send(connection, {"Response": "Error", **reply, "Message": "Authentication failed"})
            return True
        if not connection.logged_in:
            self._send(connection, {"Response": "Error", **reply, "Message": "Permission denied"})
            return False
        if action == "ping":
            self._send(connection, {"Response": "Success", **reply, "Ping": "Pong", "Timestamp": "1763782867.000000"})
        elif action == "logoff":
            self._send(connection, {"Response": "Goodbye", **reply, "Message": "Thanks for all the fish."})
            return True
        elif action in ("redirect", "hangup", "setvar"):
            channel = message.get("Channel", "")
            if channel not in self.channels:
                self._send(connection, {"Response": "Error", **reply, "Message": "No such channel"})
            elif action == "redirect":
                self._send(connection, {"Response": "Success", **reply, "Message": "Redirect successful"})
            elif action == "hangup":
                self.channels.discard(channel)
                self._send(connection, {"Response": "Success", **reply, "Message": "Channel Hungup"})
            else:
                self._send(connection, {"Response": "Success", **reply, "Message": "Variable Set"})
        else:
            self._send(connection, {"Response": "Error", **reply, "Message": "Invalid/unknown command"})
        return False
