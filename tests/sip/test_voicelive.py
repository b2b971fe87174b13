"""Voice Live and OpenAI session.update shapes built from tenant settings, and what each provider
cannot take (sip.voicelive, sip.realtime, sip.capabilities)."""

from __future__ import annotations

import pytest

from sip import realtime as rt
from sip import voicelive as vl
from sip.capabilities import setting_problems
from tenants.config import TenantError, parse_tenant


def tenant(**fields):
    return parse_tenant({"tenant_id": "t", "slug": "t", **fields})


@pytest.mark.parametrize(("voice", "expected"), [
    ("pt-BR-FranciscaNeural", {"type": "azure-standard", "name": "pt-BR-FranciscaNeural"}),
    ("en-US-Ava:DragonHDLatestNeural", {"type": "azure-standard", "name": "en-US-Ava:DragonHDLatestNeural"}),
    ("zh-CN-henan-YundengNeural", {"type": "azure-standard", "name": "zh-CN-henan-YundengNeural"}),
    ("marin", {"type": "openai", "name": "marin"}),
    ({"type": "azure-custom", "name": "Brand", "endpoint_id": "e1"},
     {"type": "azure-custom", "name": "Brand", "endpoint_id": "e1"}),
])
def test_voices_become_voice_objects(voice, expected) -> None:
    assert vl.voice_json(tenant(voice=voice)) == expected


def test_rate_and_voice_temperature_on_azure_voices_only() -> None:
    azure = tenant(voice="pt-BR-FranciscaNeural", speed=1.25, voice_temperature=0.4)
    assert vl.voice_json(azure) == {"type": "azure-standard", "name": "pt-BR-FranciscaNeural",
                                    "temperature": 0.4, "rate": "1.25"}
    assert vl.voice_json(tenant(voice="alloy", speed=1.25)) == {"type": "openai", "name": "alloy"}
    assert [p.field for p in setting_problems(tenant(voice="alloy", speed=1.25), "azure_voicelive")] == ["speed"]


def test_voice_live_session_of_every_setting() -> None:
    t = tenant(
        voice="pt-BR-FranciscaNeural", instructions="Olá", temperature=0.7, max_output_tokens=500,
        language="pt", transcription_model="azure-speech", noise_suppression="model",
        echo_cancellation=True, audio_mode="passthrough",
        turn_detection={"type": "azure_semantic_vad_multilingual", "threshold": 0.4, "prefix_padding_ms": 100,
                        "silence_duration_ms": 300, "speech_duration_ms": 80, "remove_filler_words": True,
                        "languages": ["pt-BR", "en-US"], "auto_truncate": True, "interrupt_response": False,
                        "create_response": False,
                        "end_of_utterance_detection": {"model": "semantic_detection_v1_multilingual",
                                                       "threshold_level": "medium", "timeout_ms": 1500}},
    )
    update = rt.session_update(t, model="gpt-realtime", dialect=rt.Dialect.BETA)
    assert update == {"type": "session.update", "session": {
        "modalities": ["text", "audio"], "instructions": "Olá",
        "voice": {"type": "azure-standard", "name": "pt-BR-FranciscaNeural"},
        "input_audio_format": "g711_ulaw", "output_audio_format": "g711_ulaw",
        "turn_detection": {"type": "azure_semantic_vad_multilingual", "threshold": 0.4, "prefix_padding_ms": 100,
                           "silence_duration_ms": 300, "speech_duration_ms": 80, "remove_filler_words": True,
                           "languages": ["pt-BR", "en-US"],
                           "end_of_utterance_detection": {"model": "semantic_detection_v1_multilingual",
                                                          "threshold_level": "medium", "timeout_ms": 1500},
                           "auto_truncate": True, "create_response": False, "interrupt_response": False},
        "temperature": 0.7, "max_response_output_tokens": 500,
        "input_audio_noise_reduction": {"type": "azure_deep_noise_suppression"},
        "input_audio_echo_cancellation": {"type": "server_echo_cancellation"},
        "input_audio_transcription": {"model": "azure-speech", "language": "pt"},
    }}


def test_openai_maps_what_it_has() -> None:
    t = tenant(turn_detection={"type": "azure_semantic_vad", "interrupt_response": False},
               noise_suppression="model", model_noise_reduction="azure_deep_noise_suppression", voice="cedar")
    session = rt.session_update(t, model="gpt-realtime")["session"]
    assert session["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad", "eagerness": "auto", "create_response": True, "interrupt_response": False}
    assert session["audio"]["input"]["noise_reduction"] == {"type": "near_field"}
    assert session["audio"]["output"]["voice"] == "cedar"
    problems = setting_problems(t, "openai")
    assert [(p.field, p.refuses) for p in problems] == [("model_noise_reduction", False)]


def test_openai_refuses_what_it_has_not() -> None:
    t = tenant(voice="pt-BR-FranciscaNeural", echo_cancellation=True, voice_temperature=0.3, temperature=0.9,
               turn_detection={"type": "server_vad", "auto_truncate": True})
    problems = {p.field: p.refuses for p in setting_problems(t, "openai")}
    assert problems == {"voice": True, "echo_cancellation": True, "voice_temperature": True,
                        "turn_detection.auto_truncate": True, "temperature": False}
    # With the provider's defaults accepted, the voice is left to the service.
    assert "voice" not in rt.session_update(t, model="m")["session"]["audio"]["output"]
    assert setting_problems(t, "azure_voicelive") == []


def test_voice_live_refuses_the_idle_timeout() -> None:
    t = tenant(turn_detection={"type": "server_vad", "idle_timeout_ms": 6000})
    assert [p.field for p in setting_problems(t, "azure_voicelive")] == ["turn_detection.idle_timeout_ms"]
    assert setting_problems(t, "openai") == []


def test_unknown_turn_detection_type_is_a_tenant_error() -> None:
    with pytest.raises(TenantError, match="turn_detection"):
        tenant(turn_detection={"type": "azure_magic_vad"})
