"""Supabase tenant backend: the three tenant tables over Supabase's REST interface (PostgREST).

Uses the ``supabase`` package's asynchronous client with the service role key, so no lookup blocks
the event loop. A lookup is one request: the number's likely stored spellings and every prefix
pattern that could cover it (``sip_number=in.(...)``), with the client, its configuration and its
numbers embedded; the rows are decided by the same code as the PostgreSQL backend
(``tenants.schema``), so the same data gives the same answers.

There is no change notification over REST: an edit is seen once the cache entry expires
(``tenants.cache_ttl``). Deployments that need edits to apply on the next call can point the
``postgres`` backend at the Supabase database instead, which LISTENs for changes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

import httpx
from postgrest.exceptions import APIError
from supabase import AsyncClient, AsyncClientOptions, acreate_client

from tenants.config import TenantConfig, TenantError
from tenants.directory import DirectoryUnavailable, Resolution
from tenants.numbers import NumberError, normalize_number
from tenants.schema import (
    CLIENTS,
    CONFIGURATIONS,
    NUMBERS,
    NoteReporter,
    Notes,
    NumberRow,
    TenantRecord,
    is_active,
    lookup_keys,
    resolve_rows,
    tenant_from_record,
)

log = logging.getLogger(__name__)

# PostgREST returns at most this many rows per request on Supabase's default settings.
PAGE_ROWS = 1000
_TENANT_EMBED = f"*,{CONFIGURATIONS}(*),{NUMBERS}(sip_number,active)"
_LOOKUP_SELECT = f"sip_number,active,{CLIENTS}({_TENANT_EMBED})"


def _one(value: Any) -> Mapping[str, Any] | None:
    """An embedded to-one resource: an object (PostgREST >= 11) or a one-element list (older)."""
    if isinstance(value, list):
        return value[0] if value else None
    return value if isinstance(value, Mapping) else None


def _record(client: Mapping[str, Any]) -> TenantRecord:
    numbers = client.get(NUMBERS) or []
    active = tuple(n["sip_number"] for n in numbers if is_active(n.get("active")))
    plain = {k: v for k, v in client.items() if k not in (NUMBERS, CONFIGURATIONS)}
    return TenantRecord(plain, _one(client.get(CONFIGURATIONS)), active)


class SupabaseDirectory:
    """TenantDirectory over Supabase's REST interface."""

    def __init__(
        self,
        client: AsyncClient,
        default_country: str = "BR",
        *,
        page_rows: int = PAGE_ROWS,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._client = client
        self._http = http
        self.default_country = default_country
        self.page_rows = page_rows
        self._reported = NoteReporter(log)

    @classmethod
    async def open(
        cls, url: str, key: str, default_country: str = "BR", *, query_timeout: float = 2.0
    ) -> SupabaseDirectory:
        http = httpx.AsyncClient(timeout=httpx.Timeout(query_timeout))
        options = AsyncClientOptions(
            httpx_client=http,
            # The cache decides what happens when the store fails; retrying here would only
            # delay that decision past the lookup timeout.
            postgrest_client_retry=False,
            auto_refresh_token=False,
            persist_session=False,
        )
        try:
            client = await acreate_client(url, key, options)
        except BaseException:
            await http.aclose()
            raise
        return cls(client, default_country, http=http)

    async def _select(self, table: str, columns: str, **filters: list[str]) -> list[dict[str, Any]]:
        query = self._client.table(table).select(columns)
        for column, values in filters.items():
            query = query.in_(column, values)
        try:
            response = await query.execute()
        except APIError as exc:
            raise DirectoryUnavailable(f"tenant REST API: {exc.code or ''} {exc.message}".strip()) from exc
        except httpx.HTTPError as exc:
            raise DirectoryUnavailable(f"tenant REST API: {type(exc).__name__}: {exc}") from exc
        rows = cast(list[dict[str, Any]], response.data)
        return rows

    async def explain(self, dialled: str) -> Resolution | None:
        try:
            number = normalize_number(dialled, self.default_country)
        except NumberError:
            return None
        rows = await self._select(
            NUMBERS, _LOOKUP_SELECT, sip_number=lookup_keys(number, self.default_country)
        )
        candidates = []
        for row in rows:
            client = _one(row.get(CLIENTS))
            if client is None:
                continue  # a number whose client row is gone
            candidates.append(NumberRow(row["sip_number"], is_active(row.get("active")), _record(client)))
        notes = Notes()
        try:
            return resolve_rows(number, candidates, self.default_country, notes)
        finally:
            self._reported.report(notes)

    async def resolve(self, dialled: str) -> TenantConfig | None:
        found = await self.explain(dialled)
        return found.tenant if found else None

    async def list_tenants(self) -> list[TenantConfig]:
        """Every tenant whose record is valid; invalid ones are logged and left out."""
        clients: list[dict[str, Any]] = []
        while True:
            query = (
                self._client.table(CLIENTS)
                .select(_TENANT_EMBED)
                .order("client_id")
                .range(len(clients), len(clients) + self.page_rows - 1)
            )
            try:
                page = cast(list[dict[str, Any]], (await query.execute()).data)
            except APIError as exc:
                raise DirectoryUnavailable(
                    f"tenant REST API: {exc.code or ''} {exc.message}".strip()
                ) from exc
            except httpx.HTTPError as exc:
                raise DirectoryUnavailable(f"tenant REST API: {type(exc).__name__}: {exc}") from exc
            clients.extend(page)
            if len(page) < self.page_rows:
                break
        tenants = []
        notes = Notes()
        for client in clients:
            try:
                tenants.append(tenant_from_record(_record(client), self.default_country, notes))
            except TenantError as exc:
                log.error("%s", exc)
        self._reported.report(notes)
        return sorted(tenants, key=lambda t: (t.slug, t.tenant_id))

    async def tenant_by_slug(self, slug: str) -> TenantConfig | None:
        return next((t for t in await self.list_tenants() if t.slug == slug), None)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
