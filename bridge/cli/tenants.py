"""``callbridge tenants ...``: inspect the tenant directory, validate and import tenants files,
migrate the tenant database.

Exit status: 0 success, 1 a negative answer (invalid file, number refused), 2 unusable settings or
arguments, 3 the tenant store could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TextIO

from bridge.settings import ConfigError, Settings, load_settings
from tenants.config import TenantConfig, TenantError
from tenants.directory import DirectoryUnavailable
from tenants.factory import DirectoryConfigError, open_directory
from tenants.file import TenantFileError, load_tenants_file
from tenants.numbers import NumberError, normalize_number

OK = 0
NEGATIVE = 1
USAGE = 2
UNAVAILABLE = 3


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("tenants", help="tenant directory: list, show, validate, import, migrate")
    commands = parser.add_subparsers(dest="tenants_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: _help(parser))

    listing = commands.add_parser("list", help="list the tenants of the configured directory")
    listing.set_defaults(func=_list)

    show = commands.add_parser("show", help="which tenant answers a dialled number, and why")
    show.add_argument("number", help="the dialled number, in any form the PBX sends")
    show.set_defaults(func=_show)

    validate = commands.add_parser(
        "validate", help="check a YAML tenants file, or the configured store's tenants, against the model provider")
    validate.add_argument("file", type=Path, nargs="?", help="default: the configured tenant store")
    validate.set_defaults(func=_validate)

    importer = commands.add_parser("import", help="write a YAML tenants file into the PostgreSQL tables")
    importer.add_argument("file", type=Path)
    importer.add_argument("--database-url", help="default: tenants.database_url / DATABASE_URL")
    importer.set_defaults(func=_import)

    migrate = commands.add_parser("migrate", help="create or update the tenant tables in PostgreSQL")
    migrate.add_argument("--database-url", help="default: tenants.database_url / DATABASE_URL")
    migrate.set_defaults(func=_migrate)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return USAGE


def _settings(args: argparse.Namespace) -> Settings | None:
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        return load_settings(args.config)
    except ConfigError as exc:
        print(f"callbridge: {exc}", file=sys.stderr)
        return None


def _run(work: Callable[[], Coroutine[Any, Any, int]]) -> int:
    try:
        return asyncio.run(work())
    except DirectoryUnavailable as exc:
        print(f"callbridge: tenant store unavailable: {exc}", file=sys.stderr)
        return UNAVAILABLE
    except (TenantError, DirectoryConfigError) as exc:
        print(f"callbridge: {exc}", file=sys.stderr)
        return USAGE
    except OSError as exc:  # connecting to the database for migrate/import
        print(f"callbridge: cannot reach the database: {exc}", file=sys.stderr)
        return UNAVAILABLE


def _print_tenants(tenants: list[TenantConfig], out: TextIO) -> None:
    rows = [("SLUG", "ACTIVE", "VOICE", "NUMBERS", "NAME")]
    for t in tenants:
        rows.append((t.slug, "yes" if t.active else "no", t.voice_name, " ".join(t.numbers) or "-", t.name))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4], file=out)


def _list(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return USAGE

    async def work() -> int:
        directory = await open_directory(settings.tenants)
        try:
            tenants = await directory.list_tenants()
        finally:
            await directory.close()
        _print_tenants(tenants, sys.stdout)
        return OK

    return _run(work)


def _show(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return USAGE

    async def work() -> int:
        from tenants.routing import route

        tenants = settings.tenants
        print(f"dialled:    {args.number}")
        try:
            print(f"normalised: {normalize_number(args.number, tenants.default_country)}")
        except NumberError as exc:
            print(f"normalised: - ({exc})")
        directory = await open_directory(tenants)
        try:
            found = await route(directory, args.number, tenants)
        finally:
            await directory.close()
        if found is None:
            policy = (
                "refuse"
                if tenants.unknown_number == "refuse"
                else f"default tenant {tenants.default_tenant!r}"
            )
            print(f"tenant:     none: the call is refused (unknown_number: {policy})")
            return NEGATIVE
        tenant = found.tenant
        print(f"tenant:     {tenant.slug}" + (f" ({tenant.name})" if tenant.name else ""))
        print(f"match:      {found.match} {found.pattern}")
        print(f"agent:      voice {tenant.voice_name}, provider {tenant.provider}, audio {tenant.audio_mode}")
        return OK

    return _run(work)


def _validate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return USAGE
    if args.file is None:
        async def work() -> int:
            directory = await open_directory(settings.tenants)
            try:
                tenants = await directory.list_tenants()
            finally:
                await directory.close()
            return _validated(f"tenant store {settings.tenants.backend}", tenants, settings)

        return _run(work)
    try:
        table = load_tenants_file(args.file, settings.tenants.default_country)
    except TenantFileError as exc:
        _print_problems(exc)
        return NEGATIVE
    return _validated(str(args.file), list(table.tenants), settings)


def _validated(source: str, tenants: list[TenantConfig], settings: Settings) -> int:
    """Print the tenants and what the model provider cannot take of their settings."""
    from bridge.core.providers import fit_tenants

    fits = fit_tenants(settings, tenants)
    for fit in fits:
        for line in fit.lines():
            print(f"{source}: {line}", file=sys.stderr)
    refused = [fit.tenant.slug for fit in fits if fit.refused]
    numbers = sum(len(t.numbers) for t in tenants)
    verdict = f"invalid for the provider: {', '.join(refused)}" if refused else "valid"
    print(f"{source}: {len(tenants)} tenant(s), {numbers} number(s) and pattern(s): {verdict}")
    _print_tenants(tenants, sys.stdout)
    return NEGATIVE if refused else OK


def _print_problems(error: TenantFileError) -> None:
    for problem in error.problems:
        print(f"{error.source}: {problem}", file=sys.stderr)


def _database_url(args: argparse.Namespace, settings: Settings) -> str | None:
    if args.database_url:
        return str(args.database_url)
    if settings.tenants.database_url is not None:
        return settings.tenants.database_url.get_secret_value()
    print(
        "callbridge: no database: set tenants.database_url (DATABASE_URL) or pass --database-url",
        file=sys.stderr,
    )
    return None


def _import(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return USAGE
    dsn = _database_url(args, settings)
    if dsn is None:
        return USAGE
    try:
        table = load_tenants_file(args.file, settings.tenants.default_country)
    except TenantFileError as exc:
        _print_problems(exc)
        return NEGATIVE

    async def work() -> int:
        from tenants.postgres import import_tenants

        report = await import_tenants(dsn, table)
        print(f"created: {', '.join(report.created) or '-'}")
        print(f"updated: {', '.join(report.updated) or '-'}")
        for moved in report.numbers_moved:
            print(f"number moved: {moved}")
        for removed in report.numbers_removed:
            print(f"number removed: {removed}")
        print(f"tenants in the database not named by the file, left as they are: {report.untouched}")
        return OK

    return _run(_database_errors(work))


def _migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return USAGE
    dsn = _database_url(args, settings)
    if dsn is None:
        return USAGE

    async def work() -> int:
        from tenants.postgres import migrate

        report = await migrate(dsn)
        for name in report.applied:
            print(f"applied: {name}")
        if not report.applied:
            print("the tenant tables are up to date")
        for name in report.changed:
            print(
                f"warning: {name} was applied earlier and has changed since; it is not re-applied",
                file=sys.stderr,
            )
        return OK

    return _run(_database_errors(work))


def _database_errors(work: Callable[[], Coroutine[Any, Any, int]]) -> Callable[[], Coroutine[Any, Any, int]]:
    """Report database errors of migrate/import as such (asyncpg is imported lazily)."""

    async def wrapped() -> int:
        import asyncpg

        try:
            return await work()
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            print(f"callbridge: database error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return NEGATIVE

    return wrapped
