"""The ``ari`` and ``ami`` settings sections."""

from __future__ import annotations

import pytest

from bridge.settings import ConfigError, ExternalMediaTransport, load_settings


def test_defaults_are_off_and_secrets_hidden():
    s = load_settings(env_file=None, environ={}, ari={"password": "p4ss"}, ami={"secret": "s3cret"})
    assert not s.ari.enabled and not s.ami.enabled
    assert s.ari.transport is ExternalMediaTransport.RTP and s.ari.format == "ulaw"
    assert s.ari.fallback_context is None  # continue after Stasis()
    assert "p4ss" not in repr(s) and "s3cret" not in repr(s)


def test_environment_variables(monkeypatch):
    monkeypatch.setenv("CALLBRIDGE_ARI__ENABLED", "true")
    monkeypatch.setenv("CALLBRIDGE_ARI__TRANSPORT", "websocket")
    monkeypatch.setenv("CALLBRIDGE_ARI__FORMAT", "slin16")
    monkeypatch.setenv("CALLBRIDGE_ARI__APP", "callbridge-2")
    monkeypatch.setenv("CALLBRIDGE_AMI__REDIRECT_TRANSFERS", "1")
    s = load_settings(env_file=None, environ={})
    assert s.ari.enabled and s.ari.transport is ExternalMediaTransport.WEBSOCKET
    assert s.ari.format == "slin16" and s.ari.app == "callbridge-2" and s.ami.redirect_transfers


@pytest.mark.parametrize(
    ("ari", "message"),
    [
        ({"transport": "rtp", "format": "slin16"}, "slin16 cannot be sent back to Asterisk over RTP"),
        ({"rtp_port_min": 41000, "rtp_port_max": 40000}, "rtp_port_min must not exceed rtp_port_max"),
        ({"url": "pbx:8088"}, "url must start with http"),
        ({"app": "call bridge"}, "ari.app"),
        ({"format": "g729"}, "ari.format"),
    ],
)
def test_bad_ari_settings_are_named(ari, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(env_file=None, environ={}, ari=ari)


def test_slin16_is_fine_for_websocket_and_audiosocket():
    for transport in ("websocket", "audiosocket"):
        s = load_settings(env_file=None, environ={}, ari={"transport": transport, "format": "slin16"})
        assert s.ari.format == "slin16"
