"""Builds the tenant directory the settings ask for: one backend behind the cache."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tenants.cache import CacheObserver, CachingDirectory
from tenants.directory import TenantDirectory

if TYPE_CHECKING:
    from tenants.settings import TenantSettings


class DirectoryConfigError(ValueError):
    """Settings that do not describe a usable tenant backend."""


async def open_backend(settings: TenantSettings) -> TenantDirectory:
    """The uncached backend named by ``settings.backend``."""
    backend = str(settings.backend)
    if backend == "file":
        from tenants.file import FileDirectory

        return await FileDirectory.open(
            settings.file, settings.default_country, watch_interval=settings.watch_interval
        )
    if backend == "postgres":
        if settings.database_url is None:
            raise DirectoryConfigError("tenants.backend 'postgres' needs tenants.database_url (DATABASE_URL)")
        from tenants.postgres import PostgresDirectory

        url = settings.database_url.get_secret_value()
        timeout = settings.lookup_timeout
        return await PostgresDirectory.open(url, settings.default_country, query_timeout=timeout)
    if backend == "supabase":
        if not settings.supabase_url or settings.supabase_key is None:
            raise DirectoryConfigError(
                "tenants.backend 'supabase' needs tenants.supabase_url and tenants.supabase_key "
                "(SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY)"
            )
        from tenants.supabase import SupabaseDirectory

        return await SupabaseDirectory.open(
            settings.supabase_url,
            settings.supabase_key.get_secret_value(),
            settings.default_country,
            query_timeout=settings.lookup_timeout,
        )
    raise DirectoryConfigError(f"unknown tenants backend {backend!r}")


async def open_directory(
    settings: TenantSettings,
    *,
    observer: CacheObserver | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> CachingDirectory:
    """The app's tenant directory: the configured backend behind a CachingDirectory.

    The result also offers ``reload()`` (for SIGHUP) and ``watch()`` (run it in the app's task
    group: file polling or database change notifications). ``observer`` is told every lookup's
    cache result; pass a Prometheus counter with a ``result`` label.
    """
    backend = await open_backend(settings)
    return CachingDirectory(
        backend,
        settings.cache_ttl,
        negative_ttl=settings.negative_cache_ttl,
        timeout=settings.lookup_timeout,
        default_country=settings.default_country,
        observer=observer,
        clock=clock,
    )
