"""FreeSWITCH's side of /ws/freeswitch as each module build behaves, and the dialplan script.

Each peer is a real ``websockets`` client that does what the module's source does with what the
daemon sends (sources: drachtio-freeswitch-modules ``mod_audio_fork/lws_glue.cpp`` and
``audio_pipe.cpp``; jambonz freeswitch-modules ``mod_audio_fork/lws_glue.cpp``; amigniter
mod_audio_stream ``audio_streamer_glue.cpp``):

============================ =========================================================================
build                        behaviour modelled
============================ =========================================================================
``jambonz``                  BINARY played after an 80 ms pre-buffer at real time; ``mark`` echoed
(three bidirectional args)   once the audio before it played; ``killAudio`` empties the buffer and
                             echoes pending marks as cleared; ``playAudio`` ignored
``jambonz-files``            BINARY discarded; ``playAudio`` written to a file and announced
(started without them)       (``mod_audio_fork::play_audio``); marks kept, never echoed
``drachtio``                 BINARY discarded and counted ("received binary frame, discarding");
                             ``mark`` / ``clearMarks`` unsupported; ``playAudio`` to a file and
                             announced; text queued by appending to one string, so messages sent
                             in one service pass leave as one frame
``amigniter``                no subprotocol; BINARY ignored; ``streamAudio`` written to a file and
                             announced (``mod_audio_stream::play``); other JSON announced as
                             ``mod_audio_stream::json``
============================ =========================================================================

Files are written for real (as ``<tmp>/<uuid>_<n>.tmp.r16``) and announced as events with the
module's event body (the data object less the audio, plus ``file``). With ``script=True`` a
:class:`Script` plays the part of ``deploy/freeswitch/scripts/callbridge.lua``: it plays the
announced files in order at real time, echoes each file's ``mark`` through ``send_text``, stops and
forgets its queue on ``killAudio``, and sends DTMF as ``{"event":"dtmf",...}`` text.

What the caller heard is in ``heard`` (start time and samples of each 20 ms played).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import numpy as np

from sip import freeswitch as fs
from tests.peers.media_ws import FRAME_SECONDS, RemotePlayer, WsPeer

JAMBONZ_PREBUFFER_SECONDS = 0.080  # lws_glue.cpp: streamingPreBufSize, 4 x 20 ms before playout
SCRIPT_STEP_SECONDS = 0.020  # the script's session:sleep step: a file starts up to this late

BUILDS = ("jambonz", "jambonz-files", "drachtio", "amigniter")
_RAW_SUFFIX = {8000: ".r8", 16000: ".r16", 24000: ".r24", 32000: ".r32", 48000: ".r48", 64000: ".r64"}


class ModulePeer(WsPeer):
    """One module build on one channel, optionally with the dialplan script playing its files."""

    def __init__(self, build: str, tmp_dir: Path, *, rate_hz: int, script: bool) -> None:
        super().__init__()
        if build not in BUILDS:
            raise ValueError(build)
        self.build = build
        self.rate_hz = rate_hz
        self.uuid = "5f0c3b0e-0000-4000-8000-0000000000aa"
        self._tmp = tmp_dir
        self._files = 0
        self.files: list[Path] = []
        self.discarded_binary = 0
        self.unsupported: list[str] = []
        self.events: list[tuple[str, dict[str, object] | None]] = []  # (subclass, body)
        self.commands: list[tuple[float, fs.Command]] = []
        self.sent_text: list[str] = []  # TEXT frames as they left
        self._text_queue: list[str] = []
        frame = rate_hz // 50 * 2
        self._frame_bytes = frame
        # jambonz streaming: the fork's own playout buffer; echoes go out as text.
        self.player = RemotePlayer(JAMBONZ_PREBUFFER_SECONDS, echo=self._fork_echo)
        self.script = Script(self) if script else None

    @property
    def subprotocol(self) -> str | None:
        return None if self.build == "amigniter" else fs.AUDIO_FORK_SUBPROTOCOL

    @property
    def streams(self) -> bool:
        return self.build == "jambonz"

    async def start(self, url: str, metadata: dict[str, object] | None) -> None:
        await self.connect(url, [self.subprotocol] if self.subprotocol else None)
        self._tasks.append(asyncio.create_task(self.player.run()))
        if self.script is not None:
            self._tasks.append(asyncio.create_task(self.script.player.run()))
        if metadata is not None:
            await self.send(fs.metadata_message(metadata))

    # ----------------------------------------------------------------- text toward the daemon
    def send_text(self, text: str) -> None:
        """``uuid_audio_fork <uuid> send_text`` / the module's own events toward the daemon."""
        if self.ws is None or self.closed.is_set():
            return
        if self.build == "drachtio":
            # AudioPipe::bufferForSending appends to one string that the next writeable
            # callback sends as one frame.
            self._text_queue.append(text)
            if len(self._text_queue) == 1:
                asyncio.get_running_loop().call_soon(self._flush_text)
        else:
            self._send_soon(text)

    def _flush_text(self) -> None:
        text = "".join(self._text_queue)
        self._text_queue.clear()
        self._send_soon(text)

    def _send_soon(self, text: str) -> None:
        self.sent_text.append(text)
        self._tasks.append(asyncio.create_task(self.send(text)))

    def _fork_echo(self, name: str, cleared: bool) -> None:
        # lws_glue.cpp send_mark_event, spaces and all.
        event = "cleared" if cleared else "playout"
        self.send_text(f'{{"type": "mark", "data": {{"name":"{name}", "event": "{event}"}}}}')

    # ----------------------------------------------------------------- from the daemon
    def on_message(self, message: str | bytes, now: float) -> None:
        if isinstance(message, bytes):
            if self.streams:
                self.player.audio(message, now)
            else:
                self.discarded_binary += 1
            return
        command = fs.parse_command(message)
        self.commands.append((now, command))
        if self.build == "amigniter":
            if isinstance(command, fs.StreamAudio):
                self._write_and_announce("mod_audio_stream::play", message, "audioData")
            else:
                self._announce("mod_audio_stream::json", json.loads(message))
            return
        if isinstance(command, fs.PlayAudio):
            if self.build != "jambonz":  # jambonz streaming ignores playAudio
                self._write_and_announce("mod_audio_fork::play_audio", message, "audioContent")
        elif isinstance(command, fs.KillAudio):
            self._announce("mod_audio_fork::kill_audio", None)
            if self.streams:
                self.player.clear(now)
        elif isinstance(command, fs.MarkCommand):
            if self.streams:
                self.player.mark(command.name, now)
            elif self.build == "drachtio":
                self.unsupported.append("mark")
        elif isinstance(command, fs.ClearMarks):
            if self.build == "drachtio":
                self.unsupported.append("clearMarks")
        elif isinstance(command, fs.Disconnect):
            self._announce("mod_audio_fork::disconnect", {})

    def _write_and_announce(self, subclass: str, message: str, audio_key: str) -> None:
        data = dict(json.loads(message)["data"])
        audio = base64.b64decode(data.pop(audio_key))
        suffix = _RAW_SUFFIX.get(int(data.get("sampleRate", 0)), "")  # type: ignore[call-overload]
        if not suffix:
            return  # the module logs an unsupported type and announces nothing
        path = self._tmp / f"{self.uuid}_{self._files}.tmp{suffix}"
        self._files += 1
        path.write_bytes(audio)
        self.files.append(path)
        data["file"] = str(path)
        self._announce(subclass, data)

    def _announce(self, subclass: str, body: dict[str, object] | None) -> None:
        self.events.append((subclass, body))
        if self.script is not None:
            self.script.event(subclass, body)

    # ----------------------------------------------------------------- the caller
    async def play_l16(self, pcm: bytes, start: float | None = None) -> None:
        frames = [pcm[i : i + self._frame_bytes] for i in range(0, len(pcm), self._frame_bytes)]
        await self.send_paced(frames, FRAME_SECONDS, start)

    def press(self, digit: str) -> None:
        """The caller presses a key: the script passes it on."""
        if self.script is not None:
            self.script.dtmf(digit)

    @property
    def heard(self) -> list[tuple[float, np.ndarray]]:
        played = list(self.player.played)
        if self.script is not None:
            played += self.script.player.played
        return sorted((p.start, np.frombuffer(p.payload, dtype=np.int16)) for p in played)


class Script:
    """``callbridge.lua`` for files: plays them in order, echoes their marks, stops on killAudio."""

    def __init__(self, module: ModulePeer) -> None:
        self.module = module
        self.player = RemotePlayer(SCRIPT_STEP_SECONDS, echo=self._echo)
        self.kills: list[float] = []
        self.ended: list[str] = []

    def event(self, subclass: str, body: dict[str, object] | None) -> None:
        now = time.monotonic()
        if subclass.endswith("::play_audio") or subclass.endswith("::play"):
            assert body is not None
            path = Path(str(body["file"]))
            audio = path.read_bytes()
            step = self.module._frame_bytes
            for i in range(0, len(audio), step):
                self.player.audio(audio[i : i + step], now)
            mark = body.get("mark")
            if isinstance(mark, str):
                self.player.mark(mark, now)
        elif subclass == "mod_audio_fork::kill_audio" or (
            subclass == "mod_audio_stream::json" and body is not None and body.get("type") == "killAudio"
        ):
            self.kills.append(now)
            self.player.clear(now)
        elif subclass.endswith("::disconnect"):
            self.ended.append(subclass)

    def _echo(self, name: str, cleared: bool) -> None:
        self.module.send_text(json.dumps({"type": "mark", "data": {"name": name,
                                          "event": "cleared" if cleared else "playout"}},
                                         separators=(",", ":")))

    def dtmf(self, digit: str) -> None:
        self.module.send_text(f'{{"event":"dtmf","dtmf":"{digit}","duration":1280}}')


def heard_level(heard: list[tuple[float, np.ndarray]], start: float, end: float) -> tuple[float, float]:
    """RMS of what the caller heard between ``start`` and ``end`` (silence where nothing played),
    and the fraction of 20 ms slots that carried audible sound (RMS over 200)."""
    slots = max(1, round((end - start) / FRAME_SECONDS))
    levels = np.zeros(slots)
    energy = 0.0
    for at, samples in heard:
        i = int((at - start) / FRAME_SECONDS)
        if 0 <= i < slots and len(samples):
            power = float(np.mean(samples.astype(np.float64) ** 2))
            levels[i] = max(levels[i], np.sqrt(power))
            energy += power
    return float(np.sqrt(energy / slots)), float((levels > 200).mean())
