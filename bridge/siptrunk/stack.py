"""PJSIP (pjsua2) in its own thread, and the hand-offs between it and the event loop.

Theory of operation
-------------------
PJSIP objects may only be touched from threads registered with the library. One thread of ours,
the SIP thread, creates the library, runs its event processing (``libHandleEvents``) and executes
every operation the event loop asks for: the loop ``submit``s a closure to a queue the SIP thread
drains between its polls (at most ``POLL_MS`` later). What PJSIP reports (an INVITE, a state
change, a digit, a transfer result, a registration) is handed to the loop with
``call_soon_threadsafe``; nothing on the loop ever waits for the SIP thread.

Audio does not go through the closures. Each call has a ``CallPort`` (a pjsua2 media port joined
to the call's stream in PJSIP's conference bridge) that PJSIP's media clock calls every 20 ms:
``onFrameReceived`` appends the caller's frame to a bounded deque (oldest dropped) and marks the
port in the shared ``MediaPump``; the pump wakes the loop at most once per clock tick for all
calls, and the loop drains every marked port in one callback. ``onFrameRequested`` takes the next
agent frame from the port's outbound deque, or gives silence. Deque appends and pops are atomic
under the interpreter lock: the hand-offs take no other lock.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import pjsua2 as pj

log = logging.getLogger(__name__)

POLL_MS = 10
START_TIMEOUT = 10.0
INBOUND_FRAMES = 50  # 1 s of caller audio waiting for the loop; more means the loop is stalled
OUTBOUND_FRAMES = 25  # 500 ms of agent audio queued toward PJSIP's clock
# PJSIP 2.15 logs this as an error on a TLS listener without a CA file (sip.tls.ca_file unset):
# it has no CA certificates to load, which is right when client certificates are not verified.
BENIGN_TLS_ERROR = "Error reading CA certificates from buffer"
TABLE_FULL = "Unable to accept incoming call (too many calls)"  # pjsua_call.c, before its 486


_LIBRARY = threading.Lock()  # held by the stack whose pjsua2 Endpoint exists


class SipStackError(Exception):
    """The SIP stack could not start (a port in use, a library error)."""


def _vector_reader() -> Callable[[Any], bytes]:
    """How to copy a pjsua2 ByteVector out quickly.

    SWIG's sequence protocol copies element by element (about 450 us per 20 ms frame); the
    vector's storage can be read directly instead (std::vector is three pointers: start, finish,
    end of storage). That layout is checked once against the slow path, which stays the fallback.
    """
    word = ctypes.sizeof(ctypes.c_void_p)

    def direct(vec: Any) -> bytes:
        addr = int(vec.this)
        start = ctypes.c_void_p.from_address(addr).value
        finish = ctypes.c_void_p.from_address(addr + word).value
        if not start or not finish or finish <= start:
            return b""
        return ctypes.string_at(start, finish - start)

    def slow(vec: Any) -> bytes:
        return bytes(vec)

    probe = bytes(range(1, 200))
    try:
        if direct(pj.ByteVector(probe)) == probe and direct(pj.ByteVector(b"")) == b"":
            return direct
    except (ValueError, TypeError, OSError):
        pass
    log.warning("pjsua2 vectors read element by element: SIP audio costs more CPU")
    return slow


read_vector = _vector_reader()


def _vector_writer() -> Callable[[Any, bytes], bool]:
    """How to fill a pjsua2 ByteVector of the right size in place (SWIG builds a new one element by
    element: about 11 us per 20 ms frame). Checked once like the reader; False means "build one"."""
    word = ctypes.sizeof(ctypes.c_void_p)

    def direct(vec: Any, data: bytes) -> bool:
        addr = int(vec.this)
        start = ctypes.c_void_p.from_address(addr).value
        finish = ctypes.c_void_p.from_address(addr + word).value
        if not start or not finish or finish - start != len(data):
            return False
        ctypes.memmove(start, data, len(data))
        return True

    def never(vec: Any, data: bytes) -> bool:
        return False

    probe = bytes(range(7, 207))
    try:
        vec = pj.ByteVector(bytes(len(probe)))
        if direct(vec, probe) and bytes(vec) == probe and not direct(vec, probe[:-1]):
            return direct
    except (ValueError, TypeError, OSError):
        pass
    return never


fill_vector = _vector_writer()


class MediaPump:
    """Wakes the loop once per media clock tick for every port that received audio."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._marked: deque[CallPort] = deque()
        self._scheduled = False

    def mark(self, port: CallPort) -> None:  # SIP media thread
        self._marked.append(port)
        if not self._scheduled:
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: the daemon is stopping
                self._scheduled = False

    def _drain(self) -> None:  # event loop
        self._scheduled = False
        marked = self._marked
        seen: set[int] = set()
        while marked:
            port = marked.popleft()
            if id(port) not in seen:
                seen.add(id(port))
                port.deliver()


class CallPort(pj.AudioMediaPort):  # type: ignore[misc]
    """The media port of one call: caller frames in, agent frames out, 20 ms of PCM16 each."""

    def __init__(self, pump: MediaPump, rate_hz: int) -> None:
        super().__init__()
        self.pump = pump
        self.rate_hz = rate_hz
        self.frame_bytes = rate_hz // 50 * 2
        self.inbound: deque[bytes] = deque(maxlen=INBOUND_FRAMES)
        self.outbound: deque[bytes] = deque(maxlen=OUTBOUND_FRAMES)
        self.consumer: Callable[[bytes], None] | None = None
        self._silence = pj.ByteVector(bytes(self.frame_bytes))
        self._frame = pj.ByteVector(bytes(self.frame_bytes))  # refilled for each agent frame
        self.frames_in = 0
        self.frames_out = 0
        self.underruns = 0

    # -- PJSIP's media clock thread -------------------------------------------------------------
    def onFrameReceived(self, frame: Any) -> None:
        data = read_vector(frame.buf)
        if data:
            self.frames_in += 1
            self.inbound.append(data)
            self.pump.mark(self)

    def onFrameRequested(self, frame: Any) -> None:
        frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
        try:
            data = self.outbound.popleft()
        except IndexError:
            frame.buf = self._silence
            frame.size = self.frame_bytes
            return
        self.frames_out += 1
        # The frame's buffer is a copy of what is assigned, so one vector serves every frame.
        frame.buf = self._frame if fill_vector(self._frame, data) else pj.ByteVector(data)
        frame.size = len(data)

    # -- event loop ------------------------------------------------------------------------------
    def deliver(self) -> None:
        consumer = self.consumer
        inbound = self.inbound
        while inbound:
            data = inbound.popleft()
            if consumer is not None:
                consumer(data)


def _pjsua_library() -> ctypes.CDLL | None:
    """The wheel's library through ctypes (the same mapping as the module's): a few pjsua C
    functions that pjsua2 does not wrap are exported there."""
    try:
        return ctypes.CDLL(pj._pjsua2.__file__)
    except (OSError, AttributeError):
        return None


def admitted_calls(requested: int) -> int:
    """How many concurrent calls PJSIP admits once initialised: ``uaConfig.maxCalls`` clamped to
    the ``PJSUA_MAX_CALLS`` of its build (``pjsua_core.c``); ``requested`` if it cannot be read."""
    lib = _pjsua_library()
    try:
        return int(lib.pjsua_call_get_max_count()) if lib is not None else requested
    except AttributeError:
        return requested


def _silence_pjlib_until_init() -> None:
    """pjlib logs its start-up (``libCreate``) to stdout before ``libInit`` installs the log writer,
    which would put non-JSON lines among JSON logs: its log level is set to nothing until then."""
    lib = _pjsua_library()
    try:
        if lib is not None:
            lib.pj_log_set_level(ctypes.c_int(0))
            return
    except AttributeError:
        pass
    log.debug("pjlib's log level cannot be set before start-up")


class _LogWriter(pj.LogWriter):  # type: ignore[misc]
    """PJSIP's log lines into this process's logging (PJSIP level 1 error, 2 warning, 3+ info).

    PJSIP answers an INVITE beyond its call table ``486`` itself, before the application hears of
    it; its log line is the only trace, so ``on_table_full`` is told of each one."""

    def __init__(self, on_table_full: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.on_table_full = on_table_full

    def write(self, entry: Any) -> None:
        level = logging.ERROR if entry.level <= 1 else logging.WARNING if entry.level == 2 else logging.DEBUG
        message = str(entry.msg).strip()
        if message.endswith(BENIGN_TLS_ERROR):
            level = logging.DEBUG
        elif message.endswith(TABLE_FULL) and self.on_table_full is not None:
            self.on_table_full()
            level = logging.DEBUG  # counted and reported by the trunk instead
        log.log(level, "pjsip: %s", message)


class SipStack:
    """The pjsua2 library, its transports and accounts, run by the SIP thread."""

    def __init__(self, build: Callable[[pj.Endpoint], None], teardown: Callable[[], None],
                 between_polls: Callable[[], None], *, max_calls: int,
                 clock_rate: int = 16000, log_level: int = 2,
                 on_table_full: Callable[[], None] | None = None) -> None:
        self._build = build  # creates transports and accounts, in the SIP thread, after libStart
        self._teardown = teardown  # drops every PJSIP object of the application, before libDestroy
        self._between_polls = between_polls  # housekeeping in the SIP thread, outside callbacks
        self.max_calls = max_calls
        self.clock_rate = clock_rate
        self.log_level = log_level
        self.on_table_full = on_table_full
        self.admitted_calls = max_calls  # PJSIP's own limit, read once it is initialised
        self.endpoint: pj.Endpoint | None = None
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping = False
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sip", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise SipStackError("the SIP stack did not start in time")
        if self._error is not None:
            raise SipStackError(str(self._error)) from self._error

    def register_this_thread(self, name: str) -> None:
        """Let this thread (the event loop's) release PJSIP objects: the last reference to a
        call's media port may be dropped there."""
        if self.endpoint is not None and not self.endpoint.libIsThreadRegistered():
            self.endpoint.libRegisterThread(name)

    def submit(self, command: Callable[[], None]) -> None:
        """Run ``command`` in the SIP thread (soon, in order)."""
        self._commands.put(command)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the SIP thread did not stop in %.0f s", timeout)

    def _run(self) -> None:
        # pjsua2 allows one Endpoint per process and aborts the process when a second one is
        # made: a stack waits here until the previous one (a restart, a test) has gone.
        if not _LIBRARY.acquire(timeout=START_TIMEOUT):
            self._error = SipStackError("the previous SIP stack of this process has not finished stopping")
            self._ready.set()
            return
        try:
            self._run_library()
        finally:
            gc.collect()  # the Endpoint's destructor frees pjsua2's one instance
            _LIBRARY.release()

    def _run_library(self) -> None:
        _silence_pjlib_until_init()
        ep = pj.Endpoint()
        try:
            ep.libCreate()
            cfg = pj.EpConfig()
            cfg.uaConfig.threadCnt = 0  # this thread polls; PJSIP starts no worker of its own
            cfg.uaConfig.mainThreadOnly = False
            cfg.uaConfig.maxCalls = self.max_calls
            cfg.uaConfig.userAgent = "callbridge"
            self._log_writer = _LogWriter(self.on_table_full)
            cfg.logConfig.writer = self._log_writer
            cfg.logConfig.level = self.log_level
            cfg.logConfig.consoleLevel = self.log_level
            cfg.logConfig.decor = 0
            cfg.medConfig.clockRate = self.clock_rate
            cfg.medConfig.sndClockRate = self.clock_rate
            cfg.medConfig.maxMediaPorts = max(254, 2 * self.max_calls + 8)
            cfg.medConfig.noVad = True  # frames flow every 20 ms, silence included
            ep.libInit(cfg)
            self.admitted_calls = admitted_calls(self.max_calls)
            ep.audDevManager().setNullDev()  # no sound card: the null device's clock drives media
            ep.libStart()
            self._build(ep)
        except BaseException as exc:  # init failures are reported to start(); the thread ends
            # Without its traceback: the traceback's frames would keep this Endpoint alive.
            self._error = (exc if not isinstance(exc, pj.Error) else SipStackError(exc.info())).with_traceback(None)
            try:
                ep.libDestroy()
            except Exception:
                log.debug("libDestroy after a failed start", exc_info=True)
            del ep
            gc.collect()
            self._ready.set()
            return
        self.endpoint = ep
        self._ready.set()
        commands = self._commands
        while not self._stopping:
            while True:
                try:
                    command = commands.get_nowait()
                except queue.Empty:
                    break
                try:
                    command()
                except pj.Error as exc:
                    log.warning("SIP operation failed: %s", exc.info())
                except Exception:
                    log.error("SIP operation failed", exc_info=True)
            self._between_polls()
            ep.libHandleEvents(POLL_MS)
        try:
            ep.hangupAllCalls()
            # Let the BYEs go out, the calls report their end and the bridge drop their ports.
            for _ in range(int(0.5 * 1000 / POLL_MS)):
                ep.libHandleEvents(POLL_MS)
        except pj.Error:
            pass
        # Every PJSIP object must be gone before the library: their destructors call into it.
        self._teardown()
        gc.collect()
        self.endpoint = None
        ep.libDestroy()
        del ep
