from __future__ import annotations

from pathlib import Path

import pytest

from bridge.settings import load_settings
from tenants.cache import CachingDirectory
from tenants.directory import MatchKind
from tenants.factory import DirectoryConfigError, open_directory
from tenants.file import FileDirectory
from tenants.routing import route
from tenants.settings import TenantSettings

TENANTS = """
tenants:
  - slug: acme
    numbers: ["+5511988880001", "+55119888801*"]
  - slug: fallback
    numbers: []
  - slug: closed
    active: false
"""


@pytest.fixture
async def directory(tmp_path: Path) -> FileDirectory:
    path = tmp_path / "tenants.yaml"
    path.write_text(TENANTS)
    return await FileDirectory.open(path)


@pytest.mark.parametrize(
    ("dialled", "slug", "kind", "pattern"),
    [
        ("sip:+5511988880001@pbx;user=phone", "acme", MatchKind.EXACT, "+5511988880001"),
        ("011 98888-0177", "acme", MatchKind.PREFIX, "+55119888801*"),
    ],
)
async def test_route_matches(directory: FileDirectory, dialled: str, slug: str, kind: MatchKind,
                             pattern: str) -> None:
    found = await route(directory, dialled, TenantSettings())
    assert found is not None
    assert (found.tenant.slug, found.match, found.pattern) == (slug, kind, pattern)


@pytest.mark.parametrize("dialled", ["+12125550100", "2001", "", "not-a-number"])
async def test_unknown_number_refused_by_default(directory: FileDirectory, dialled: str) -> None:
    assert await route(directory, dialled, TenantSettings()) is None


@pytest.mark.parametrize("dialled", ["+12125550100", "2001", "not-a-number"])
async def test_unknown_number_to_default_tenant(directory: FileDirectory, dialled: str) -> None:
    settings = TenantSettings(unknown_number="default", default_tenant="fallback")
    found = await route(directory, dialled, settings)
    assert found is not None
    assert found.tenant.slug == "fallback" and found.match is MatchKind.DEFAULT and found.pattern == "*"


@pytest.mark.parametrize("slug", ["closed", "missing"])
async def test_inactive_or_missing_default_tenant_refuses(directory: FileDirectory, slug: str) -> None:
    settings = TenantSettings(unknown_number="default", default_tenant=slug)
    assert await route(directory, "+12125550100", settings) is None


async def test_open_directory_defaults_to_embedded_example() -> None:
    settings = load_settings(env_file=None, environ={})
    directory = await open_directory(settings.tenants)
    try:
        assert isinstance(directory, CachingDirectory)
        found = await route(directory, "+5511999990001", settings.tenants)
        assert found is not None and found.tenant.slug == "demo"
        assert await route(directory, "+15550000000", settings.tenants) is None
        assert await directory.reload() is True
    finally:
        await directory.close()


async def test_open_directory_names_missing_settings() -> None:
    with pytest.raises(DirectoryConfigError, match="DATABASE_URL"):
        await open_directory(TenantSettings(backend="postgres"))
    with pytest.raises(DirectoryConfigError, match="SUPABASE_URL"):
        await open_directory(TenantSettings(backend="supabase"))


@pytest.mark.parametrize("size", [21, 257, 40_000])
async def test_overlong_number_is_unknown_even_with_a_default_tenant(directory: FileDirectory,
                                                                     size: int) -> None:
    settings = TenantSettings(unknown_number="default", default_tenant="fallback")
    found = await route(directory, "1" * size, settings)
    if size <= 256:  # not a number, but short enough to be kept: the default tenant takes it
        assert found is not None and found.match is MatchKind.DEFAULT
        assert len(found.number) == size
    else:
        assert found is None
    assert await route(directory, "1" * size, TenantSettings()) is None
