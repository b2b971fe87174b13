"""The TenantDirectory interface every backend implements.

Backends (``tenants.file``, ``tenants.postgres``, ``tenants.supabase``) answer from their store on
every call; ``tenants.cache.CachingDirectory`` wraps one of them with a TTL cache that keeps
answering from stale entries while the store is unreachable. ``tenants.factory.open_directory``
builds the pair from settings; ``tenants.routing.route`` applies the unknown-number policy.

Errors a backend raises: ``DirectoryUnavailable`` when its store cannot be reached or answers
with an error, ``tenants.config.TenantError`` when a stored tenant record is invalid. Anything else
is a bug.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tenants.config import TenantConfig


class DirectoryError(Exception):
    """Base class of tenant directory failures."""


class DirectoryUnavailable(DirectoryError):
    """The tenant store could not answer (unreachable, timed out, or returned an error)."""


class MatchKind(enum.StrEnum):
    EXACT = "exact"
    PREFIX = "prefix"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class Resolution:
    tenant: TenantConfig
    number: str  # the normalised dialled number
    match: MatchKind
    pattern: str  # the number or pattern that matched


ChangeListener = Callable[[], None]


class TenantDirectory(Protocol):
    async def resolve(self, dialled: str) -> TenantConfig | None:
        """The tenant answering ``dialled``, or None when no active tenant does."""
        ...

    async def explain(self, dialled: str) -> Resolution | None:
        """Like resolve, saying which number or pattern matched and how."""
        ...

    async def tenant_by_slug(self, slug: str) -> TenantConfig | None:
        """The tenant with this slug, active or not (the caller decides what inactive means)."""
        ...

    async def list_tenants(self) -> list[TenantConfig]: ...

    async def close(self) -> None: ...


class ObservableDirectory(TenantDirectory, Protocol):
    """A backend that can tell when its data changed (file edited, database NOTIFY)."""

    def add_change_listener(self, listener: ChangeListener) -> None: ...
