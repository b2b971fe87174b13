"""SIPp (Debian's sip-tester) as an independent SIP peer: built-in and project scenarios."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path

SIPP = shutil.which("sipp")
SCENARIOS = Path(__file__).resolve().parent
PCAP_DIR = Path("/usr/share/sip-tester")


@dataclass
class SippRun:
    returncode: int
    messages: str  # every message sent and received (-trace_msg)
    output: str

    def responses(self) -> list[str]:
        return [line.strip() for line in self.messages.splitlines() if line.startswith("SIP/2.0 ")]


def link_pcaps(workdir: Path) -> None:
    """uac_pcap plays pcap/g711a.pcap and the DTMF pcaps relative to its working directory."""
    pcap = workdir / "pcap"
    pcap.mkdir(parents=True, exist_ok=True)
    for source in PCAP_DIR.glob("*.pcap"):
        link = pcap / source.name
        if not link.exists():
            link.symlink_to(source)


async def run_sipp(workdir: Path, port: int, number: str, *, scenario: str = "uac_pcap",
                   timeout: float = 40.0, extra: tuple[str, ...] = ()) -> SippRun:
    """One call from SIPp on 127.0.0.1 to ``127.0.0.1:port`` for ``number``. ``scenario`` is a
    built-in name or one of this folder's XML files (without ``.xml``)."""
    assert SIPP is not None
    link_pcaps(workdir)
    messages = workdir / f"{scenario}-messages.log"
    messages.unlink(missing_ok=True)
    chosen = ["-sn", scenario] if not (SCENARIOS / f"{scenario}.xml").exists() else [
        "-sf", str(SCENARIOS / f"{scenario}.xml")]
    proc = await asyncio.create_subprocess_exec(
        SIPP, *chosen, f"127.0.0.1:{port}", "-s", number, "-m", "1", "-i", "127.0.0.1", "-p", "0",
        "-mp", "0", "-nostdin", "-timeout", str(int(timeout)), "-timeout_error", "-trace_msg",
        "-message_file", str(messages), *extra,
        cwd=workdir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout + 10)
    text = messages.read_text(errors="replace") if messages.exists() else ""
    return SippRun(proc.returncode or 0, text, out.decode(errors="replace"))
