"""Loopback servers and daemons for tests: one place for the set-up every module needs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web


@contextlib.asynccontextmanager
async def serve_app(app: web.Application, host: str = "127.0.0.1") -> AsyncIterator[int]:
    """Serve ``app`` on ``host`` at a port the kernel picks; yields the port, cleans up after."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def start_daemon(settings: Any) -> tuple[Any, asyncio.Event, asyncio.Task[None]]:
    """Run the daemon in this process on ``settings``; returns (app, stop event, run task) once it
    serves. ``stop_daemon`` ends it the way a shutdown signal would."""
    from bridge.app import Application

    app = Application(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop.wait()))
    await asyncio.wait_for(app.wait_started(), 20)
    return app, stop, task


async def stop_daemon(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def running_daemon(settings: Any) -> AsyncIterator[Any]:
    """The daemon serving on ``settings`` for the duration of the block; yields the application."""
    app, stop, task = await start_daemon(settings)
    try:
        yield app
    finally:
        await stop_daemon(stop, task)


async def until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Wait for daemon state that has no event to wait on (metrics, call registry): poll it."""
    async with asyncio.timeout(within):
        while not predicate():
            await asyncio.sleep(0.02)
