"""``callbridge serve``: run the daemon until SIGTERM/SIGINT; SIGHUP reloads tenants."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from bridge import logs
from bridge.settings import ConfigError, load_settings

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="run the daemon")
    parser.add_argument("--uvloop", action="store_true", help="use uvloop's event loop when installed")
    parser.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"callbridge: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_json, settings.log_levels)
    if args.uvloop:
        try:
            import uvloop

            return uvloop.run(_main(settings))
        except ImportError:
            log.warning("uvloop is not installed; using asyncio's loop")
    return asyncio.run(_main(settings))


async def _main(settings: Any) -> int:
    from bridge.app import Application

    app = Application(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def _reload() -> None:
        switchboard = app.switchboard
        reload = getattr(switchboard.directory, "reload", None) if switchboard else None
        if callable(reload):
            task = loop.create_task(reload())
            _reloads.add(task)
            task.add_done_callback(_reloads.discard)

    _reloads: set[asyncio.Task[Any]] = set()
    loop.add_signal_handler(signal.SIGHUP, _reload)
    try:
        await app.run(stop.wait())
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    return 0
