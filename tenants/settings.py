"""What the tenant directory needs to be told: which backend, where it is, how numbers are read, how
long answers are cached. The daemon's settings embed this model as their ``tenants`` section."""

from __future__ import annotations

import enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


class UnknownNumberPolicy(enum.StrEnum):
    REFUSE = "refuse"
    DEFAULT = "default"


class TenantBackend(enum.StrEnum):
    FILE = "file"
    POSTGRES = "postgres"
    SUPABASE = "supabase"


class TenantSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not ignored

    backend: TenantBackend = TenantBackend.FILE
    file: Path | None = None  # None: the embedded example tenants file
    database_url: SecretStr | None = None
    supabase_url: str | None = None
    supabase_key: SecretStr | None = None
    default_country: str = "BR"
    unknown_number: UnknownNumberPolicy = UnknownNumberPolicy.REFUSE
    default_tenant: str | None = None  # slug used when unknown_number == default
    cache_ttl: float = Field(30.0, ge=0)
    # How long "no tenant for this number" is remembered (at most cache_ttl).
    negative_cache_ttl: float = Field(5.0, ge=0)
    lookup_timeout: float = Field(2.0, gt=0)
    # Seconds between checks of the tenants file for changes (backend "file").
    watch_interval: float = Field(2.0, gt=0)
    # What a refused FastAGI call hears before hangup (an Asterisk sound name), or none.
    refuse_announcement: str | None = "ss-noservice"

    @field_validator("default_country")
    @classmethod
    def _known_country(cls, value: str) -> str:
        from tenants.numbers import PLANS

        upper = value.upper()
        if upper not in PLANS:
            raise ValueError(f"no numbering plan for {value!r}; known: {', '.join(sorted(PLANS))}")
        return upper

    @model_validator(mode="after")
    def _backend_from_credentials(self) -> TenantSettings:
        # No backend named: the store whose credentials are given (existing deployments set
        # SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY, or DATABASE_URL, and nothing else).
        if "backend" not in self.model_fields_set:
            if self.supabase_url and self.supabase_key is not None:
                self.backend = TenantBackend.SUPABASE
            elif self.database_url is not None:
                self.backend = TenantBackend.POSTGRES
        return self

    @model_validator(mode="after")
    def _default_needs_tenant(self) -> TenantSettings:
        if self.unknown_number is UnknownNumberPolicy.DEFAULT and not self.default_tenant:
            raise ValueError("unknown_number 'default' needs default_tenant (a tenant slug)")
        return self
