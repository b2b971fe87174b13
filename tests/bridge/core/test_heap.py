"""Garbage collection: start-up's heap is frozen, and every collection's pause is measured."""

from __future__ import annotations

import gc
import weakref

from prometheus_client import CollectorRegistry

from bridge.core import heap
from bridge.ops.metrics import Metrics
from tests.conftest import loopback_settings


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def make_cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def pause_count(metrics: Metrics, generation: int) -> float:
    registry = metrics.registry
    value = registry.get_sample_value("callbridge_gc_pause_seconds_count", {"generation": str(generation)})
    return value or 0.0


def test_every_collection_is_timed_by_generation_until_uninstalled():
    metrics = Metrics(CollectorRegistry())
    watch = heap.PauseWatch(metrics.gc_pause)
    watch.install()
    try:
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
        assert pause_count(metrics, 0) >= 1
        assert pause_count(metrics, 2) >= 2
        total = metrics.registry.get_sample_value("callbridge_gc_pause_seconds_sum", {"generation": "2"})
        assert total is not None and total > 0
    finally:
        watch.uninstall()
    before = pause_count(metrics, 2)
    gc.collect(2)
    assert pause_count(metrics, 2) == before
    assert watch._callback not in gc.callbacks


def test_settle_freezes_survivors_and_later_cycles_are_still_collected():
    survivor = Node()
    try:
        frozen = heap.settle()
        assert frozen == gc.get_freeze_count() > 0
        # The frozen object is in no generation: full collections no longer walk it.
        assert gc.is_tracked(survivor)
        assert not any(obj is survivor for obj in gc.get_objects())
        # Garbage made after start-up is collected as usual.
        ref = make_cycle()
        assert ref() is not None
        gc.collect()
        assert ref() is None
    finally:
        gc.unfreeze()
    assert any(obj is survivor for obj in gc.get_objects())


async def test_the_daemon_freezes_its_start_up_heap_and_exports_pauses(tmp_path):
    import asyncio

    import aiohttp

    from bridge.app import Application

    settings = loopback_settings(tmp_path, record=True)
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    thresholds = gc.get_threshold()
    app = Application(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop.wait()))
    try:
        await asyncio.wait_for(app.wait_started(), 20)
        assert gc.get_freeze_count() > 10_000  # modules, the SDK client, settings, tenants
        assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD
        assert gc.get_threshold()[2] == heap._NEVER  # full passes come from the schedule
        gc.collect(2)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{app.http.port}/metrics") as resp:
                text = await resp.text()
        assert 'callbridge_gc_pause_seconds_count{generation="2"}' in text
        assert pause_count(app.metrics, 2) >= 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        gc.unfreeze()
    assert gc.get_threshold() == thresholds  # the interpreter's own, once the daemon has stopped


def full_passes() -> int:
    return int(gc.get_stats()[2]["collections"])


async def test_full_collections_follow_the_schedule_not_allocation_counts():
    import asyncio

    saved = gc.get_threshold()
    schedule = heap.CollectionSchedule(period=0.2)
    schedule.install()
    try:
        schedule.install()  # a second install keeps the thresholds it found first
        assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, saved[1], heap._NEVER)
        # A cycle that has reached the oldest generation, then dropped.
        holder = [Node()]
        holder[0].other = holder[0]
        ref = weakref.ref(holder[0])
        gc.collect(1)
        del holder
        # Enough surviving containers that the interpreter's own rule would start full passes
        # (many young passes, survivors over a quarter of the old generation): none starts.
        before = full_passes()
        kept = [[i] for i in range(400_000)]
        assert full_passes() == before
        assert ref() is not None
        del kept
        task = asyncio.create_task(schedule.run())
        try:
            async with asyncio.timeout(5):
                while ref() is not None:
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
        assert full_passes() > before
    finally:
        schedule.uninstall()
    assert gc.get_threshold() == saved
    schedule.uninstall()  # once uninstalled, nothing more to restore
    assert gc.get_threshold() == saved


def test_collection_schedule_refuses_nonsense():
    import pytest

    with pytest.raises(ValueError):
        heap.CollectionSchedule(period=0)
    with pytest.raises(ValueError):
        heap.CollectionSchedule(young=0)
