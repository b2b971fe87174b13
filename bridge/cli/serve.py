"""``callbridge serve``: run the daemon until SIGTERM/SIGINT; SIGHUP reloads tenants.

A configuration that cannot be used (a bad setting, a port that cannot be bound, an unusable
tenants file) ends the command with one line on stderr naming what to fix, and exit status 2; a
call index database that does not answer at start-up, with one line and status 1.

Once ready it prints, once, where the ops page is and how to sign in. In ``development`` with no
``ops.admin_token`` it makes up a token for this process and prints it with the URL; never in
``staging`` or ``production``, where a token must be configured.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import signal
import sys
from typing import Any

from pydantic import SecretStr

from bridge.ops import logs
from bridge.records.callstore import CallStoreError
from bridge.settings import AppEnv, ConfigError, EventLoop, Settings, load_settings
from tenants.config import TenantError
from tenants.factory import DirectoryConfigError

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
    settings, generated = _development_ops_token(settings)
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
            return uvloop.run(_main(settings, generated))
    log.info("event loop: asyncio")
    return asyncio.run(_main(settings, generated))


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


def _development_ops_token(settings: Settings) -> tuple[Settings, str | None]:
    """In development, an ops admin token made up for this process when none is configured."""
    if (settings.app_env is not AppEnv.DEVELOPMENT or settings.ops.admin_token is not None
            or not ops_page_served(settings)):
        return settings, None
    token = secrets.token_urlsafe(18)
    ops = settings.ops.model_copy(update={"admin_token": SecretStr(token)})
    return settings.model_copy(update={"ops": ops}), token


def ops_page_served(settings: Settings) -> bool:
    return settings.http.enabled and settings.ops.enabled and settings.recording.enabled


def ops_page_notice(settings: Settings, http_port: int, generated: str | None) -> str | None:
    """What ``serve`` prints once ready: the ops page's URL and how to sign in (None: no page)."""
    if not ops_page_served(settings):
        return None
    if settings.ops.public_url:
        url = settings.ops.public_url.rstrip("/") + "/ops/"
    else:
        host = settings.http.host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        url = f"http://{f'[{host}]' if ':' in host else host}:{http_port}/ops/"
    if generated is not None:
        return (f"ops page: {url}  sign in with {generated} (a token made up for this development "
                "run; set CALLBRIDGE_OPS__ADMIN_TOKEN to choose one)")
    if settings.ops.admin_token is None and not settings.ops.tenant_tokens:
        return (f"ops page: {url}  has no token configured and refuses everyone: "
                "set CALLBRIDGE_OPS__ADMIN_TOKEN")
    return f"ops page: {url}  sign in with ops.admin_token (CALLBRIDGE_OPS__ADMIN_TOKEN) or a tenant token"


async def _main(settings: Settings, generated: str | None = None) -> int:
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

    async def announce() -> None:
        await app.wait_started()
        notice = ops_page_notice(settings, app.http.port if app.http else 0, generated)
        if notice is not None:
            print(notice, file=sys.stderr, flush=True)

    announcing = loop.create_task(announce())
    try:
        await app.run(stop.wait())
    except (ConfigError, DirectoryConfigError) as exc:
        print(f"callbridge: {exc}", file=sys.stderr)
        return 2
    except TenantError as exc:
        print(f"callbridge: tenants: {exc}; fix the tenants file (tenants.file, "
              "CALLBRIDGE_TENANTS__FILE) and start again", file=sys.stderr)
        return 2
    except CallStoreError as exc:
        # A dependency that does not answer rather than a mistake: status 1, as check gives it.
        print(f"callbridge: {exc}: check recording.database_url (else DATABASE_URL) and that the "
              "database is up; `callbridge check` tries every dependency", file=sys.stderr)
        return 1
    finally:
        announcing.cancel()
        await asyncio.wait([announcing])
    return 0
