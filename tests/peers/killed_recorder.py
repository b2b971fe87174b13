"""A process that records one call in real time until it is killed (``SIGKILL`` tests).

    python -m tests.peers.killed_recorder ROOT CALL_ID

Both tracks carry a ramp (left: ``n % 30000``, right: its negative) so that what survives can be
checked sample by sample. Prints the number of 20 ms frames handed to the recorder every 100 ms.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from bridge.core.call import CallInfo
from bridge.records.callstore import CallRecord
from bridge.records.layout import ArchiveLayout
from bridge.records.recorder import CallRecorder
from bridge.records.writer import RecordingWriter
from tenants.config import TenantConfig

STARTED_AT = 1_750_000_000.0


def ramp(frames: int) -> np.ndarray:
    return (np.arange(frames) % 30000).astype(np.int16)


def main(root: Path, call_id: str) -> None:
    tenant = TenantConfig(tenant_id="t-acme", slug="acme")
    info = CallInfo("audiosocket", tenant, "+5511999990001", "5511988887777", call_id=call_id,
                    started_at=STARTED_AT)
    layout = ArchiveLayout(root)
    record = CallRecord(call_id, "acme", "t-acme", "audiosocket", info.dialled, info.caller_id,
                        STARTED_AT, path=layout.stem_for("acme", call_id, STARTED_AT))
    recorder = CallRecorder(info, record, layout, record_audio=True, clock=time.monotonic)
    writer = RecordingWriter(flush_interval=0.2, clock=time.monotonic)
    writer.start()
    writer.attach(recorder)
    recorder.transcript("caller", "hello", STARTED_AT + 0.5)
    t0 = time.monotonic()
    k = 0
    while True:
        time.sleep(max(0.0, t0 + (k + 1) * 0.02 - time.monotonic()))
        samples = ((np.arange(160) + 160 * k) % 30000).astype(np.int16)
        recorder.caller_audio(samples, 8000)
        recorder.agent_audio(-samples, 8000)
        k += 1
        if k % 5 == 0:
            print(k, flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
