from __future__ import annotations

import base64
import json

from sip import realtime as rt
from tenants.config import AudioMode, NoiseSuppression, SemanticVad, ServerVad, TenantConfig, TransferTarget


def tenant(**kw: object) -> TenantConfig:
    base: dict[str, object] = {"tenant_id": "t1", "slug": "demo"}
    base.update(kw)
    return TenantConfig.model_validate(base)


def test_ga_session_update_shape() -> None:
    t = tenant(
        instructions="Be brief.",
        voice="cedar",
        speed=1.1,
        language="pt",
        turn_detection=ServerVad(threshold=0.6, prefix_padding_ms=200, silence_duration_ms=400,
                                 interrupt_response=True),
    )
    ev = rt.session_update(t, model="gpt-realtime")
    assert ev["type"] == "session.update"
    s = ev["session"]
    assert s["type"] == "realtime" and s["model"] == "gpt-realtime"
    assert s["output_modalities"] == ["audio"]
    assert s["instructions"] == "Be brief."
    assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert s["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "cedar", "speed": 1.1}
    td = s["audio"]["input"]["turn_detection"]
    assert td == {"type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 200, "silence_duration_ms": 400,
                  "create_response": True, "interrupt_response": True}
    assert s["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe", "language": "pt"}
    assert s["audio"]["input"]["noise_reduction"] is None
    assert "tools" not in s
    json.dumps(ev)  # serialisable as is


def test_passthrough_model_noise_and_semantic_vad() -> None:
    t = tenant(audio_mode=AudioMode.PASSTHROUGH, noise_suppression=NoiseSuppression.MODEL,
               model_noise_reduction="far_field", turn_detection=SemanticVad(eagerness="low"),
               transcription=False)
    s = rt.session_update(t, model="m")["session"]
    assert s["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert s["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert s["audio"]["input"]["noise_reduction"] == {"type": "far_field"}
    assert s["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
    assert s["audio"]["input"]["turn_detection"]["eagerness"] == "low"
    assert s["audio"]["input"]["transcription"] is None


def test_beta_dialect_for_voice_live() -> None:
    t = tenant(noise_suppression=NoiseSuppression.MODEL)
    s = rt.session_update(t, model="gpt-realtime", dialect=rt.Dialect.BETA)["session"]
    assert s["input_audio_format"] == "pcm16" and s["output_audio_format"] == "pcm16"
    assert s["input_audio_noise_reduction"] == {"type": "azure_deep_noise_suppression"}
    assert "type" not in s
    assert rt.normalize_event_type("response.audio.delta") == rt.AUDIO_DELTA
    assert rt.normalize_event_type("response.audio_transcript.done") == rt.OUTPUT_TRANSCRIPT_DONE
    assert rt.normalize_event_type("something.new") == "something.new"


def test_tools_and_small_events() -> None:
    t = tenant(transfer_targets=[TransferTarget(name="sales", destination="1001")])
    tools = (rt.ToolSpec("end_call", "hang up"),)
    s = rt.session_update(t, model="m", tools=tools)["session"]
    assert s["tools"][0]["type"] == "function" and s["tools"][0]["name"] == "end_call"
    assert s["tool_choice"] == "auto"
    assert json.loads(rt.append_audio_json("QUJD")) == {"type": "input_audio_buffer.append", "audio": "QUJD"}
    assert json.loads(rt.append_audio_message(b"ABC")) == {"type": "input_audio_buffer.append", "audio": "QUJD"}
    audio = bytes(range(256)) * 4
    assert rt.append_audio_message(audio) == rt.append_audio_json(base64.b64encode(audio).decode()).encode()
    assert rt.truncate("item_1", -5)["audio_end_ms"] == 0
    assert rt.truncate("item_1", 1234.9) == {"type": "conversation.item.truncate", "item_id": "item_1",
                                             "content_index": 0, "audio_end_ms": 1234}
    out = rt.function_output("call_1", {"ok": True})
    assert json.loads(out["item"]["output"]) == {"ok": True}
