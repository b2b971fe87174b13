"""The Voice Live deployments' client_configurations columns read as tenant settings."""

from __future__ import annotations

import logging

import pytest

from tenants.schema import NoteReporter, Notes, TenantRecord, tenant_from_record


def _tenant(configuration, notes=None):
    record = TenantRecord({"client_id": "c1", "client_name": "Clínica"}, configuration, ("+5511988880001",))
    return tenant_from_record(record, "BR", notes)


def test_audio_column() -> None:
    notes = Notes()
    t = _tenant({"voice": "pt-BR-FranciscaNeural", "speech_rate": 1.1, "temperature": 0.7,
                 "audio": {"echo_cancellation": True, "noise_reduction": True},
                 "turn_detection": {"type": "azure_semantic_vad", "remove_filler_words": True}}, notes)
    assert t.echo_cancellation is True and t.noise_suppression.value == "model"
    assert t.model_noise_reduction is None  # the provider's own: deep noise suppression on Voice Live
    assert t.speed == 1.1 and t.temperature == 0.7 and t.voice_name == "pt-BR-FranciscaNeural"
    assert t.turn_detection.type == "azure_semantic_vad"
    assert notes.problems == [] and notes.ignored_columns == set()


@pytest.mark.parametrize(("audio", "suppression", "model_nr", "echo"), [
    ({"noise_reduction": {"type": "far_field"}}, "model", "far_field", False),
    ({"noise_reduction": "azure_deep_noise_suppression"}, "model", "azure_deep_noise_suppression", False),
    # No server-side suppression asked for: the tenant default (the daemon's own chain) applies.
    ({"noise_reduction": False, "echo_cancellation": False}, "adaptive", None, False),
    ({"echo_cancellation": {"type": "server_echo_cancellation"}}, "adaptive", None, True),
    ('{"echo_cancellation": true}', "adaptive", None, True),  # a json column stored as text
])
def test_audio_column_shapes(audio, suppression, model_nr, echo) -> None:
    t = _tenant({"audio": audio})
    assert (t.noise_suppression.value, t.model_noise_reduction, t.echo_cancellation) == (suppression, model_nr, echo)


def test_audio_keys_that_are_not_settings_are_reported_once(caplog) -> None:
    reporter = NoteReporter(logging.getLogger("tenants.test"))
    for _ in range(3):
        notes = Notes()
        _tenant({"audio": {"echo_cancellation": True, "auto_gain": True}, "top_k": 5}, notes)
        reporter.report(notes)
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("client clinica: client_configurations.audio.auto_gain is not a tenant setting; "
                          "ignored") == 1
    assert messages.count("column client_configurations.top_k is not a tenant setting; ignored") == 1
