"""``callbridge serve``: run the daemon until SIGTERM/SIGINT; SIGHUP reloads tenants."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from bridge.ops import logs
from bridge.settings import ConfigError, EventLoop, load_settings

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="run the daemon")
    loop = parser.add_mutually_exclusive_group()
    loop.add_argument("--uvloop", dest="event_loop", action="store_const", const=EventLoop.UVLOOP,
                      help="run on uvloop's event loop (the default when it is installed)")
    loop.add_argument("--asyncio", dest="event_loop", action="store_const", const=EventLoop.ASYNCIO,
                      help="run on asyncio's own event loop")
    parser.set_defaults(func=_serve, event_loop=None)


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"callbridge: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_json, settings.log_levels, settings.secret_values())
    _log_dsp_engines()
    choice = args.event_loop or settings.event_loop
    if choice is not EventLoop.ASYNCIO:
        try:
            import uvloop
        except ImportError:
            if choice is EventLoop.UVLOOP:
                log.warning("uvloop is not installed; using asyncio's loop")
        else:
            log.info("event loop: uvloop")
            return uvloop.run(_main(settings))
    log.info("event loop: asyncio")
    return asyncio.run(_main(settings))


def _log_dsp_engines() -> None:
    from media.noise import speexdsp_available
    from media.resample import NATIVE

    if NATIVE:
        log.info("resampler: compiled filter loop (media._native)")
    else:
        log.warning("resampler: numpy (media._native was not built: no C compiler at install time)")

    if speexdsp_available():
        log.info("speex suppression: libspeexdsp at the caller's rate")
    else:
        log.warning("speex suppression: pyspeex-noise at 16 kHz (libspeexdsp is not installed; "
                    "with it each call's suppression costs about half the CPU)")


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
