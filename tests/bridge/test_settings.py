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


def test_unknown_names_are_errors_with_the_closest_valid_one(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "callbridge.yaml"
    cfg.write_text("recording:\n  enabeld: false\n  s3:\n    bucket: calls\n    regoin: eu\n")
    with pytest.raises(ConfigError) as failure:
        load_settings(cfg, env_file=None, environ={})
    message = str(failure.value)
    assert "recording.enabeld (did you mean recording.enabled?)" in message
    assert "recording.s3.regoin (did you mean recording.s3.region?)" in message
    cfg.write_text("tenants:\n  backnd: file\n")
    with pytest.raises(ConfigError, match=r"tenants\.backnd \(did you mean tenants\.backend\?\)"):
        load_settings(cfg, env_file=None, environ={})
    cfg.write_text("zzzz: 1\n")
    with pytest.raises(ConfigError, match=r"unknown setting zzzz \(remove or rename it\)"):
        load_settings(cfg, env_file=None, environ={})
    # A variable below a single value is no section.
    monkeypatch.setenv("CALLBRIDGE_LOG_LEVEL__X", "1")
    with pytest.raises(ConfigError, match="CALLBRIDGE_LOG_LEVEL__X: log_level is a single value"):
        load_settings(env_file=None, environ={})


def test_only_callbridge_variables_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    # Names of existing deployments and of other programs are read by name or ignored, never errors.
    env = {"DATABASE_URL": "postgresql://127.0.0.1/x", "SUPABASE_URL": "http://127.0.0.1:9",
           "AZURE_OPENAI_ENDPOINT": "https://x.openai.azure.com", "OPENAI_API_KEY": "sk-x",
           "APP_ENV": "staging", "AZURE_SOMETHING_ELSE": "1", "UNRELATED": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # The command line's own variables, a mapping setting's keys and whole sections as JSON.
    monkeypatch.setenv("CALLBRIDGE_OPS_TOKEN", "t")
    monkeypatch.setenv("CALLBRIDGE_OPS_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("CALLBRIDGE_OPS__TENANT_TOKENS__ACME", "acme-token")
    monkeypatch.setenv("CALLBRIDGE_METRICS", '{"tenant_labels": true}')
    s = load_settings(env_file=None, environ=env)
    assert s.app_env.value == "staging" and s.tenants.supabase_url == "http://127.0.0.1:9"
    assert s.ops.tenant_tokens["acme"].get_secret_value() == "acme-token"
    assert s.metrics.tenant_labels is True
    monkeypatch.setenv("CALLBRIDGE_METRICS", '{"tenant_lables": true}')
    with pytest.raises(ConfigError, match=r"metrics\.tenant_lables \(did you mean metrics\.tenant_labels\?\)"):
        load_settings(env_file=None, environ=env)


def test_unknown_key_in_a_list_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLBRIDGE_WEBRTC__ICE_SERVERS", '[{"urls": ["stun:127.0.0.1"], "usernme": "x"}]')
    with pytest.raises(ConfigError, match=r"webrtc\.ice_servers\.0\.usernme \(did you mean "
                                          r"webrtc\.ice_servers\.username\?\)"):
        load_settings(env_file=None, environ={})
    monkeypatch.setenv("CALLBRIDGE_WEBRTC__ICE_SERVERS", '[{"urls": ["stun:127.0.0.1"]}]')
    assert load_settings(env_file=None, environ={}).webrtc.ice_servers[0].urls == ["stun:127.0.0.1"]
    monkeypatch.setenv("CALLBRIDGE_WEBRTC__ICE_SERVERS__URLS", "stun:127.0.0.1")
    with pytest.raises(ConfigError, match=r"webrtc\.ice_servers is a single value"):
        load_settings(env_file=None, environ={})


# ----------------------------------------------------------------------------- Voice Live deployments


@pytest.mark.parametrize(("environ", "backend"), [
    ({}, "file"),
    ({"SUPABASE_URL": "https://abc.supabase.co", "SUPABASE_SERVICE_ROLE_KEY": "k"}, "supabase"),
    ({"SUPABASE_URL": "https://abc.supabase.co"}, "file"),  # no key: not a usable store
    ({"DATABASE_URL": "postgresql://u@127.0.0.1/db"}, "postgres"),
    ({"SUPABASE_URL": "https://abc.supabase.co", "SUPABASE_SERVICE_ROLE_KEY": "k",
      "DATABASE_URL": "postgresql://u@127.0.0.1/db"}, "supabase"),
    ({"SUPABASE_URL": "https://abc.supabase.co", "SUPABASE_SERVICE_ROLE_KEY": "k",
      "CALLBRIDGE_TENANTS__BACKEND": "file"}, "file"),  # a named backend wins
])
def test_the_store_follows_the_credentials_when_none_is_named(environ, backend, monkeypatch) -> None:
    for name, value in environ.items():
        if name.startswith("CALLBRIDGE_"):
            monkeypatch.setenv(name, value)
    s = load_settings(env_file=None, environ={k: v for k, v in environ.items() if not k.startswith("CALLBRIDGE_")})
    assert s.tenants.backend.value == backend


@pytest.mark.parametrize(("environ", "level", "json_lines"), [
    ({}, "INFO", False),
    ({"APP_ENV": "development"}, "INFO", False),
    ({"APP_ENV": "staging"}, "INFO", True),
    ({"APP_ENV": "production"}, "WARNING", True),
    ({"APP_ENV": "production", "LOG_LEVEL": "info"}, "INFO", True),
])
def test_app_env_sets_the_log_defaults(environ, level, json_lines) -> None:
    s = load_settings(env_file=None, environ=environ)
    assert (s.log_level, s.log_json) == (level, json_lines)


def test_voice_live_endpoint_without_key_is_voice_live() -> None:
    s = load_settings(env_file=None, environ={"AZURE_VOICELIVE_ENDPOINT": "https://r.services.ai.azure.com",
                                              "AZURE_VOICELIVE_API_VERSION": "2026-04-10"})
    assert s.resolved_provider is ModelProvider.AZURE_VOICELIVE and s.model.voicelive_api_key is None
    assert s.model.voicelive_api_version == "2026-04-10"


def test_roleplay_recording_variables() -> None:
    s = load_settings(env_file=None, environ={
        "RECORDING_ENABLED": "true", "AWS_BUCKET_NAME": "roleplay-calls", "AWS_REGION": "sa-east-1",
        "RECORDING_PATH_PREFIX": "calls/2026/", "AWS_ACCESS_KEY_ID": "AKIATEST",
        "AWS_SECRET_ACCESS_KEY": "wJalr-test-value"})
    assert s.recording.enabled and s.recording.storage.value == "s3"
    assert s.recording.s3 is not None
    assert (s.recording.s3.bucket, s.recording.s3.region, s.recording.s3.prefix) == (
        "roleplay-calls", "sa-east-1", "calls/2026/")
    assert s.recording.s3.access_key_id is not None and s.recording.s3.secret_access_key is not None
    assert s.recording.s3.secret_access_key.get_secret_value() == "wJalr-test-value"
    assert "wJalr-test-value" not in repr(s)
    off = load_settings(env_file=None, environ={"RECORDING_ENABLED": "false", "AWS_REGION": "sa-east-1"})
    assert not off.recording.enabled and off.recording.s3 is None and off.recording.storage.value == "local"


def test_production_refuses_the_built_in_simulator(tmp_path) -> None:
    import asyncio

    from bridge.app import Application
    from tests.conftest import loopback_settings

    settings = loopback_settings(tmp_path, app_env="production")

    async def start() -> None:
        await Application(settings).run(asyncio.get_running_loop().create_future())

    with pytest.raises(ConfigError, match="app_env is production but no model is configured"):
        asyncio.run(start())

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


def test_sip_callers_are_checked_by_source_or_digest():
    with pytest.raises(ConfigError, match=r"sip\.allowed_sources is empty and sip\.auth has no users"):
        load_settings(env_file=None, environ={}, sip={"allowed_sources": []})
    with pytest.raises(ConfigError, match=r"sip\.auth\.trusted_sources"):
        load_settings(env_file=None, environ={}, sip={"auth": {"users": [{"username": "a", "password": "b"}],
                                                            "trusted_sources": ["pbx.example.com"]}})
    settings = load_settings(env_file=None, environ={}, sip={
        "allowed_sources": [], "auth": {"users": [{"username": "pbx", "password": "seven"}],
                                        "algorithms": ["SHA-256", "MD5"]}})
    assert settings.sip.auth.users[0].username == "pbx" and "seven" in settings.secret_values()
