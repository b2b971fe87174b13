"""Tenants whose settings the model provider cannot take are named before any call:
``callbridge tenants validate`` (a file or the configured store) and ``callbridge check``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bridge.cli.check import CheckFailed, check_tenant_store
from bridge.settings import load_settings
from tests.bridge.cli.test_tenants import run

TENANTS = """version: 1
tenants:
  - slug: clinic
    numbers: ["+5511988880001"]
    voice: pt-BR-FranciscaNeural
    echo_cancellation: true
    turn_detection: {type: azure_semantic_vad, remove_filler_words: true}
  - slug: lenient
    numbers: ["+5511988880003"]
    voice: pt-BR-AntonioNeural
    unsupported_settings: provider_defaults
  - slug: shop
    numbers: ["+5511988880002"]
    voice: alloy
    turn_detection: {type: azure_semantic_vad_multilingual}
"""


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("CALLBRIDGE_", "SUPABASE_", "AZURE_", "OPENAI_")) or name in {"DATABASE_URL", "APP_ENV"}:
            monkeypatch.delenv(name)


def _files(tmp_path: Path, voicelive: bool) -> tuple[Path, Path]:
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(TENANTS)
    config = tmp_path / "callbridge.yaml"
    model = "model: {voicelive_endpoint: 'https://contoso.services.ai.azure.com', voicelive_api_key: k}\n"
    config.write_text(f"tenants: {{file: '{tenants}'}}\n" + (model if voicelive else ""))
    return tenants, config


def test_validate_names_tenant_field_and_reason_for_the_openai_dialect(tmp_path, capsys) -> None:
    tenants, config = _files(tmp_path, voicelive=False)
    assert run(["-c", str(config), "tenants", "validate", str(tenants)]) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert "tenant clinic: voice: 'pt-BR-FranciscaNeural' is an Azure neural voice on simulator (refused)" in err
    assert "tenant clinic: echo_cancellation: no server echo cancellation on simulator (refused)" in err
    assert ("tenant clinic: turn_detection.remove_filler_words: azure_semantic_vad option remove_filler_words "
            "has no equivalent in semantic_vad on simulator (refused)") in err
    # The tenant that accepts the provider's defaults stays in service, and says so.
    assert "tenant lenient: voice: 'pt-BR-AntonioNeural' is an Azure neural voice on simulator " \
           "(provider default: unsupported_settings is provider_defaults)" in err
    # azure_semantic_vad_multilingual maps to semantic_vad: not a problem.
    assert "tenant shop" not in err
    assert "invalid for the provider: clinic" in captured.out


def test_the_same_tenants_are_valid_on_voice_live(tmp_path, capsys) -> None:
    tenants, config = _files(tmp_path, voicelive=True)
    assert run(["-c", str(config), "tenants", "validate", str(tenants)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "3 tenant(s), 3 number(s) and pattern(s): valid" in captured.out


def test_validate_without_a_file_reads_the_configured_store(tmp_path, capsys) -> None:
    _, config = _files(tmp_path, voicelive=False)
    assert run(["-c", str(config), "tenants", "validate"]) == 1
    captured = capsys.readouterr()
    assert "tenant store file: tenant clinic: voice:" in captured.err
    assert "tenant store file: 3 tenant(s)" in captured.out


async def test_check_fails_naming_the_tenant(tmp_path) -> None:
    _, config = _files(tmp_path, voicelive=False)
    settings = load_settings(config, env_file=None, environ={})
    with pytest.raises(CheckFailed) as info:
        await check_tenant_store(settings)
    assert "file backend: 3 setting(s) the provider cannot take: tenant clinic: voice:" in str(info.value)
    _, config = _files(tmp_path, voicelive=True)
    detail = await check_tenant_store(load_settings(config, env_file=None, environ={}))
    assert detail == "file backend: 3 active tenant(s) of 3, 3 number(s) and pattern(s)"
