"""Garbage collection: start-up's heap is frozen, and every collection's pause is measured."""

from __future__ import annotations

import gc
import weakref

from prometheus_client import CollectorRegistry

from bridge import heap
from bridge.metrics import Metrics
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
    app = Application(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop.wait()))
    try:
        await asyncio.wait_for(app.wait_started(), 20)
        assert gc.get_freeze_count() > 10_000  # modules, the SDK client, settings, tenants
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
