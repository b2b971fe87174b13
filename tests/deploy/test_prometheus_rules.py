"""promtool accepts the shipped Prometheus configuration and alert rules, and the rules' own unit
tests (deploy/prometheus/alerts_test.yml) pass: each alert fires on the series it is meant for
and stays silent on the others."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package prometheus; .ci/system-deps installs it)"
)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-kubernetes.yml"])
def test_check_config(config):
    result = _promtool("check", "config", config)
    if "field kubernetes_sd_configs not found" in result.stdout + result.stderr:
        # Debian builds Prometheus without the Kubernetes discovery plugin.
        pytest.skip("this promtool was built without Kubernetes service discovery")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_kubernetes_discovery_matches_the_pod_annotations():
    import yaml

    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus-kubernetes.yml").read_text())
    job = config["scrape_configs"][0]
    deployment = yaml.safe_load((PROMETHEUS_DIR.parent / "k8s" / "base" / "deployment.yaml").read_text())
    template = deployment["spec"]["template"]["metadata"]
    keep = {r["source_labels"][0]: r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
    assert template["labels"]["app.kubernetes.io/name"] == keep[
        "__meta_kubernetes_pod_label_app_kubernetes_io_name"]
    assert template["annotations"]["prometheus.io/scrape"] == keep[
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
    assert template["annotations"]["prometheus.io/path"] == "/metrics"
    targets = {r.get("target_label") for r in job["relabel_configs"]}
    assert {"namespace", "pod"} <= targets  # what prometheus-adapter maps to Kubernetes objects


def test_check_rules():
    result = _promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 14 rules found" in result.stdout


def test_rule_unit_tests():
    result = _promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_rejects_a_broken_rule(tmp_path):
    # The check above can fail: an unknown function is refused.
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n"
                   "      - alert: X\n        expr: no_such_fn(callbridge_ready)\n")
    result = subprocess.run([PROMTOOL, "check", "rules", str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
