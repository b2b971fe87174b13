"""The dashboard and the alert rules are built on metric names the daemon really exports, and no
metric family can carry a per-call label."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from bridge.ops.metrics import OTHER_TENANT, Metrics, TenantLabels

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "callbridge.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"

# Label names allowed on callbridge families: each takes values from a small fixed set (the tenant
# slug only while metrics.tenant_labels bounds it; version/python are the build's; registration is
# the position of a configured SIP registration).
ALLOWED_LABELS = {"transport", "outcome", "direction", "reason", "provider", "kind", "result", "tenant",
                  "version", "python", "generation", "registration",
                  "listener"}  # listener: http, audiosocket, agi
PER_CALL_HINTS = ("call", "uuid", "caller", "dialled", "dialed", "number", "phone", "channel", "session",
                  "ani", "dnis", "did")

_NAME = re.compile(r"\bcallbridge_[a-z0-9_]+\b")


def _families(metrics: Metrics) -> list[MetricWrapperBase]:
    return [m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name the registry can expose, children created or not."""
    names: set[str] = set()
    for family in registry.collect():
        base = family.name
        if family.type == "counter":
            names |= {f"{base}_total", f"{base}_created"}
        elif family.type == "histogram":
            names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count", f"{base}_created"}
        elif family.type == "info":
            names.add(f"{base}_info")
        else:
            names.add(base)
    return names


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def _alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_every_dashboard_metric_exists():
    known = exported_names(Metrics(CollectorRegistry()).registry)
    used = {name for expr in _dashboard_exprs() for name in _NAME.findall(expr)}
    assert len(used) >= 25, sorted(used)
    missing = sorted(used - known)
    assert not missing, f"dashboard uses metrics the daemon does not export: {missing}"


def test_every_alert_metric_exists():
    known = exported_names(Metrics(CollectorRegistry()).registry)
    used = {name for expr in _alert_exprs() for name in _NAME.findall(expr)}
    assert {"callbridge_calls_offered_total", "callbridge_calls_answered_total",
            "callbridge_model_errors_total", "callbridge_response_latency_seconds_bucket",
            "callbridge_playout_underruns_total", "callbridge_recordings_total"} <= used
    missing = sorted(used - known)
    assert not missing, f"alert rules use metrics the daemon does not export: {missing}"


def test_the_check_catches_a_misspelt_name():
    known = exported_names(Metrics(CollectorRegistry()).registry)
    assert "callbridge_response_latency_seconds_bucket" in known
    assert "callbridge_response_latency_bucket" not in known
    assert "callbridge_calls_active_total" not in known


def test_no_family_carries_a_per_call_label():
    metrics = Metrics(CollectorRegistry())
    families = _families(metrics)
    assert len(families) >= 25
    for metric in families:
        name = metric._name
        assert name.startswith("callbridge_"), name
        labels = set(metric._labelnames)
        assert labels <= ALLOWED_LABELS, f"{name} has labels {labels - ALLOWED_LABELS}"
        for label in labels:
            assert not any(hint in label for hint in PER_CALL_HINTS), f"{name}: per-call label {label}"


def test_base_units_and_counter_suffixes():
    registry = Metrics(CollectorRegistry()).registry
    for family in registry.collect():
        assert family.name.startswith("callbridge_")
        assert not re.search(r"_(ms|milliseconds|minutes|kb|kilobytes)\b", family.name), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name


def test_one_registry_per_app_not_the_global_one():
    first = Metrics(CollectorRegistry())
    second = Metrics(CollectorRegistry())  # a second app in the same process must not collide
    first.calls_active.labels("audiosocket").inc()
    labels = {"transport": "audiosocket"}
    assert second.registry.get_sample_value("callbridge_calls_active", labels) in (None, 0.0)
    assert first.registry.get_sample_value("callbridge_calls_active", labels) == 1.0


def test_tenant_labels_are_bounded():
    labels = TenantLabels(enabled=True, limit=3)
    seen = [labels.label(f"t{i}") for i in range(10)]
    assert seen[:3] == ["t0", "t1", "t2"]
    assert set(seen[3:]) == {OTHER_TENANT}
    assert labels.label("t1") == "t1"  # a named tenant keeps its name
    assert len({*seen}) == 4


def test_tenant_labels_off_by_default():
    from bridge.settings import load_settings

    settings = load_settings(env_file=None, environ={})
    assert settings.metrics.tenant_labels is False
    labels = TenantLabels(settings.metrics.tenant_labels, settings.metrics.max_tenant_labels)
    assert labels.label("acme") is None


@pytest.mark.parametrize("path", [DASHBOARD])
def test_dashboard_panels_do_not_overlap(path):
    panels = json.loads(path.read_text())["panels"]
    boxes = [(p["title"], p["gridPos"]) for p in panels]
    for i, (title_a, a) in enumerate(boxes):
        assert a["x"] + a["w"] <= 24, title_a
        for title_b, b in boxes[i + 1:]:
            overlap = (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
                       and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])
            assert not overlap, (title_a, title_b)
