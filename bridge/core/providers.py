"""Which provider a tenant's calls go to, and what of its settings that provider cannot take.

Used before any call: at start-up (logged), by ``callbridge check`` and by ``callbridge tenants
validate``, so that an operator learns of a tenant the provider would refuse from the tool, not
from a caller. At call set-up the switchboard applies the same rule (``sip.capabilities``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bridge.settings import ModelProvider, Settings
from sip.capabilities import SettingProblem, setting_problems
from tenants.config import TenantConfig


def provider_of(settings: Settings, tenant: TenantConfig) -> str:
    if tenant.provider != "default":
        return tenant.provider
    provider = settings.resolved_provider
    if provider is ModelProvider.SIMULATOR and settings.model.simulator_dialect == "voicelive":
        return ModelProvider.AZURE_VOICELIVE.value  # the simulator's Voice Live endpoint
    return provider.value


@dataclass(frozen=True, slots=True)
class TenantFit:
    tenant: TenantConfig
    provider: str
    problems: tuple[SettingProblem, ...]

    @property
    def refused(self) -> bool:
        """No call of this tenant is taken (its numbers stay out of service)."""
        return self.tenant.unsupported_settings == "refuse" and any(p.refuses for p in self.problems)

    def lines(self) -> list[str]:
        out = []
        for problem in self.problems:
            line = problem.describe(self.tenant.slug, self.provider)
            if problem.refuses and not self.refused:
                line = line.replace("(refused)", "(provider default: unsupported_settings is provider_defaults)")
            out.append(line)
        return out


def fit_tenants(settings: Settings, tenants: Iterable[TenantConfig]) -> list[TenantFit]:
    """The tenants with problems, each with its provider and problems."""
    fits = []
    for tenant in tenants:
        provider = provider_of(settings, tenant)
        problems = setting_problems(tenant, provider)
        if problems:
            fits.append(TenantFit(tenant, provider, tuple(problems)))
    return fits
