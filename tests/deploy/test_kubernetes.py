"""The Kubernetes manifests render (kustomize base + overlay) and validate against the
Kubernetes API schemas of several releases, offline (kubernetes-validate ships the schemas), and
they agree with the daemon: probe paths, ports, drain timing, the autoscaling metric.

Rendering: the overlay uses only kustomize's namespace, images and strategic-merge patches, which
``render`` below applies. When a kustomize binary is on PATH (``kustomize`` or ``kubectl
kustomize``) the test also renders with it and requires the same objects, so the small renderer
cannot drift from the real tool.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
BASE = K8S / "base"
PRODUCTION = K8S / "overlays" / "production"
# Oldest and newest Kubernetes releases the manifests are meant for.
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0", kubernetes_validate.latest_version())

# Strategic-merge keys of the lists our manifests patch (k8s.io/api types, patchMergeKey).
_MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
               "volumeMounts": "mountPath", "ports": "containerPort"}


def _merge(base: Any, patch: Any, field: str | None = None) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = _merge(out[key], value, key)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and field in _MERGE_KEYS:
        key = _MERGE_KEYS[field]
        if all(isinstance(item, dict) and key in item for item in base + patch):
            out_list = [copy.deepcopy(item) for item in base]
            for item in patch:
                match = next((i for i, have in enumerate(out_list) if have[key] == item[key]), None)
                if match is None:
                    out_list.append(copy.deepcopy(item))
                else:
                    out_list[match] = _merge(out_list[match], item, field)
            return out_list
    return copy.deepcopy(patch)


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(directory: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    supported = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
    assert set(kustomization) <= supported, f"renderer does not know {set(kustomization) - supported}"
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        objects += render(path) if path.is_dir() else _load_all(path)
    for entry in kustomization.get("patches", []):
        for patch in _load_all(directory / entry["path"]):
            targets = [o for o in objects if o["kind"] == patch["kind"]
                       and o["metadata"]["name"] == patch["metadata"]["name"]]
            assert len(targets) == 1, f"patch {entry['path']} matches {len(targets)} objects"
            index = objects.index(targets[0])
            objects[index] = _merge(targets[0], patch)
    for image in kustomization.get("images", []):
        for obj in objects:
            pod = obj.get("spec", {}).get("template", {}).get("spec", {})
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    if "namespace" in kustomization:
        for obj in objects:
            obj["metadata"]["namespace"] = kustomization["namespace"]
    return objects


def _kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def _by_key(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


@pytest.fixture(scope="module", params=[BASE, PRODUCTION], ids=["base", "production"])
def rendered(request: pytest.FixtureRequest) -> tuple[Path, list[dict[str, Any]]]:
    return request.param, render(request.param)


def test_renders_every_kind(rendered):
    _, objects = rendered
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy",
                     "PodDisruptionBudget", "Service"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_validates_against_kubernetes_schemas(rendered, version):
    _, objects = rendered
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_validation_can_fail():
    deployment = _by_key(render(BASE))[("Deployment", "callbridge")]
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = {"x": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["terminationGracePeriod"] = 90
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSIONS[-1], strict=True)


def test_same_output_as_kustomize(rendered):
    directory, objects = rendered
    command = _kustomize_command()
    if command is None:
        pytest.skip("no kustomize binary (kustomize or kubectl) on PATH; "
                    "rendered with the test's renderer only")
    result = subprocess.run([*command, str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    theirs = _by_key([doc for doc in yaml.safe_load_all(result.stdout) if doc])
    ours = _by_key(objects)
    assert theirs.keys() == ours.keys()
    for key in ours:
        assert ours[key] == theirs[key], key


def _settings_defaults():
    from bridge.settings import load_settings

    return load_settings(env_file=None, environ={})


def test_production_overlay_changes_what_it_says():
    base = _by_key(render(BASE))
    prod = _by_key(render(PRODUCTION))
    assert base[("Deployment", "callbridge")]["spec"]["replicas"] == 2
    deployment = prod[("Deployment", "callbridge")]
    assert deployment["metadata"]["namespace"] == "callbridge"
    assert deployment["spec"]["replicas"] == 3
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/callbridge:0.1.0"
    # The patch merged into the base container rather than replacing it.
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert prod[("ConfigMap", "callbridge-config")]["data"]["CALLBRIDGE_LIMITS__MAX_CALLS"] == "150"
    assert prod[("ConfigMap", "callbridge-config")]["data"]["CALLBRIDGE_LIMITS__DRAIN_TIMEOUT"] == "75"


def test_manifests_agree_with_the_daemon(rendered, monkeypatch):
    from bridge.app import END_GRACE
    from bridge.ops.metrics import Metrics

    _, objects = rendered
    by_key = _by_key(objects)
    deployment = by_key[("Deployment", "callbridge")]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    defaults = _settings_defaults()

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"audiosocket": defaults.audiosocket.port, "fastagi": defaults.agi.port,
                     "http": defaults.http.port, "sip-udp": defaults.sip.port, "sip-tcp": defaults.sip.port,
                     "sip-tls": defaults.sip.tls.port}
    protocols = {p["name"]: p["protocol"] for p in container["ports"]}
    assert (protocols["sip-udp"], protocols["sip-tcp"], protocols["sip-tls"]) == ("UDP", "TCP", "TCP")
    service = by_key[("Service", "callbridge")]
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (service["spec"]["selector"], deployment["spec"]["selector"]["matchLabels"],
                     by_key[("PodDisruptionBudget", "callbridge")]["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()

    # Nothing is exposed outside the cluster by the base; the NetworkPolicy covers the pods and
    # admits each port from its own peers only: HTTP from the ingress and Prometheus, FastAGI
    # and AudioSocket from the PBX, and no rule from everywhere.
    assert service["spec"]["type"] == "ClusterIP"
    policy = by_key[("NetworkPolicy", "callbridge")]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    rules = {tuple(sorted(str(p["port"]) for p in rule["ports"])): rule for rule in policy["ingress"]}
    pbx_ports = ("10000", "40000", "audiosocket", "fastagi", "sip-tcp", "sip-tls", "sip-udp")
    assert set(rules) == {("http",), pbx_ports}
    assert all(rule["from"] for rule in rules.values()), "a rule without 'from' admits every source"
    assert all(peer.get("podSelector") for peer in rules[pbx_ports]["from"])
    named = {p["name"] for p in container["ports"]}
    assert {p for ports in rules for p in ports if not p.isdigit()} <= named
    # The RTP ranges are the daemon's defaults for SIP calls and for ARI external media.
    from bridge.settings import load_settings as _defaults

    defaults = _defaults(env_file=None, environ={})
    ranges = {(p["port"], p["endPort"], p["protocol"]) for p in rules[pbx_ports]["ports"] if "endPort" in p}
    assert ranges == {(defaults.sip.rtp_port, defaults.sip.rtp_port + defaults.sip.rtp_port_range - 1, "UDP"),
                      (defaults.ari.rtp_port_min, defaults.ari.rtp_port_max, "UDP")}
    for port in rules[pbx_ports]["ports"]:
        match = [c for c in container["ports"] if c["name"] == port["port"]]
        assert not match or match[0].get("protocol", "TCP") == port["protocol"]

    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert "kill -TERM 1" in " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    config = by_key[("ConfigMap", "callbridge-config")]["data"]
    drain = float(config["CALLBRIDGE_LIMITS__DRAIN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] >= drain + END_GRACE
    # Every key of the ConfigMap is a setting the daemon accepts, with the value it means.
    from bridge.settings import load_settings

    for key, value in config.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(env_file=None)
    assert settings.limits.drain_timeout == drain

    assert pod["securityContext"]["runAsNonRoot"] is True
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert f"USER {pod['securityContext']['runAsUser']}:" in dockerfile

    hpa = by_key[("HorizontalPodAutoscaler", "callbridge")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    from prometheus_client import CollectorRegistry

    assert metric in {f.name for f in Metrics(CollectorRegistry()).registry.collect()}
