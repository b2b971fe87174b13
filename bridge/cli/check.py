"""``callbridge check``: validate the configuration and reach every configured dependency.

Each check names what it tried and, when it fails, what is wrong in words an operator can act on
("API key rejected (HTTP 401) by wss://...", "tenant store: connection refused at db:5432").
Checks run concurrently, each bounded by ``--timeout``. Exit status: 0 when nothing failed (warnings
allowed), 1 when a check failed, 2 when the configuration itself is invalid.

The listener check binds each configured port. A port that is taken is asked for ``/health`` on
the HTTP port: when a callbridge answers, the ports are its own and its ``/ready`` is the result
(so ``check`` next to a running daemon reports on that daemon); otherwise another program holds
the port. Long details wrap between words, to the terminal's width.

``callbridge probe PATH`` asks the local daemon's HTTP server for PATH (``/health``, ``/ready``) and
exits 0 on HTTP 200: the container health check, with no curl in the image.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import enum
import json
import os
import shutil
import socket
import sys
import tempfile
import textwrap
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bridge.ops import logs
from bridge.settings import AppEnv, ConfigError, ModelProvider, Settings, load_settings

DEFAULT_TIMEOUT = 10.0


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    status: Status
    detail: str


class CheckFailed(Exception):
    """A dependency is unusable; the message says why."""


Check = Callable[[], Awaitable[str]]


# --------------------------------------------------------------------------- individual checks
async def check_tenant_store(settings: Settings) -> str:
    """Open the configured tenant backend uncached and list its tenants."""
    from tenants.factory import open_backend

    tenants_settings = settings.tenants
    backend_name = str(tenants_settings.backend)
    try:
        backend = await open_backend(tenants_settings)
    except (OSError, ConnectionError) as exc:
        raise CheckFailed(f"{backend_name} backend unreachable: {_describe(exc)}") from None
    except Exception as exc:  # backends raise their own DirectoryError / TenantError / ValueError
        raise CheckFailed(f"{backend_name} backend: {_describe(exc)}") from None
    try:
        tenants = await backend.list_tenants()
    except Exception as exc:
        raise CheckFailed(f"{backend_name} backend: listing tenants failed: {_describe(exc)}") from None
    finally:
        await backend.close()
    active = [t for t in tenants if t.active]
    numbers = sum(len(t.numbers) for t in active)
    from bridge.core.providers import fit_tenants

    fits = fit_tenants(settings, active)
    refused = [line for fit in fits if fit.refused for line in fit.lines()]
    if refused:
        raise CheckFailed(f"{backend_name} backend: {len(refused)} setting(s) the provider cannot take: "
                          + "; ".join(refused))
    if not active:
        raise CheckFailed(f"{backend_name} backend answers but has no active tenant: "
                          "every call would be refused")
    detail = (f"{backend_name} backend: {len(active)} active tenant(s) of {len(tenants)}, "
              f"{numbers} number(s) and pattern(s)")
    reported = [line for fit in fits for line in fit.lines()]
    if reported:
        detail += "; " + "; ".join(reported)
    if str(tenants_settings.unknown_number) == "default":
        slugs = {t.slug for t in active}
        if tenants_settings.default_tenant not in slugs:
            raise CheckFailed(f"{detail}; tenants.default_tenant {tenants_settings.default_tenant!r} "
                              "is not an active tenant")
    return detail


async def check_model(settings: Settings) -> str:
    """Open a realtime session with the configured provider and wait for ``session.created``."""
    from bridge.core.realtime import ModelError, endpoint_from_settings, open_session

    provider = settings.resolved_provider
    if provider is ModelProvider.SIMULATOR:
        note = "built-in simulator (no model API key configured)"
        if settings.app_env is AppEnv.PRODUCTION:
            raise CheckFailed(f"{note}, but app_env is production: set OPENAI_API_KEY or an Azure endpoint")
        return note
    try:
        endpoint = endpoint_from_settings(settings)
    except ValueError as exc:
        raise CheckFailed(str(exc)) from None
    where = endpoint.where
    if endpoint.credential is not None:
        where += f" ({endpoint.credential.kind}, api-version {endpoint.api_version})"
    try:
        session = await open_session(endpoint)
    except ModelError as exc:
        reason = None
        if endpoint.voicelive is not None:
            from bridge.core.voicelive import explain_refusal

            reason = await explain_refusal(endpoint)
        await endpoint.close()
        raise CheckFailed(f"{provider.value} at {where}: {reason or _model_failure(str(exc))}") from None
    try:
        first = await anext(aiter(session.events()), None)
    except ModelError as exc:
        raise CheckFailed(f"{provider.value} at {where}: {exc}") from None
    finally:
        await session.close()
        await endpoint.close()
    if first is None:
        raise CheckFailed(f"{provider.value} at {where}: the session closed before it started")
    if first.get("type") == "error":
        err = first.get("error") or {}
        raise CheckFailed(f"{provider.value} at {where}: model {endpoint.model!r} refused: "
                          f"{err.get('message') or err.get('code') or 'error'}")
    return f"{provider.value}: session opened with model {endpoint.model!r} at {where}"


def _model_failure(message: str) -> str:
    if "401" in message or "403" in message:
        return f"API key rejected ({message})"
    if "404" in message:
        return f"endpoint or model not found ({message})"
    return message


async def check_ari(url: str, username: str, password: str, wait_seconds: float) -> str:
    """GET /ari/asterisk/info with the ARI user's credentials."""
    import aiohttp

    base = url.rstrip("/")
    info_url = base + ("/asterisk/info" if base.endswith("/ari") else "/ari/asterisk/info")
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    headers = {"Authorization": f"Basic {token}"}  # RFC 7617 basic authentication
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=wait_seconds)) as http, \
                http.get(info_url, headers=headers) as response:
            if response.status == 401:
                raise CheckFailed(f"ARI at {url} rejected user {username!r} (HTTP 401): check ari.conf")
            if response.status != 200:
                raise CheckFailed(f"ARI at {url} answered HTTP {response.status} for /asterisk/info")
            info = await response.json(content_type=None)
    except aiohttp.ClientError as exc:
        raise CheckFailed(f"ARI at {url} unreachable: {_describe(exc)}") from None
    version = (info.get("system") or {}).get("version") if isinstance(info, dict) else None
    return f"ARI at {url}: Asterisk {version or '(version not reported)'}"


async def check_ami(host: str, port: int, username: str, secret: str, wait_seconds: float) -> str:
    """Read the AMI banner, log in, log off."""
    try:
        async with asyncio.timeout(wait_seconds):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                banner = (await reader.readline()).decode("utf-8", "replace").strip()
                if not banner.startswith("Asterisk Call Manager"):
                    raise CheckFailed(f"AMI at {host}:{port}: not an Asterisk manager "
                                      f"(banner {banner[:60]!r})")
                writer.write(
                    f"Action: Login\r\nActionID: callbridge-check\r\nUsername: {username}\r\n"
                    f"Secret: {secret}\r\nEvents: off\r\n\r\n".encode()
                )
                await writer.drain()
                reply = await _ami_message(reader)
                if reply.get("response", "").lower() != "success":
                    raise CheckFailed(f"AMI at {host}:{port} refused user {username!r}: "
                                      f"{reply.get('message', 'login failed')} (check manager.conf)")
                writer.write(b"Action: Logoff\r\nActionID: callbridge-check-2\r\n\r\n")
                await writer.drain()
            finally:
                writer.close()
    except TimeoutError:
        raise CheckFailed(f"AMI at {host}:{port}: no answer within {wait_seconds:.0f} s") from None
    except OSError as exc:
        raise CheckFailed(f"AMI at {host}:{port} unreachable: {_describe(exc)}") from None
    return f"AMI at {host}:{port}: {banner}, login accepted"


async def _ami_message(reader: asyncio.StreamReader) -> dict[str, str]:
    fields: dict[str, str] = {}
    while True:
        line = (await reader.readline()).decode("utf-8", "replace")
        if not line:
            raise CheckFailed("AMI closed the connection during login")
        line = line.strip()
        if not line:
            if fields:
                return fields
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()


def check_object_storage_sync(s3: Any, timeout: float) -> str:
    """HeadBucket with the configured credentials (boto3 is blocking: run in a thread)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    def secret(value: Any) -> str | None:
        return value.get_secret_value() if value is not None else None

    client = boto3.client(
        "s3",
        endpoint_url=getattr(s3, "endpoint_url", None),
        region_name=getattr(s3, "region", None),
        aws_access_key_id=secret(getattr(s3, "access_key_id", None)),
        aws_secret_access_key=secret(getattr(s3, "secret_access_key", None)),
        config=Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1},
                      s3={"addressing_style": getattr(s3, "addressing_style", "auto")}),
    )
    where = f"s3://{s3.bucket}" + (f" at {s3.endpoint_url}" if getattr(s3, "endpoint_url", None) else "")
    try:
        client.head_bucket(Bucket=s3.bucket)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise CheckFailed(f"{where}: bucket does not exist") from None
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise CheckFailed(f"{where}: access denied ({code}): "
                              "check the credentials and bucket policy") from None
        raise CheckFailed(f"{where}: {code or exc}") from None
    except BotoCoreError as exc:
        raise CheckFailed(f"{where}: unreachable: {exc}") from None
    return f"{where}: bucket reachable"


def check_recording_directory(directory: Path) -> str:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".check-", delete=True) as probe:
            probe.write(b"x")
            probe.flush()
    except OSError as exc:
        raise CheckFailed(f"recordings directory {directory} is not writable: {_describe(exc)}") from None
    usage = os.statvfs(directory)
    free_gib = usage.f_bavail * usage.f_frsize / 2**30
    if free_gib < 1.0:
        raise CheckFailed(f"recordings directory {directory}: only {free_gib:.2f} GiB free")
    return f"recordings directory {directory} writable, {free_gib:.1f} GiB free"


async def check_listen_ports(settings: Settings, wait_seconds: float = 2.0) -> str:
    """Each enabled listener's address can be bound. Ports held by a callbridge already running
    with these settings are no failure: that daemon's ``/ready`` is checked instead."""
    listeners = [("audiosocket", settings.audiosocket), ("agi", settings.agi), ("http", settings.http)]
    busy = []
    for name, listener in listeners:
        if not listener.enabled or listener.port == 0:
            continue
        family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((listener.host, listener.port))
            except OSError as exc:
                busy.append(f"{name} {listener.host}:{listener.port} ({exc.strerror})")
    if not busy:
        return "listener ports free: " + ", ".join(f"{n} {lst.port}" for n, lst in listeners if lst.enabled)
    base = _local_http_url(settings) if settings.http.enabled and settings.http.port else None
    health = await _http_json(base + "/health", wait_seconds) if base else None
    if base is None or health is None or not _is_callbridge(health[1]):
        raise CheckFailed("cannot listen on " + ", ".join(busy) + ": another program holds the port; "
                          "stop it or choose other ports")
    held = "ports in use by the callbridge running at " + base
    ready = await _http_json(base + "/ready", wait_seconds)
    if ready is None:
        raise CheckFailed(f"{held}, but its /ready does not answer")
    status, body = ready
    if status != 200:
        reason = body.get("reason") if isinstance(body, dict) else None
        raise CheckFailed(f"{held}; its /ready answers HTTP {status}" + (f" ({reason})" if reason else ""))
    calls = health[1].get("calls_active")
    return f"{held}; its /ready answers HTTP 200" + (f", {calls} active call(s)" if calls is not None else "")


def _local_http_url(settings: Settings) -> str:
    host = settings.http.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.http.port}"


def _is_callbridge(health: Any) -> bool:
    return isinstance(health, dict) and (health.get("service") == "callbridge" or "calls_active" in health)


async def _http_json(url: str, wait_seconds: float) -> tuple[int, Any] | None:
    """(status, JSON body or None) of a GET, or None when nothing answers over HTTP."""
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=wait_seconds)) as http, \
                http.get(url) as response:
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = None
            return response.status, body
    except (aiohttp.ClientError, TimeoutError):
        return None


def _plain(value: Any) -> str | None:
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value  # type: ignore[no-any-return]


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if len(text) <= 300:
        return text
    cut = text[:300]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut) + " ..."  # never mid-word


# --------------------------------------------------------------------------- running them
def plan_checks(
    settings: Settings, timeout: float, *, ports: bool = True
) -> list[tuple[str, Check | None, str]]:
    """(name, check or None when not configured, why skipped)."""
    plan: list[tuple[str, Check | None, str]] = []

    async def tenants() -> str:
        return await check_tenant_store(settings)

    async def model() -> str:
        return await check_model(settings)

    plan.append(("tenant store", tenants, ""))
    plan.append(("model", model, ""))

    ari = getattr(settings, "ari", None)
    if ari is not None and getattr(ari, "enabled", True) and getattr(ari, "url", None):
        password = _plain(ari.password)

        async def ari_check() -> str:
            return await check_ari(ari.url, ari.username, password or "", timeout)

        plan.append(("ARI", ari_check, ""))
    else:
        plan.append(("ARI", None, "not configured"))

    ami = getattr(settings, "ami", None)
    if ami is not None and getattr(ami, "enabled", True) and getattr(ami, "host", None):
        secret = _plain(ami.secret)

        async def ami_check() -> str:
            return await check_ami(ami.host, int(ami.port), ami.username, secret or "", timeout)

        plan.append(("AMI", ami_check, ""))
    else:
        plan.append(("AMI", None, "not configured"))

    recording = settings.recording
    s3 = getattr(recording, "s3", None)
    if recording.enabled and s3 is not None and str(getattr(recording, "storage", "s3")) == "s3":
        async def storage() -> str:
            return await asyncio.to_thread(check_object_storage_sync, s3, timeout)

        plan.append(("object storage", storage, ""))
    else:
        plan.append(("object storage", None, "not configured (recordings stay on local disk)"))

    if recording.enabled:
        async def recordings() -> str:
            return await asyncio.to_thread(check_recording_directory, Path(recording.directory))

        plan.append(("recordings", recordings, ""))
    else:
        plan.append(("recordings", None, "recording disabled"))

    if settings.sip.enabled:
        async def sip() -> str:
            from bridge.cli.check_sip import check_sip_trunk

            return await check_sip_trunk(settings, min(timeout, 5.0), ports=ports)

        plan.append(("SIP trunk", sip, ""))
    else:
        plan.append(("SIP trunk", None, "disabled"))

    if ports:
        async def listen() -> str:
            return await check_listen_ports(settings, min(timeout, 5.0))

        plan.append(("listeners", listen, ""))
    return plan


async def run_checks(
    settings: Settings, wait_seconds: float = DEFAULT_TIMEOUT, *, ports: bool = True
) -> list[CheckResult]:
    """Every check, concurrently, each bounded by ``wait_seconds``; the config summary first."""
    timeout = wait_seconds
    plan = plan_checks(settings, timeout, ports=ports)

    async def one(name: str, check: Check | None, why: str) -> CheckResult:
        if check is None:
            return CheckResult(name, Status.SKIP, why)
        try:
            async with asyncio.timeout(timeout):
                return CheckResult(name, Status.OK, await check())
        except CheckFailed as exc:
            return CheckResult(name, Status.FAIL, str(exc))
        except TimeoutError:
            return CheckResult(name, Status.FAIL, f"no answer within {timeout:.0f} s")

    results = list(await asyncio.gather(*(one(*entry) for entry in plan)))
    return [_config_summary(settings), *_access(settings), *results]


def _access(settings: Settings) -> list[CheckResult]:
    """What each listener accepts and how its peers authenticate. Open to the world without
    authentication is a warning here (production refuses it when the settings load)."""
    from bridge.security.exposure import listeners

    return [CheckResult(f"access {e.name}", Status.WARN if e.public and not e.authenticated else Status.OK,
                        e.line()) for e in listeners(settings)]


def _config_summary(settings: Settings) -> CheckResult:
    notes = [f"app_env {settings.app_env.value}", f"provider {settings.resolved_provider.value}",
             f"tenants {settings.tenants.backend}", f"max_calls {settings.limits.max_calls}",
             f"drain_timeout {settings.limits.drain_timeout:g} s"]
    return CheckResult("config", Status.OK, ", ".join(notes))


def format_results(results: list[CheckResult], columns: int | None = None) -> str:
    """One entry per result; a long detail wraps at spaces onto indented lines (never mid-word),
    to the terminal's width (100 columns when not a terminal)."""
    if columns is None:
        columns = shutil.get_terminal_size((100, 24)).columns
    width = max(len(r.name) for r in results)
    indent = " " * (2 + 4 + 2 + width + 2)
    lines = []
    for r in results:
        head = f"  {r.status.value:<4}  {r.name:<{width}}  "
        lines += textwrap.wrap(r.detail or "-", width=max(columns, len(indent) + 30), initial_indent=head,
                               subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line
def register(subparsers: Any) -> None:
    check = subparsers.add_parser(
        "check", help="validate the configuration and reach every configured dependency",
        description="Validate the configuration, then reach the tenant store, the model endpoint, "
                    "ARI/AMI and object storage when configured, and the SIP trunk's ports and "
                    "registrations. Exit 0 ok, 1 a check failed, "
                    "2 invalid configuration.",
    )
    check.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                       help="seconds per check (default 10)")
    check.add_argument("--json", action="store_true", help="print the results as JSON")
    check.add_argument("--no-ports", action="store_true",
                       help="do not check the listener ports (a callbridge already holding them is "
                            "recognised and its /ready checked instead)")
    check.set_defaults(func=_check)

    probe = subparsers.add_parser("probe", help="ask the local daemon's HTTP server for /health or /ready")
    probe.add_argument("path", nargs="?", default="/health")
    probe.add_argument("--timeout", type=float, default=2.0)
    probe.set_defaults(func=_probe)


def _check(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        if args.json:
            failure = {"name": "config", "status": "FAIL", "detail": str(exc)}
            print(json.dumps({"ok": False, "results": [failure]}))
        else:
            print("callbridge check")
            print(format_results([CheckResult("config", Status.FAIL, str(exc))]))
        return 2
    # The results say what is wrong; the daemon's own retry warnings ("will keep trying") would
    # only confuse a one-shot check.
    logs.configure("ERROR", settings.log_json)
    results = asyncio.run(run_checks(settings, args.timeout, ports=not args.no_ports))
    failed = any(r.status is Status.FAIL for r in results)
    if args.json:
        print(json.dumps({"ok": not failed, "results": [asdict(r) for r in results]}))
    else:
        print("callbridge check")
        print(format_results(results))
        print("some checks FAILED" if failed else "all checks passed")
    return 1 if failed else 0


def _probe(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"callbridge: {exc}", file=sys.stderr)
        return 2
    host = settings.http.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{settings.http.port}{args.path}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    print(f"{url}: HTTP {status}")
    return 0 if status == 200 else 1


__all__ = ["CheckFailed", "CheckResult", "Status", "check_ami", "check_ari", "run_checks"]
