"""The three-table tenant schema, read the same way by the PostgreSQL and Supabase backends.

``clients`` holds one row per business, ``client_sip_numbers`` its numbers (and prefix patterns),
``client_configurations`` its agent settings: one column per TenantConfig setting plus a jsonb
``settings`` column for the rest. Rows written by other tools are read as they are: legacy column
names are mapped (``max_tokens``, ``speech_rate``), numbers in other spellings are normalised,
missing slugs are derived from the name, and columns that are not settings are reported (once per
process, by the backend) and ignored. Keys inside ``settings`` are validated as strictly as the
YAML file: an unknown key makes the record invalid (TenantError).
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tenants.config import TenantConfig, TenantError, parse_tenant
from tenants.directory import Resolution
from tenants.numbers import (
    NumberError,
    covering_patterns,
    is_pattern,
    match_number,
    normalize_pattern,
    stored_forms,
)

CLIENTS = "clients"
NUMBERS = "client_sip_numbers"
CONFIGURATIONS = "client_configurations"

# TenantConfig fields that come from ``clients`` or ``client_sip_numbers``, not configurations.
IDENTITY_FIELDS = frozenset({"tenant_id", "slug", "name", "active", "numbers"})
SETTING_FIELDS = tuple(name for name in TenantConfig.model_fields if name not in IDENTITY_FIELDS)
# Column name -> field, where they differ. max_tokens is the existing schema's name.
COLUMN_FIELDS = {"max_tokens": "max_output_tokens"}
FIELD_COLUMNS = {f: c for c, f in COLUMN_FIELDS.items()}
# Older names some deployments use; read when the canonical column is absent or NULL.
LEGACY_COLUMNS = {"speech_rate": "speed"}
# The Voice Live deployments' jsonb ``audio`` column: {"echo_cancellation": bool,
# "noise_reduction": bool | "<type>" | {"type": "<type>"}}.
AUDIO_COLUMN = "audio"
CONFIGURATION_COLUMNS = tuple(FIELD_COLUMNS.get(f, f) for f in SETTING_FIELDS)
JSON_FIELDS = frozenset({"turn_detection", "transfer_targets"})
_BOOKKEEPING = frozenset({"client_id", "id", "created_at", "updated_at", "settings"})
_CLIENT_COLUMNS = frozenset({"client_id", "client_name", "active", "slug", "id", "created_at", "updated_at"})

_SLUG_CHARS = re.compile(r"[^a-z0-9]+")
SLUG_MAX = 63


def derive_slug(name: str | None, client_id: str) -> str:
    """A slug for a client row that has none: its name in ASCII lowercase, else its id."""
    ascii_name = unicodedata.normalize("NFKD", name or "").encode("ascii", "ignore").decode()
    slug = _SLUG_CHARS.sub("-", ascii_name.lower()).strip("-")[:SLUG_MAX].strip("-")
    return slug or "client-" + client_id.replace("-", "")[:12].lower()


def is_active(value: Any) -> bool:
    """``active`` columns default to true; NULL means never switched off."""
    return value is not False


def _json_value(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)  # a json column stored as text by an older tool
        except ValueError:
            return value
    return value


@dataclass(frozen=True, slots=True)
class TenantRecord:
    client: Mapping[str, Any]
    configuration: Mapping[str, Any] | None
    numbers: tuple[str, ...] = ()  # active numbers of the client, as stored


@dataclass(slots=True)
class Notes:
    """Things read but not used, reported once per process by the backend."""

    ignored_columns: set[tuple[str, str]] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


class NoteReporter:
    """Logs each note about the stored data once per process, not on every lookup."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.seen: set[str] = set()

    def report(self, notes: Notes) -> None:
        messages = [
            f"column {t}.{c} is not a tenant setting; ignored" for t, c in sorted(notes.ignored_columns)
        ]
        for message in [*messages, *notes.problems]:
            if message not in self.seen:
                self.seen.add(message)
                self.logger.warning("%s", message)


def tenant_from_record(
    record: TenantRecord, default_country: str, notes: Notes | None = None
) -> TenantConfig:
    """The TenantConfig of one client row and its configuration row; TenantError if invalid."""
    notes = notes if notes is not None else Notes()
    client = record.client
    client_id = str(client.get("client_id") or "")
    if not client_id:
        raise TenantError("clients row without client_id")
    for column in client:
        if column not in _CLIENT_COLUMNS:
            notes.ignored_columns.add((CLIENTS, column))
    slug = client.get("slug") or derive_slug(client.get("client_name"), client_id)
    values: dict[str, Any] = {
        "tenant_id": client_id,
        "slug": slug,
        "name": client.get("client_name") or "",
        "active": is_active(client.get("active")),
    }
    numbers: list[str] = []
    for raw in record.numbers:
        try:
            numbers.append(normalize_pattern(raw, default_country))
        except NumberError as exc:
            notes.problems.append(f"client {slug}: number {raw!r} ignored: {exc}")
    values["numbers"] = tuple(sorted(set(numbers)))

    configuration = dict(record.configuration or {})
    from_columns: dict[str, Any] = {}
    for column, value in configuration.items():
        if column in _BOOKKEEPING or column in LEGACY_COLUMNS or column == AUDIO_COLUMN:
            continue
        name = COLUMN_FIELDS.get(column, column)
        if name not in SETTING_FIELDS:
            notes.ignored_columns.add((CONFIGURATIONS, column))
            continue
        if value is not None:
            from_columns[name] = _json_value(value) if name in JSON_FIELDS else value
    for legacy, name in LEGACY_COLUMNS.items():
        if configuration.get(legacy) is not None and name not in from_columns:
            from_columns[name] = configuration[legacy]

    audio = _json_value(configuration.get(AUDIO_COLUMN))
    if audio is not None:
        for name, value in _audio_settings(audio, slug, notes).items():
            from_columns.setdefault(name, value)

    settings = _json_value(configuration.get("settings")) or {}
    if not isinstance(settings, Mapping):
        raise TenantError(f"client {slug}: settings must be a JSON object")
    for key in settings:
        if key in IDENTITY_FIELDS:
            raise TenantError(f"client {slug}: settings cannot set {key!r} (a column of {CLIENTS})")
        if key in from_columns:
            notes.problems.append(
                f"client {slug}: {key!r} is set by a column and in settings; the column wins"
            )
    merged = {**settings, **from_columns}
    turn = merged.get("turn_detection")
    if isinstance(turn, Mapping) and "type" not in turn:
        merged["turn_detection"] = {"type": "server_vad", **turn}  # the existing schema's shape
    try:
        return parse_tenant({**merged, **values})
    except TenantError as exc:
        raise TenantError(f"client {slug}: {exc}") from None


def _audio_settings(audio: Any, slug: str, notes: Notes) -> dict[str, Any]:
    """Tenant settings from the ``audio`` column; keys that are not settings are reported."""
    if not isinstance(audio, Mapping):
        notes.problems.append(f"client {slug}: {CONFIGURATIONS}.{AUDIO_COLUMN} is not a JSON object; ignored")
        return {}
    out: dict[str, Any] = {}
    for key, value in audio.items():
        if key == "echo_cancellation" and value is not None:
            out["echo_cancellation"] = bool(value.get("type")) if isinstance(value, Mapping) else value
        elif key == "noise_reduction" and value is not None:
            kind = value.get("type") if isinstance(value, Mapping) else value
            if kind is True:
                out["noise_suppression"] = "model"  # the model's own (Voice Live: deep noise suppression)
            elif isinstance(kind, str):
                out["noise_suppression"] = "model"
                out["model_noise_reduction"] = kind
        elif key not in ("echo_cancellation", "noise_reduction"):
            notes.problems.append(f"client {slug}: {CONFIGURATIONS}.{AUDIO_COLUMN}.{key} is not a tenant "
                                  "setting; ignored")
    return out


def lookup_keys(number: str, default_country: str) -> list[str]:
    """The sip_number values a lookup of ``number`` asks for: its likely stored spellings, then
    every prefix pattern that could cover it (``resolve_rows`` decides among what comes back)."""
    return [*stored_forms(number, default_country), *covering_patterns(number)]


@dataclass(frozen=True, slots=True)
class NumberRow:
    """One ``client_sip_numbers`` row with its client (as the lookup queries return them)."""

    sip_number: str
    active: bool
    tenant: TenantRecord


def resolve_rows(
    number: str, rows: Iterable[NumberRow], default_country: str, notes: Notes | None = None
) -> Resolution | None:
    """Decide among the rows a lookup query returned for the normalised ``number``.

    The most specific entry decides (exact, then the longest pattern); if that entry or its client
    is inactive, the number is not found: an inactive DID inside an active block stays refused.
    """
    notes = notes if notes is not None else Notes()
    exact: dict[str, NumberRow] = {}
    patterns: dict[str, NumberRow] = {}
    # Canonically stored rows first, so that they win over other spellings of the same number.
    ordered = sorted(rows, key=lambda r: (r.sip_number.startswith("+") is False, r.sip_number))
    for row in ordered:
        try:
            entry = normalize_pattern(row.sip_number, default_country)
        except NumberError as exc:
            notes.problems.append(f"number {row.sip_number!r} ignored: {exc}")
            continue
        (patterns if is_pattern(entry) else exact).setdefault(entry, row)
    found = match_number(number, exact, patterns)
    if found is None:
        return None
    row = found.value
    if not row.active or not is_active(row.tenant.client.get("active")):
        return None
    tenant = tenant_from_record(row.tenant, default_country, notes)
    return Resolution(tenant, number, found.kind, found.entry)


def configuration_values(
    tenant: TenantConfig, available: Iterable[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Column values and ``settings`` for writing ``tenant`` into a table with ``available`` columns.

    Only fields the tenant sets explicitly are written; the others are NULL (absent from
    ``settings``) so that they keep following the documented defaults. A setting without a column
    of its own goes into ``settings``. Returns (columns, settings) with JSON-typed values as plain
    Python data.
    """
    present = set(available)
    data = tenant.model_dump(mode="json")
    columns: dict[str, Any] = {c: None for c in CONFIGURATION_COLUMNS if c in present}
    settings: dict[str, Any] = {}
    for name in SETTING_FIELDS:
        if name not in tenant.model_fields_set:
            continue
        value = data[name]
        column = FIELD_COLUMNS.get(name, name)
        if column in present:
            if not (name == "max_output_tokens" and value == "inf"):  # NULL already means no limit
                columns[column] = value
        else:
            settings[name] = value
    return columns, settings
