"""The functions a call offers the model: ending the call and, where the tenant has targets, transferring it."""

from __future__ import annotations

from sip import realtime as rt
from tenants.config import TenantConfig


def call_tools(tenant: TenantConfig) -> tuple[rt.ToolSpec, ...]:
    tools = [
        rt.ToolSpec(
            "end_call",
            "Hang up the call when the conversation is finished or the caller asks to end it.",
            {"type": "object", "properties": {"reason": {"type": "string"}}, "required": []},
        )
    ]
    if tenant.transfer_targets:
        names = [t.name for t in tenant.transfer_targets]
        described = "; ".join(f"{t.name}: {t.description}" if t.description else t.name
                              for t in tenant.transfer_targets)
        tools.append(
            rt.ToolSpec(
                "transfer_call",
                f"Transfer the caller to a human. Targets: {described}.",
                {
                    "type": "object",
                    "properties": {"target": {"type": "string", "enum": names}},
                    "required": ["target"],
                },
            )
        )
    return tuple(tools)


