"""The host-stall watch excuses only time the host took: stalls the process causes itself still fail
the gap check."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.e2e.host_stalls import HostStallWatch, Stall


async def _frames_around(stall) -> list[float]:
    times = []
    for i in range(6):
        times.append(time.monotonic())
        if i == 2:
            stall()
        await asyncio.sleep(0.020)
    return times


def _busy() -> None:
    end = time.process_time() + 0.060
    while time.process_time() < end:
        pass


async def test_a_busy_loop_is_not_excused(host_stalls: HostStallWatch) -> None:
    times = await _frames_around(_busy)
    with pytest.raises(AssertionError, match="gap of"):
        host_stalls.assert_no_gap(times)


async def test_blocking_on_the_loop_is_not_excused(host_stalls: HostStallWatch) -> None:
    times = await _frames_around(lambda: time.sleep(0.060))  # off the CPU, but no steal
    with pytest.raises(AssertionError, match="gap of"):
        host_stalls.assert_no_gap(times)


async def test_steady_frames_pass(host_stalls: HostStallWatch) -> None:
    times = await _frames_around(lambda: None)
    host_stalls.assert_no_gap(times)


def test_a_stall_counts_by_its_overlap() -> None:
    watch = HostStallWatch()
    watch.stalls.append(Stall(1.0, 1.04, 0.030))
    assert watch.taken_within(0.99, 1.05) == pytest.approx(0.030)
    assert watch.taken_within(1.02, 1.05) == pytest.approx(0.015)
    assert watch.taken_within(1.05, 1.10) == 0.0
    # A 50 ms gap of which the host took 30 ms leaves 20 ms: no gap.
    watch.assert_no_gap([0.99, 1.04])
    with pytest.raises(AssertionError, match="host took 15 ms"):
        watch.assert_no_gap([1.02, 1.09])
