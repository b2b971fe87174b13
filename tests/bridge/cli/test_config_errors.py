"""Configuration mistakes, made the way an operator makes them and run through the installed
``callbridge`` command in a subprocess: each ends with one message naming the file, setting or
port and what to do, exit status 2, and no traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CALLBRIDGE = Path(sys.executable).with_name("callbridge")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALLBRIDGE_", "OPENAI_", "AZURE_"))}
    env["CALLBRIDGE_RECORDING__DIRECTORY"] = str(tmp_path / "rec")
    env.update(extra)
    return env


def _run(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CALLBRIDGE), *args], env=env or _env(tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _loopback(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The daemon on 127.0.0.1 at free ports (never the defaults another process may hold)."""
    ports = {"CALLBRIDGE_HTTP__PORT": str(_free_port()), "CALLBRIDGE_AUDIOSOCKET__PORT": str(_free_port()),
             "CALLBRIDGE_AGI__PORT": str(_free_port())}
    return _env(tmp_path, CALLBRIDGE_HTTP__HOST="127.0.0.1", CALLBRIDGE_AUDIOSOCKET__HOST="127.0.0.1",
                CALLBRIDGE_AGI__HOST="127.0.0.1", **{**ports, **extra})


def _one_clear_line(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    """Exit status 2, no traceback or warning, and a ``callbridge:`` line holding ``expected``."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("callbridge: ")]
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    config = tmp_path / "callbridge.yaml"
    config.write_text("http:\n  port: 8000\n bad: [\n")
    line = _one_clear_line(_run(tmp_path, "serve", "--config", str(config)),
                           f"config file {config} is not valid YAML at line 3, column 2",
                           "check the indentation")
    assert "http.port" not in line
    checked = _run(tmp_path, "check", "--config", str(config))
    assert checked.returncode == 2 and "Traceback" not in checked.stderr
    assert "FAIL  config" in checked.stdout
    assert "is not valid YAML at line 3" in " ".join(checked.stdout.split())


def test_yaml_that_is_not_a_mapping(tmp_path):
    config = tmp_path / "list.yaml"
    config.write_text("- http\n- port: 8000\n")
    _one_clear_line(_run(tmp_path, "-c", str(config), "serve"),
                    f"config file {config} holds a list; it must be a mapping of sections")
    config.write_text("8000\n")
    _one_clear_line(_run(tmp_path, "serve", "-c", str(config)), "holds a single value (int)")


def test_unreadable_or_missing_config_file(tmp_path):
    folder = tmp_path / "conf.d"
    folder.mkdir()
    _one_clear_line(_run(tmp_path, "serve", "-c", str(folder)),
                    f"config file {folder} cannot be read (Is a directory)", "check its path")
    _one_clear_line(_run(tmp_path, "serve", "-c", str(tmp_path / "nope.yaml")),
                    "nope.yaml does not exist", "CALLBRIDGE_CONFIG")


def test_unknown_keys_at_every_level_of_the_file(tmp_path):
    config = tmp_path / "callbridge.yaml"
    config.write_text("recording:\n  enabeld: false\naudiosocket:\n  prot: 9100\nops:\n  admin_tokn: x\n"
                      "limit:\n  max_calls: 3\n")
    line = _one_clear_line(_run(tmp_path, "serve", "--config", str(config)), f"config file {config}")
    assert "unknown setting recording.enabeld (did you mean recording.enabled?)" in line
    assert "unknown setting audiosocket.prot (did you mean audiosocket.port?)" in line
    assert "unknown setting ops.admin_tokn (did you mean ops.admin_token?)" in line
    assert "unknown setting limit (did you mean limits?)" in line
    config.write_text("recording:\n  storage: s3\n  s3:\n    buckt: calls\n")
    _one_clear_line(_run(tmp_path, "serve", "--config", str(config)),
                    "unknown setting recording.s3.buckt (did you mean recording.s3.bucket?)")


def test_unknown_callbridge_variables(tmp_path):
    env = _env(tmp_path, CALLBRIDGE_AUDIOSOCKET__PROT="9100", CALLBRIDGE_OPS_ADMIN_TOKEN="x",
               CALLBRIDGE_RECORDING__ENABELD="false")
    line = _one_clear_line(_run(tmp_path, "serve", env=env))
    assert ("environment variable CALLBRIDGE_AUDIOSOCKET__PROT names no setting "
            "(did you mean CALLBRIDGE_AUDIOSOCKET__PORT?)") in line
    assert "CALLBRIDGE_OPS_ADMIN_TOKEN names no setting (did you mean CALLBRIDGE_OPS__ADMIN_TOKEN?)" in line
    assert "CALLBRIDGE_RECORDING__ENABELD names no setting (did you mean CALLBRIDGE_RECORDING__ENABLED?)" in line
    # The same in a .env file next to the daemon.
    (tmp_path / ".env").write_text("CALLBRIDGE_AGI__PROT=4600\n")
    _one_clear_line(_run(tmp_path, "serve"),
                    ".env: CALLBRIDGE_AGI__PROT names no setting (did you mean CALLBRIDGE_AGI__PORT?)")


def test_port_in_use_names_the_setting(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = _loopback(tmp_path, CALLBRIDGE_HTTP__PORT=str(port))
        _one_clear_line(_run(tmp_path, "serve", env=env),
                        f"cannot listen on 127.0.0.1:{port} (http.port, CALLBRIDGE_HTTP__PORT): "
                        "the port is already in use")
        env = _loopback(tmp_path, CALLBRIDGE_AUDIOSOCKET__PORT=str(port))
        _one_clear_line(_run(tmp_path, "serve", env=env),
                        f"cannot listen on 127.0.0.1:{port} (audiosocket.port, CALLBRIDGE_AUDIOSOCKET__PORT)")


def test_unreadable_tenants_file(tmp_path):
    folder = tmp_path / "tenants.yaml"
    folder.mkdir()  # a directory where the file should be: unreadable even as root
    env = _loopback(tmp_path, CALLBRIDGE_TENANTS__FILE=str(folder))
    _one_clear_line(_run(tmp_path, "serve", env=env),
                    f"tenants: {folder}: cannot read: Is a directory", "CALLBRIDGE_TENANTS__FILE")
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\ntenants:\n  - slug: acme\n    numbers: ['+5511999990001']\n    colour: red\n")
    _one_clear_line(_run(tmp_path, "serve", env=_loopback(tmp_path, CALLBRIDGE_TENANTS__FILE=str(broken))),
                    f"tenants: {broken}", "colour")


def test_options_after_the_subcommand(tmp_path):
    config = tmp_path / "callbridge.yaml"
    config.write_text("limits:\n  max_calls: 7\n")
    for args in (["check", "--no-ports", "--config", str(config)], ["-c", str(config), "check", "--no-ports"],
                 ["check", "-c", str(config), "--no-ports"]):
        result = _run(tmp_path, *args)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "max_calls 7" in result.stdout


@contextmanager
def _daemon(tmp_path: Path, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    base = f"http://127.0.0.1:{env['CALLBRIDGE_HTTP__PORT']}"
    log = (tmp_path / "serve.log").open("w+")
    process = subprocess.Popen([str(CALLBRIDGE), "serve"], env=env, cwd=tmp_path, stdout=log,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                with urllib.request.urlopen(base + "/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the daemon did not become ready"
            time.sleep(0.1)
        yield process, base
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _ops_notices(tmp_path: Path) -> list[str]:
    # The notice comes right after "callbridge ready"; wait for it rather than race it.
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in (tmp_path / "serve.log").read_text().splitlines()
                 if line.startswith("ops page: ")]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_check_next_to_the_running_daemon(tmp_path):
    env = _loopback(tmp_path)
    with _daemon(tmp_path, env) as (_, base):
        result = _run(tmp_path, "check", env=dict(env, COLUMNS="72"))
        assert result.returncode == 0, result.stdout + result.stderr
        text = result.stdout
        assert "ok    listeners" in text
        assert f"ports in use by the callbridge running at {base}; its /ready answers HTTP 200" in " ".join(
            text.split())
        # Lines fit the terminal, but for one word longer than a line (a path).
        assert all(len(line) <= 72 or len(line.split()) == 1 for line in text.splitlines()), text
        # No word is cut: the text output holds every word of every JSON detail, whole. Figures
        # (free disk space, timings) may change between the two runs, so words with digits are left out.
        report = json.loads(_run(tmp_path, "check", "--json", env=env).stdout)

        def stable(words: str) -> set[str]:
            return {w for w in words.split() if not any(c.isdigit() for c in w)}

        words = stable(text)
        for entry in report["results"]:
            assert stable(entry["detail"]) <= words, entry


def test_serve_prints_the_ops_page_and_a_development_token(tmp_path):
    env = _loopback(tmp_path)
    with _daemon(tmp_path, env) as (_, base):
        notices = _ops_notices(tmp_path)
        assert len(notices) == 1, notices
        assert notices[0].startswith(f"ops page: {base}/ops/  sign in with ")
        assert "CALLBRIDGE_OPS__ADMIN_TOKEN" in notices[0]
        token = notices[0].split("sign in with ", 1)[1].split()[0]
        request = urllib.request.Request(base + "/api/whoami", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.loads(response.read()) == {"role": "admin", "tenant": None}


@pytest.mark.parametrize("app_env", ["production", "staging"])
def test_no_token_is_made_up_outside_development(tmp_path, app_env):
    # Production refuses the built-in simulator: a model endpoint is named (nothing connects to it
    # before a call).
    model = {"OPENAI_API_KEY": "sk-test",
             "CALLBRIDGE_MODEL__WEBSOCKET_BASE_URL": f"ws://127.0.0.1:{_free_port()}/v1"}
    env = _loopback(tmp_path, APP_ENV=app_env, **model)
    with _daemon(tmp_path, env) as (_, base):
        notices = _ops_notices(tmp_path)
        assert notices == [f"ops page: {base}/ops/  has no token configured and refuses everyone: "
                           "set CALLBRIDGE_OPS__ADMIN_TOKEN"]
        request = urllib.request.Request(base + "/api/whoami", headers={"Authorization": "Bearer x"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 401


def test_call_index_database_down(tmp_path):
    port = _free_port()  # nothing listens there
    env = _loopback(tmp_path, CALLBRIDGE_RECORDING__INDEX="postgres",
                    CALLBRIDGE_RECORDING__DATABASE_URL=f"postgresql://callbridge:secret@127.0.0.1:{port}/calls")
    result = _run(tmp_path, "serve", env=env)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("callbridge: ")]
    assert len(lines) == 1 and "cannot open the call index in PostgreSQL" in lines[0], result.stderr
    assert "recording.database_url" in lines[0] and "secret" not in result.stderr


def _tls_pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A certificate for 127.0.0.1, its key, and the key of another certificate (made here)."""
    import trustme

    ca = trustme.CA()
    cert, key, other = tmp_path / "trunk.pem", tmp_path / "trunk.key", tmp_path / "other.key"
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.issue_cert("127.0.0.1").private_key_pem.write_to_path(str(other))
    return cert, key, other


def test_sip_tls_without_a_usable_certificate(tmp_path):
    pytest.importorskip("pjsua2", reason="pjsua2-python has wheels for Linux x86-64 only")
    cert, key, other = _tls_pair(tmp_path)
    sip = {"CALLBRIDGE_SIP__ENABLED": "true", "CALLBRIDGE_SIP__HOST": "127.0.0.1", "CALLBRIDGE_SIP__PORT": "0"}
    tls_only = {**sip, "CALLBRIDGE_SIP__TRANSPORTS": '["tls"]'}
    _one_clear_line(_run(tmp_path, "serve", env=_loopback(tmp_path, **sip, CALLBRIDGE_SIP__TRANSPORTS='["udp","tls"]')),
                    "sip.transports lists tls but sip.tls.cert_file (CALLBRIDGE_SIP__TLS__CERT_FILE) and "
                    "sip.tls.key_file (CALLBRIDGE_SIP__TLS__KEY_FILE) are not set")
    folder = tmp_path / "certs"
    folder.mkdir()  # a directory where the file should be: unreadable even as root
    line = _one_clear_line(_run(tmp_path, "serve", env=_loopback(
        tmp_path, **tls_only, CALLBRIDGE_SIP__TLS__CERT_FILE=str(folder),
        CALLBRIDGE_SIP__TLS__KEY_FILE=str(tmp_path / "missing.key"))),
        f"sip.tls.cert_file {folder} cannot be read (Is a directory)")
    assert f"sip.tls.key_file {tmp_path / 'missing.key'} cannot be read (No such file or directory)" in line
    _one_clear_line(_run(tmp_path, "serve", env=_loopback(
        tmp_path, **tls_only, CALLBRIDGE_SIP__TLS__CERT_FILE=str(key), CALLBRIDGE_SIP__TLS__KEY_FILE=str(key))),
        f"sip.tls.cert_file {key} holds no PEM certificate")
    _one_clear_line(_run(tmp_path, "serve", env=_loopback(
        tmp_path, **tls_only, CALLBRIDGE_SIP__TLS__CERT_FILE=str(cert), CALLBRIDGE_SIP__TLS__KEY_FILE=str(other))),
        f"sip.tls.key_file {other} is not the unencrypted private key of sip.tls.cert_file {cert}")
    _one_clear_line(_run(tmp_path, "serve", env=_loopback(
        tmp_path, **tls_only, CALLBRIDGE_SIP__TLS__CERT_FILE=str(cert), CALLBRIDGE_SIP__TLS__KEY_FILE=str(key),
        CALLBRIDGE_SIP__TLS__VERIFY_CLIENT="true")),
        "sip.transports lists tls with sip.tls.verify_client but sip.tls.ca_file (CALLBRIDGE_SIP__TLS__CA_FILE)")
    # SRTP keys over UDP/TCP only when asked for.
    _one_clear_line(_run(tmp_path, "serve", env=_loopback(tmp_path, **sip, CALLBRIDGE_SIP__SRTP="mandatory")),
                    "sip.srtp mandatory sends SRTP keys in the SDP", "every call over udp and tcp would be "
                    "refused (406)", "sip.srtp_requires_tls")
    # The TLS port taken by another process.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        _one_clear_line(_run(tmp_path, "serve", env=_loopback(
            tmp_path, **tls_only, CALLBRIDGE_SIP__TLS__CERT_FILE=str(cert), CALLBRIDGE_SIP__TLS__KEY_FILE=str(key),
            CALLBRIDGE_SIP__TLS__PORT=str(port))),
            f"cannot start the SIP trunk (sip settings, CALLBRIDGE_SIP__*): SIP TLS port 127.0.0.1:{port}")
