"""The YAML tenants file: format, validation, and the file-backed TenantDirectory.

The format is documented in ``tenants/README.md``. In short::

    version: 1
    defaults: {language: pt}          # optional; merged under every tenant
    tenants:
      - slug: demo
        name: Demo
        numbers: ["+5511999990001", "1001", "+55119999901*"]
        instructions: ...

A file is accepted whole or not at all: every problem (unknown key, bad value, unparseable or
duplicated number, duplicated slug) is collected and reported together, naming the tenant. On
reload an invalid file leaves the last good version in service.

A file with no tenants is accepted only when it says so (``tenants: []``): an empty file, or one
without a ``tenants`` key, is what an editor or a configuration tool leaves while it writes, and
is refused like any other invalid file. The watcher also waits until the file has stopped changing
(the same size, inode and modification time on two polls in a row) before it reads it, and drops a
read during which the file changed, so that a file caught half-written is not taken for the new
version.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tenants.config import TenantConfig, TenantError, parse_tenant
from tenants.directory import ChangeListener, Resolution
from tenants.numbers import NumberError, is_pattern, match_number, normalize_number, normalize_pattern

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_WATCH_INTERVAL = 2.0  # seconds between stat() polls of the tenants file
_TOP_LEVEL_KEYS = frozenset({"version", "defaults", "tenants"})


def embedded_tenants_file() -> Path:
    """The example tenants file shipped inside the package (used when no file is configured)."""
    resource = importlib.resources.files("tenants") / "data" / "tenants.example.yaml"
    return Path(str(resource))


class TenantFileError(TenantError):
    """A tenants file that cannot be used; ``problems`` lists each reason, naming the tenant."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = tuple(problems)


class _StrictLoader(yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader that refuses duplicate mapping keys instead of keeping the last one silently."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)  # resolve "<<" merge keys first: overriding a merged key is fine
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    mapping: dict[Any, Any] = loader.construct_mapping(node, deep=deep)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@dataclass(frozen=True, slots=True)
class TenantTable:
    """A validated set of tenants with its number index."""

    tenants: tuple[TenantConfig, ...]
    exact: Mapping[str, TenantConfig] = field(default_factory=dict)
    patterns: Mapping[str, TenantConfig] = field(default_factory=dict)

    def explain(self, number: str) -> Resolution | None:
        """``number`` must already be normalised. Inactive tenants are not found."""
        found = match_number(number, self.exact, self.patterns)
        if found is None or not found.value.active:
            return None
        return Resolution(found.value, number, found.kind, found.entry)

    def by_slug(self, slug: str) -> TenantConfig | None:
        return next((t for t in self.tenants if t.slug == slug), None)


def build_table(
    records: list[Any],
    default_country: str,
    *,
    defaults: Mapping[str, Any] | None = None,
    where: str = "tenants",
) -> TenantTable:
    """Validate tenant records (dicts) into a TenantTable; TenantError lists every problem."""
    problems: list[str] = []
    tenants: list[TenantConfig] = []
    owner: dict[str, str] = {}  # canonical number/pattern -> the tenant that lists it
    exact: dict[str, TenantConfig] = {}
    patterns: dict[str, TenantConfig] = {}
    slugs: set[str] = set()
    ids: set[str] = set()
    for index, record in enumerate(records):
        label = f"{where}[{index}]"
        if not isinstance(record, Mapping):
            problems.append(f"{label}: a tenant must be a mapping, not {type(record).__name__}")
            continue
        merged = {**(defaults or {}), **record}
        slug = merged.get("slug")
        name = slug if isinstance(slug, str) else label
        if isinstance(slug, str):
            label = f"{label} ({slug})"
            merged.setdefault("tenant_id", slug)
        raw_numbers = merged.get("numbers", ())
        if isinstance(raw_numbers, str) or not isinstance(raw_numbers, list | tuple):
            problems.append(f"{label}: numbers must be a list")
            raw_numbers = ()
        # Numbers are checked whether or not the rest of the record is valid, so that one run
        # reports every problem.
        canonical: list[str] = []
        for raw in raw_numbers:
            try:
                entry = normalize_pattern(str(raw), default_country)
            except NumberError as exc:
                problems.append(f"{label}: numbers: {exc}")
                continue
            if entry in owner:
                problems.append(f"{label}: number {entry} is already listed by {owner[entry]!r}")
                continue
            owner[entry] = name
            canonical.append(entry)
        merged["numbers"] = tuple(canonical)
        try:
            tenant = parse_tenant(merged)
        except TenantError as exc:
            problems.append(f"{label}: {exc}")
            continue
        if tenant.slug in slugs:
            problems.append(f"{label}: slug {tenant.slug!r} is used by another tenant")
        if tenant.tenant_id in ids:
            problems.append(f"{label}: tenant_id {tenant.tenant_id!r} is used by another tenant")
        slugs.add(tenant.slug)
        ids.add(tenant.tenant_id)
        for entry in tenant.numbers:
            (patterns if is_pattern(entry) else exact)[entry] = tenant
        tenants.append(tenant)
    if problems:
        raise TenantFileError(where, problems)
    return TenantTable(tuple(tenants), exact, patterns)


def parse_tenants_yaml(
    text: str, default_country: str = "BR", *, source: str = "tenants file"
) -> TenantTable:
    """Parse and validate the text of a tenants file."""
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise TenantFileError(source, [f"not valid YAML: {exc}"]) from None
    if document is None:
        raise TenantFileError(source, ["the file is empty (write 'tenants: []' to run with no tenants)"])
    if not isinstance(document, Mapping):
        raise TenantFileError(source, ["the top level must be a mapping with a 'tenants' list"])
    unknown = sorted(str(k) for k in document if k not in _TOP_LEVEL_KEYS)
    if unknown:
        raise TenantFileError(source, [f"unknown top-level key(s) {', '.join(map(repr, unknown))}"])
    version = document.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise TenantFileError(source, [f"version {version!r} is not supported (expected {FORMAT_VERSION})"])
    defaults = document.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise TenantFileError(source, ["defaults must be a mapping"])
    for key in ("slug", "tenant_id", "numbers"):
        if key in defaults:
            raise TenantFileError(source, [f"defaults cannot set {key!r}"])
    if "tenants" not in document or document["tenants"] is None:
        raise TenantFileError(source, ["no 'tenants' list (write 'tenants: []' to run with no tenants)"])
    records = document["tenants"]
    if not isinstance(records, list):
        raise TenantFileError(source, ["tenants must be a list"])
    try:
        return build_table(records, default_country, defaults=defaults)
    except TenantFileError as exc:
        raise TenantFileError(source, list(exc.problems)) from None


def load_tenants_file(path: Path, default_country: str = "BR") -> TenantTable:
    """Read and validate a tenants file (blocking: call it in a thread from async code)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TenantFileError(str(path), [f"cannot read: {getattr(exc, 'strerror', None) or exc}"]) from None
    return parse_tenants_yaml(text, default_country, source=str(path))


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when the file is edited or replaced (rename-over changes the inode)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


class FileDirectory:
    """Tenants from one YAML file, held in memory; ``reload()`` and ``watch()`` pick up edits."""

    def __init__(
        self,
        path: Path,
        table: TenantTable,
        default_country: str = "BR",
        *,
        watch_interval: float = DEFAULT_WATCH_INTERVAL,
    ) -> None:
        self.path = path
        self.default_country = default_country
        self.watch_interval = watch_interval
        self._table = table
        self._signature = _signature(path)
        self._listeners: list[ChangeListener] = []
        self._reload_lock = asyncio.Lock()
        self.last_error: str | None = None

    @classmethod
    async def open(
        cls,
        path: Path | None = None,
        default_country: str = "BR",
        *,
        watch_interval: float = DEFAULT_WATCH_INTERVAL,
    ) -> FileDirectory:
        """Load the file (the embedded example when ``path`` is None); TenantError if invalid."""
        path = embedded_tenants_file() if path is None else path
        table = await asyncio.to_thread(load_tenants_file, path, default_country)
        log.info("loaded %d tenant(s) from %s", len(table.tenants), path)
        return cls(path, table, default_country, watch_interval=watch_interval)

    @property
    def table(self) -> TenantTable:
        return self._table

    def add_change_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    async def explain(self, dialled: str) -> Resolution | None:
        try:
            number = normalize_number(dialled, self.default_country)
        except NumberError:
            return None
        return self._table.explain(number)

    async def resolve(self, dialled: str) -> TenantConfig | None:
        found = await self.explain(dialled)
        return found.tenant if found else None

    async def tenant_by_slug(self, slug: str) -> TenantConfig | None:
        return self._table.by_slug(slug)

    async def list_tenants(self) -> list[TenantConfig]:
        return list(self._table.tenants)

    async def reload(self) -> bool:
        """Re-read the file. False (and the previous tenants stay in service) if it is invalid."""
        async with self._reload_lock:
            signature = await asyncio.to_thread(_signature, self.path)
            try:
                table = await asyncio.to_thread(load_tenants_file, self.path, self.default_country)
            except TenantError as exc:
                self._signature = signature
                self.last_error = str(exc)
                log.error(
                    "tenants file not reloaded, keeping the previous %d tenant(s): %s",
                    len(self._table.tenants),
                    exc,
                )
                return False
            after = await asyncio.to_thread(_signature, self.path)
            if after != signature:
                # Written to while being read: the next poll reads the finished file.
                log.warning("tenants file %s changed while being read; read again later", self.path)
                return False
            self._table = table
            self._signature = signature
            self.last_error = None
            if table.tenants:
                log.info("reloaded %d tenant(s) from %s", len(table.tenants), self.path)
            else:
                log.warning("tenants file %s lists no tenants: every call will be refused", self.path)
        for listener in self._listeners:
            listener()
        return True

    async def watch(self, interval: float | None = None) -> None:
        """Poll the file's inode, size and mtime every ``interval`` seconds; reload on change.

        Polling needs no extra dependency and also notices a file replaced by rename (how editors
        and configuration management write files); a change is picked up within one interval.
        """
        period = self.watch_interval if interval is None else interval
        missing = False
        previous = self._signature
        while True:
            await asyncio.sleep(period)
            signature = await asyncio.to_thread(_signature, self.path)
            if signature is None:
                if not missing:
                    log.warning(
                        "tenants file %s is missing; keeping the %d tenant(s) loaded",
                        self.path,
                        len(self._table.tenants),
                    )
                missing = True
                continue
            missing = False
            # Reload once the file has settled: unchanged since the last poll.
            if signature != self._signature and signature == previous:
                await self.reload()
            previous = signature

    async def close(self) -> None:
        return None
