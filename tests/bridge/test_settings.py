from __future__ import annotations

from pathlib import Path

import pytest

from bridge.settings import ConfigError, ModelProvider, load_settings


def test_defaults_use_simulator_without_key() -> None:
    s = load_settings(env_file=None, environ={})
    assert s.resolved_provider is ModelProvider.SIMULATOR
    assert s.audiosocket.port == 9092 and s.agi.port == 4573 and s.http.port == 8000


def test_legacy_variable_names() -> None:
    env = {
        "OPENAI_API_KEY": "sk-test",
        "PORT": "8100",
        "LOG_LEVEL": "debug",
        "APP_ENV": "production",
        "SUPABASE_URL": "http://127.0.0.1:9",
        "SUPABASE_SERVICE_ROLE_KEY": "service",
        "AZURE_VOICELIVE_MODEL": "gpt-realtime-mini",
    }
    s = load_settings(env_file=None, environ=env)
    assert s.resolved_provider is ModelProvider.OPENAI
    assert s.model.api_key is not None and s.model.api_key.get_secret_value() == "sk-test"
    assert "sk-test" not in repr(s)
    assert s.http.port == 8100 and s.log_level == "DEBUG" and s.app_env.value == "production"
    assert s.tenants.supabase_url == "http://127.0.0.1:9"
    assert s.model.voicelive_model == "gpt-realtime-mini"


def test_yaml_file_and_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "callbridge.yaml"
    cfg.write_text("audiosocket:\n  port: 9100\nhttp:\n  port: 8200\nlimits:\n  max_calls: 7\n")
    monkeypatch.setenv("CALLBRIDGE_AUDIOSOCKET__PORT", "9200")
    s = load_settings(cfg, env_file=None, environ={})
    assert s.audiosocket.port == 9200  # environment beats the file
    assert s.http.port == 8200 and s.limits.max_calls == 7


def test_invalid_setting_names_it(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("audiosocket:\n  port: 70000\n")
    with pytest.raises(ConfigError, match=r"audiosocket\.port"):
        load_settings(cfg, env_file=None, environ={})
    with pytest.raises(ConfigError, match=r"http\.port"):
        load_settings(env_file=None, environ={"PORT": "eighty"})
    cfg.write_text("audiosockt:\n  port: 1\n")
    with pytest.raises(ConfigError, match="audiosockt"):
        load_settings(cfg, env_file=None, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml", env_file=None, environ={})


def test_dotenv_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("CALLBRIDGE_LIMITS__DRAIN_TIMEOUT=12\n")
    s = load_settings(env_file=env_file, environ={})
    assert s.limits.drain_timeout == 12


def test_dotenv_with_legacy_names(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("OPENAI_API_KEY=sk-dot\nPORT=8300\nUNRELATED=1\n")
    s = load_settings(env_file=env_file, environ={})
    assert s.model.api_key is not None and s.model.api_key.get_secret_value() == "sk-dot"
    assert s.http.port == 8300
    # The process environment beats the .env file.
    assert load_settings(env_file=env_file, environ={"PORT": "9000"}).http.port == 9000


def test_listener_allow_lists(monkeypatch):
    import ipaddress

    defaults = load_settings(env_file=None, environ={})
    for listener in (defaults.http, defaults.audiosocket, defaults.agi):
        assert [str(n) for n in listener.allow_from] == [
            "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]
    monkeypatch.setenv("CALLBRIDGE_AUDIOSOCKET__ALLOW_FROM", "192.168.10.5, 10.20.0.0/16")
    monkeypatch.setenv("CALLBRIDGE_AGI__ALLOW_FROM", '["192.168.10.5"]')
    settings = load_settings(env_file=None)
    assert settings.audiosocket.allow_from == [ipaddress.ip_network("192.168.10.5/32"),
                                               ipaddress.ip_network("10.20.0.0/16")]
    assert settings.agi.allow_from == [ipaddress.ip_network("192.168.10.5/32")]
    monkeypatch.setenv("CALLBRIDGE_AGI__ALLOW_FROM", "pbx.example.com")
    with pytest.raises(ConfigError, match=r"agi\.allow_from.*not an IP network"):
        load_settings(env_file=None)


def test_secret_values_are_every_secret_configured():
    settings = load_settings(env_file=None, environ={"OPENAI_API_KEY": "sk-one"},
                             ops={"admin_token": "admin-two", "tenant_tokens": {"acme": "three"},
                                  "link_secrets": ["four"]},
                             security={"twilio_auth_tokens": ["five"]}, ari={"password": "six"})
    assert sorted(settings.secret_values()) == sorted(["sk-one", "admin-two", "three", "four", "five", "six"])
