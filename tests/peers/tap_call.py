"""Plays the call core's part toward a call archive: a tenant, a call, and its audio fed to the
tap the archive hands out, 20 ms at a time, the way ``bridge.core.call.Call`` feeds it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bridge.core.call import CallInfo
from bridge.records.archive import CallArchive
from bridge.settings import Settings, load_settings
from tenants.config import TenantConfig

RATE = 8000
FRAME = 160


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_settings(tmp_path: Path, **extra) -> Settings:
    recording = {"directory": str(tmp_path / "rec"), "flush_interval": 0.05, **extra.pop("recording", {})}
    return load_settings(env_file=None, environ={}, recording=recording,
                         webhooks={"retry_initial_seconds": 0.05, "retry_max_seconds": 0.2,
                                   "timeout": 2.0},
                         **extra)


def tenant(slug: str = "acme", **fields) -> TenantConfig:
    return TenantConfig(tenant_id=f"t-{slug}", slug=slug, **fields)


def call_info(n: int, slug: str = "acme", started_at: float = 1_750_000_000.0, **tenant_fields) -> CallInfo:
    return CallInfo("audiosocket", tenant(slug, **tenant_fields), f"+551199999{n:04d}", f"5511988{n:06d}",
                    call_id=f"00000000-0000-4000-8000-{n:012d}", started_at=started_at)


def play_call(archive: CallArchive, clock: FakeClock, info: CallInfo, caller: np.ndarray,
              agent: np.ndarray, *, outcome: str = "normal", transcript=()) -> None:
    """Feed a call through its tap as the call core would: 20 ms caller frames on arrival, one
    agent frame (or silence) per pacer tick, then the ``ended`` event."""
    tap = archive.open_tap(info)
    assert tap is not None
    frames = max(len(caller), len(agent)) // FRAME
    for k in range(frames):
        clock.now += 0.020
        c = caller[k * FRAME:(k + 1) * FRAME]
        tap.caller_audio(c if len(c) == FRAME else np.zeros(FRAME, np.int16), RATE)
        a = agent[k * FRAME:(k + 1) * FRAME]
        tap.agent_audio(a if len(a) == FRAME else np.zeros(FRAME, np.int16), RATE)
    for role, text, offset in transcript:
        tap.transcript(role, text, info.started_at + offset)
    info.answered_at = info.started_at + 0.3
    info.ended_at = info.started_at + frames * 0.02
    info.barge_ins = 1
    tap.event("ended", outcome=outcome)


def voice(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * 3000).astype(np.int16)
