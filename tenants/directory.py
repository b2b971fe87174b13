"""The TenantDirectory interface every backend implements."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from tenants.config import TenantConfig


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


class TenantDirectory(Protocol):
    async def resolve(self, dialled: str) -> TenantConfig | None:
        """The tenant answering ``dialled``, or None when no active tenant does."""
        ...

    async def explain(self, dialled: str) -> Resolution | None:
        """Like resolve, saying which number or pattern matched and how."""
        ...

    async def list_tenants(self) -> list[TenantConfig]: ...

    async def close(self) -> None: ...
