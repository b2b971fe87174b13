"""The load benchmark's harness, run tiny: two calls of a few seconds over AudioSocket and over
Twilio Media Streams and the SIP trunk, daemon and simulator as separate processes. It checks that the harness
places calls, pairs them with their model sessions and computes every figure; it asserts no
speed (speed is measured by ``python -m bench.load``, see bench/README.md)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from bench.load.__main__ import RunConfig, run_once

pytestmark = pytest.mark.realtime


@pytest.mark.parametrize("transport", [
    "audiosocket", "twilio",
    pytest.param("sip", marks=pytest.mark.skipif(importlib.util.find_spec("pjsua2") is None,
                                                 reason="pjsua2-python has wheels for Linux x86-64 only")),
])
def test_two_short_calls(tmp_path: Path, fixtures_dir: Path, transport: str) -> None:
    cfg = RunConfig(transport, calls=2, duration=12.0, loop="auto", pin=False, fixtures_dir=fixtures_dir,
                    keep=True, out_dir=tmp_path)
    result = run_once(cfg)
    assert result["failed_calls"] == 0, result["failures"]
    assert result["outcomes"].get("caller_hangup") == 2
    # Each caller heard the greeting and said something: inbound and outbound latencies exist.
    inbound, outbound, _barge = result["latency_samples"]
    assert inbound >= 2 and outbound >= 2
    assert result["responses"] >= 2 and result["delivered_pct"] > 90
    for key in ("cpu_per_call_minute", "rss_per_call_mb", "pacer_lateness_mean"):
        assert math.isfinite(result[key]), key
    assert all(math.isfinite(x) for x in result["inbound"] + result["outbound"])
    # Recording was on: one stereo WAV per call.
    assert len(list((tmp_path / f"{transport}-2" / "recordings").rglob("*.wav"))) == 2
