"""What each realtime provider's session can take of a tenant's settings.

Pure. ``setting_problems(tenant, provider)`` lists the tenant's settings that the provider's
session has no place for. A problem either refuses the tenant (``refuses``: the setting would
change what callers hear or how turns are taken, and the provider cannot honour it) or is only
reported (the setting is dropped and the provider's own behaviour applies). Settings that have an
equivalent are mapped by the session builders instead and are not problems:

    tenant setting                       OpenAI (GA)                    Voice Live
    Azure neural voice name / object     refused                        voice object
    OpenAI voice name                    voice                          {"type": "openai"}
    azure_semantic_vad(_en|_multiling.)  semantic_vad (eagerness auto)  as is
      its Azure-only options             refused
    semantic_vad                         as is                          azure_semantic_vad
    server_vad idle_timeout_ms           as is                          refused
    server_vad end_of_utterance, auto_   refused                        as is
    truncate
    azure_deep_noise_suppression         near_field (reported)          as is
    echo_cancellation                    refused                        server_echo_cancellation
    voice_temperature                    refused                        voice temperature
    temperature                          reported (no GA field)         temperature
    speed                                audio.output.speed             voice rate (Azure voices;
                                                                        reported for OpenAI voices)
"""

from __future__ import annotations

from dataclasses import dataclass

from sip.voicelive import OPENAI_VOICES, is_azure_voice
from tenants.config import AzureSemanticVad, ServerVad, TenantConfig, VoiceSpec

VOICE_LIVE = "azure_voicelive"


@dataclass(frozen=True, slots=True)
class SettingProblem:
    field: str
    reason: str
    refuses: bool = True

    def describe(self, slug: str, provider: str) -> str:
        effect = "refused" if self.refuses else "ignored"
        return f"tenant {slug}: {self.field}: {self.reason} on {provider} ({effect})"


def _explicit(tenant: TenantConfig, name: str) -> bool:
    return name in tenant.model_fields_set


def setting_problems(tenant: TenantConfig, provider: str) -> list[SettingProblem]:
    """Problems of ``tenant``'s settings with ``provider`` (a resolved provider name)."""
    if provider == VOICE_LIVE:
        return _voice_live_problems(tenant)
    return _openai_problems(tenant)


def _openai_problems(tenant: TenantConfig) -> list[SettingProblem]:
    problems: list[SettingProblem] = []
    voice = tenant.voice
    if isinstance(voice, VoiceSpec):
        if voice.type != "openai":
            problems.append(SettingProblem("voice", f"{voice.type} voice {voice.name!r} is an Azure voice"))
        elif voice.name not in OPENAI_VOICES:
            problems.append(SettingProblem("voice", f"unknown OpenAI voice {voice.name!r}"))
    elif voice not in OPENAI_VOICES:
        kind = "an Azure neural voice" if is_azure_voice(voice) else "not an OpenAI voice"
        problems.append(SettingProblem("voice", f"{voice!r} is {kind}"))
    td = tenant.turn_detection
    if isinstance(td, AzureSemanticVad):
        extra = [k for k in ("threshold", "prefix_padding_ms", "silence_duration_ms", "speech_duration_ms",
                             "remove_filler_words", "languages", "end_of_utterance_detection",
                             "auto_truncate") if getattr(td, k) is not None]
        if td.type == "azure_semantic_vad_en":
            problems.append(SettingProblem("turn_detection.type", "azure_semantic_vad_en has no "
                                           "equivalent (semantic_vad detects every language)",
                                           refuses=False))
        for key in extra:
            problems.append(SettingProblem(f"turn_detection.{key}", f"{td.type} option {key} has no "
                                           "equivalent in semantic_vad"))
    if isinstance(td, ServerVad):
        for key in ("end_of_utterance_detection", "auto_truncate"):
            if getattr(td, key) is not None:
                problems.append(SettingProblem(f"turn_detection.{key}", "a Voice Live option"))
    if tenant.model_noise_reduction == "azure_deep_noise_suppression":
        problems.append(SettingProblem("model_noise_reduction", "azure_deep_noise_suppression is "
                                       "Voice Live's; near_field is used", refuses=False))
    if tenant.echo_cancellation:
        problems.append(SettingProblem("echo_cancellation", "no server echo cancellation"))
    if tenant.voice_temperature is not None:
        problems.append(SettingProblem("voice_temperature", "voices take no temperature"))
    if _explicit(tenant, "temperature"):
        problems.append(SettingProblem("temperature", "the GA session has no temperature",
                                       refuses=False))
    return problems


def _voice_live_problems(tenant: TenantConfig) -> list[SettingProblem]:
    problems: list[SettingProblem] = []
    td = tenant.turn_detection
    if isinstance(td, ServerVad) and td.idle_timeout_ms is not None:
        problems.append(SettingProblem("turn_detection.idle_timeout_ms", "server_vad takes no idle timeout"))
    voice = tenant.voice
    openai_voice = (isinstance(voice, VoiceSpec) and voice.type == "openai") or (
        isinstance(voice, str) and not is_azure_voice(voice))
    if isinstance(voice, str) and openai_voice and voice not in OPENAI_VOICES:
        problems.append(SettingProblem("voice", f"{voice!r} is neither an OpenAI voice nor an Azure "
                                       "neural voice name"))
    if openai_voice and tenant.speed != 1.0:
        problems.append(SettingProblem("speed", "OpenAI voices take no rate", refuses=False))
    if openai_voice and tenant.voice_temperature is not None:
        problems.append(SettingProblem("voice_temperature", "OpenAI voices take no temperature",
                                       refuses=False))
    return problems


def refusing(problems: list[SettingProblem]) -> list[SettingProblem]:
    return [p for p in problems if p.refuses]
