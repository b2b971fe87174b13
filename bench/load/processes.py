"""The processes under test: callbridge as deployed (``python -m bridge.cli serve``, configured by
environment variables) and the realtime-protocol simulator (``python -m bridge.cli simulator``),
each its own process, pinned to a core; their CPU time and memory read from ``/proc``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin(pid: int, cpus: set[int] | None) -> None:
    """Restrict a process (and the threads it starts later) to ``cpus``, as ``taskset`` does."""
    if cpus:
        os.sched_setaffinity(pid, cpus)


@dataclass(frozen=True, slots=True)
class ProcSample:
    at: float  # monotonic
    cpu_seconds: float  # user + system, all threads
    rss_bytes: int
    # Time the main thread (the event loop) spent runnable but waiting for a CPU: other processes
    # on its core. High values mean the machine, not the process, set the pace.
    wait_seconds: float = 0.0
    system_seconds: float = 0.0  # the kernel's share of cpu_seconds (system calls)


def sample(pid: int) -> ProcSample:
    now = time.monotonic()
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # Fields after the parenthesised command name (which may hold spaces): utime is field 14.
    fields = stat[stat.rindex(b")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    system = int(fields[12]) / CLOCK_TICKS
    with open(f"/proc/{pid}/statm", "rb") as f:
        rss = int(f.read().split()[1]) * PAGE_BYTES
    wait = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/schedstat", "rb") as f:
        wait = int(f.read().split()[1]) / 1e9
    return ProcSample(now, cpu, rss, wait, system)


def cpu_times() -> tuple[int, int]:
    """(steal, total) clock ticks of all CPUs from /proc/stat. Steal is time the hypervisor ran
    something else while this VM's CPUs wanted to run: on a shared host it inflates everything."""
    with open("/proc/stat", "rb") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    steal = fields[7] if len(fields) > 7 else 0
    return steal, sum(fields[:8])


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _env(extra: dict[str, str], source: Path = REPO_ROOT) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALLBRIDGE_", "OPENAI_"))}
    env["PYTHONPATH"] = str(source)
    env.update(extra)
    return env


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    samples: list[ProcSample] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def sample(self) -> ProcSample | None:
        if not self.alive():
            return None
        with contextlib.suppress(OSError, ValueError, IndexError):
            s = sample(self.pid)
            self.samples.append(s)
            return s
        return None

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                return self.popen.wait(10)
        return self.popen.returncode


def _wait_http(url: str, proc: Process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; see {proc.log_path}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready after {timeout:.0f} s; see {proc.log_path}")


def _wait_tcp(port: int, proc: Process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; see {proc.log_path}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not listening after {timeout:.0f} s; see {proc.log_path}")


def start_simulator(run_dir: Path, port: int, events_log: Path, cpus: set[int] | None,
                    uvloop: bool = False) -> Process:
    log_path = run_dir / "simulator.log"
    cmd = [sys.executable, "-m", "bridge.cli", "simulator", "--port", str(port),
           "--events-log", str(events_log)]
    if uvloop:
        cmd.append("--uvloop")
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(cmd, cwd=run_dir, env=_env({}), stdout=log, stderr=subprocess.STDOUT)
    proc = Process("simulator", popen, log_path)
    pin(proc.pid, cpus)
    _wait_tcp(port, proc, 30)
    return proc


@dataclass(frozen=True, slots=True)
class BridgePorts:
    http: int
    agi: int
    audiosocket: int


def bridge_environment(run_dir: Path, ports: BridgePorts, simulator_port: int, tenants_file: Path,
                       max_calls: int) -> dict[str, str]:
    """The daemon's configuration, as a deployment sets it: environment variables only."""
    return {
        "CALLBRIDGE_APP_ENV": "production",
        "CALLBRIDGE_LOG_LEVEL": "INFO",
        "CALLBRIDGE_MODEL__PROVIDER": "openai",
        "CALLBRIDGE_MODEL__API_KEY": "bench-key",
        "CALLBRIDGE_MODEL__WEBSOCKET_BASE_URL": f"ws://127.0.0.1:{simulator_port}/v1",
        "CALLBRIDGE_HTTP__HOST": "127.0.0.1",
        "CALLBRIDGE_HTTP__PORT": str(ports.http),
        "CALLBRIDGE_AGI__HOST": "127.0.0.1",
        "CALLBRIDGE_AGI__PORT": str(ports.agi),
        "CALLBRIDGE_AUDIOSOCKET__HOST": "127.0.0.1",
        "CALLBRIDGE_AUDIOSOCKET__PORT": str(ports.audiosocket),
        "CALLBRIDGE_TENANTS__FILE": str(tenants_file),
        "CALLBRIDGE_RECORDING__ENABLED": "true",
        "CALLBRIDGE_RECORDING__DIRECTORY": str(run_dir / "recordings"),
        "CALLBRIDGE_LIMITS__MAX_CALLS": str(max_calls),
        # The load generator is one source placing every call, faster than the per-source
        # set-up rate a daemon allows by default (older versions ignore these).
        "CALLBRIDGE_LIMITS__SETUP_RATE": "10000",
        "CALLBRIDGE_LIMITS__SETUP_BURST": "10000",
        # Browser calls (webrtc transport): ICE on loopback, the load generators' token.
        "CALLBRIDGE_WEBRTC__HOST_ADDRESSES": '["127.0.0.1"]',
        "CALLBRIDGE_WEBRTC__PEER_NETWORKS": '["127.0.0.0/8"]',
        "CALLBRIDGE_OPS__ADMIN_TOKEN": "bench-webrtc-token",
    }


def sip_environment(port: int, calls: int, codecs: list[str] | None = None) -> dict[str, str]:
    """The SIP trunk on ``127.0.0.1:port`` (UDP), with RTP and RTCP ports for every call."""
    return {
        "CALLBRIDGE_SIP__ENABLED": "true",
        "CALLBRIDGE_SIP__HOST": "127.0.0.1",
        "CALLBRIDGE_SIP__PORT": str(port),
        "CALLBRIDGE_SIP__TRANSPORTS": '["udp"]',
        "CALLBRIDGE_SIP__CODECS": json.dumps(codecs or ["PCMU"]),
        "CALLBRIDGE_SIP__RTP_PORT": "30000",
        "CALLBRIDGE_SIP__RTP_PORT_RANGE": str(max(1000, 4 * calls)),
    }


def start_bridge(run_dir: Path, env: dict[str, str], ports: BridgePorts, cpus: set[int] | None,
                 loop: str = "auto", source: Path = REPO_ROOT) -> Process:
    """``callbridge serve`` from the source tree ``source`` (another checkout, to compare versions);
    ``loop`` "auto" leaves the event loop to the daemon's default."""
    log_path = run_dir / "callbridge.log"
    cmd = [sys.executable, "-m", "bridge.cli", "serve"]
    if loop != "auto":
        cmd.append(f"--{loop}")
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(cmd, cwd=run_dir, env=_env(env, source), stdout=log,
                                 stderr=subprocess.STDOUT)
    proc = Process("callbridge", popen, log_path)
    pin(proc.pid, cpus)
    _wait_http(f"http://127.0.0.1:{ports.http}/ready", proc, 60)
    return proc


def scrape_metrics(http_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as resp:
        return resp.read().decode("utf-8")
