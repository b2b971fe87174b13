"""A tenant's evaluation, simulator cues and keypad policy: in YAML, in PostgreSQL (columns added
by the migrations) and through Supabase's REST interface, read alike."""

from __future__ import annotations

import json

import asyncpg
import pytest

from tenants.config import TenantError, parse_tenant
from tenants.file import TenantFileError, parse_tenants_yaml
from tenants.postgres import PostgresDirectory, import_tenants, migrate
from tenants.supabase import SupabaseDirectory
from tests.postgrest_server import PostgrestServer

pytestmark = pytest.mark.timeout(120)

YAML = """
tenants:
  - slug: clinic
    numbers: ["+5511999990401"]
    dtmf_during_response: interrupt
    evaluation:
      enabled: true
      model: gpt-4.1-mini
      language: pt
      instructions: Marca consultas.
      criteria:
        - {name: cordialidade, description: Cumprimenta e agradece, weight: 2}
        - {name: resolucao, weight: 1}
    simulator:
      actions:
        - {tool: end_call, after_turn: 2, arguments: {reason: done}}
        - {tool: transfer_call, on_digit: "0", arguments: {target: recepcao}}
        - {tool: end_call, on_silence_seconds: 8}
  - slug: plain
    numbers: ["+5511999990402"]
"""


def test_yaml_fields_and_defaults():
    table = parse_tenants_yaml(YAML)
    clinic, plain = table.tenants
    assert clinic.evaluation.enabled and clinic.evaluation.language == "pt"
    assert [(c.name, c.weight) for c in clinic.evaluation.criteria] == [("cordialidade", 2.0), ("resolucao", 1.0)]
    assert clinic.dtmf_during_response == "interrupt"
    assert clinic.simulator is not None
    assert [a.tool for a in clinic.simulator.actions] == ["end_call", "transfer_call", "end_call"]
    assert json.loads(clinic.simulator.to_query())["actions"][1] == {
        "tool": "transfer_call", "arguments": {"target": "recepcao"}, "on_digit": "0"}
    assert plain.evaluation.enabled is False and plain.simulator is None
    assert plain.dtmf_during_response == "queue"


@pytest.mark.parametrize(("record", "message"), [
    ({"evaluation": {"enabled": True, "criteria": [{"name": "a"}, {"name": "a"}]}}, "unique: a"),
    ({"evaluation": {"enabled": True, "criteria": [{"name": "a", "weight": 0}]}}, "weight"),
    ({"evaluation": {"enabeld": True}}, "unknown key 'evaluation.enabeld'"),
    ({"simulator": {"actions": [{"tool": "end_call"}]}}, "exactly one of"),
    ({"simulator": {"actions": [{"tool": "end_call", "after_turn": 1, "on_digit": "5"}]}}, "exactly one of"),
    ({"simulator": {"actions": [{"tool": "end_call", "on_digit": "55"}]}}, "on_digit"),
    ({"dtmf_during_response": "ignore"}, "dtmf_during_response"),
])
def test_invalid_values_name_the_key(record, message):
    with pytest.raises(TenantError, match=message):
        parse_tenant({"tenant_id": "t", "slug": "t", **record})
    with pytest.raises(TenantFileError):
        parse_tenants_yaml(json.dumps({"tenants": [{"slug": "t", **record}]}))


async def test_postgres_and_supabase_read_what_was_imported(pg_database: str) -> None:
    report = await migrate(pg_database)
    assert "004_evaluation.sql" in report.applied
    table = parse_tenants_yaml(YAML)
    await import_tenants(pg_database, table)
    conn = await asyncpg.connect(pg_database)
    try:
        # Stored in the columns the migration added, not in the catch-all settings.
        row = await conn.fetchrow(
            "SELECT cc.evaluation::text, cc.simulator::text, cc.dtmf_during_response, cc.settings::text"
            " FROM client_configurations cc JOIN clients c USING (client_id) WHERE c.slug = 'clinic'")
        assert json.loads(row[0])["criteria"][0]["name"] == "cordialidade"
        assert json.loads(row[1])["actions"][0]["after_turn"] == 2
        assert row[2] == "interrupt"
        assert "evaluation" not in (json.loads(row[3]) if row[3] else {})
        # A row another tool edits by hand is read the same way.
        await conn.execute(
            "UPDATE client_configurations SET evaluation = $1::jsonb FROM clients c"
            " WHERE c.client_id = client_configurations.client_id AND c.slug = 'plain'",
            json.dumps({"enabled": True, "criteria": [{"name": "tone", "weight": 3}]}))
    finally:
        await conn.close()
    expected = table.tenants[0]
    pg = await PostgresDirectory.open(pg_database)
    try:
        clinic = await pg.resolve("+5511999990401")
        assert clinic is not None
        assert clinic.evaluation == expected.evaluation
        assert clinic.simulator == expected.simulator
        assert clinic.dtmf_during_response == "interrupt"
        plain = await pg.resolve("+5511999990402")
        assert plain is not None and plain.evaluation.enabled
        assert [(c.name, c.weight) for c in plain.evaluation.criteria] == [("tone", 3.0)]
    finally:
        await pg.close()
    async with PostgrestServer(pg_database, "service-key") as rest:
        supa = await SupabaseDirectory.open(rest.url, "service-key", "BR")
        try:
            clinic = await supa.resolve("+5511999990401")
            assert clinic is not None and clinic.evaluation == expected.evaluation
            assert clinic.simulator == expected.simulator
            plain = await supa.resolve("+5511999990402")
            assert plain is not None and [c.name for c in plain.evaluation.criteria] == ["tone"]
        finally:
            await supa.close()
