"""``callbridge calls list|show`` and ``callbridge recordings get``: the call archive from a shell.

These commands talk to a running daemon's ops API rather than reading its files: the same token
rules apply as on the web page, and they work the same whether recordings are on local disk or in
object storage. Where to connect and as whom, first found wins:

* ``--url``, else ``CALLBRIDGE_OPS_URL``, else ``ops.public_url``, else
  ``http://127.0.0.1:<http.port>`` from the settings;
* ``--token``, else ``CALLBRIDGE_OPS_TOKEN``, else ``ops.admin_token`` from the settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

from bridge.settings import ConfigError, load_settings

_TIMEOUT_SECONDS = 30.0
_CHUNK_BYTES = 256 * 1024


class CommandError(Exception):
    """Reported to the user as one line, exit status 1."""


def register(subparsers: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="base URL of the daemon (default: from settings)")
    common.add_argument("--token", help="ops API bearer token (default: $CALLBRIDGE_OPS_TOKEN or settings)")

    calls = subparsers.add_parser("calls", help="find calls and read their transcripts")
    actions = calls.add_subparsers(dest="calls_action", metavar="ACTION")
    calls.set_defaults(func=lambda _args: (calls.print_help(), 2)[1])

    listing = actions.add_parser("list", parents=[common], help="list calls, newest first")
    listing.add_argument("--tenant", help="tenant slug")
    listing.add_argument("--number", help="digits of the dialled or caller number")
    listing.add_argument("--since", help="started at or after (ISO 8601 or Unix seconds)")
    listing.add_argument("--until", help="started before (ISO 8601 or Unix seconds)")
    listing.add_argument("--outcome", help="normal, caller_hangup, transferred, model_error ...")
    listing.add_argument("--status", choices=("in_progress", "complete", "interrupted"))
    listing.add_argument("--min-score", type=float, help="evaluated calls scoring at least this (0-100)")
    listing.add_argument("--max-score", type=float, help="evaluated calls scoring at most this (0-100)")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--offset", type=int, default=0)
    listing.add_argument("--json", action="store_true", help="print the API's JSON")
    listing.set_defaults(func=_run(_list))

    show = actions.add_parser("show", parents=[common], help="one call's metadata and transcript")
    show.add_argument("call_id", metavar="ID")
    show.add_argument("--json", action="store_true", help="print the API's JSON")
    show.set_defaults(func=_run(_show))

    recordings = subparsers.add_parser("recordings", help="download call recordings")
    rec_actions = recordings.add_subparsers(dest="recordings_action", metavar="ACTION")
    recordings.set_defaults(func=lambda _args: (recordings.print_help(), 2)[1])
    get = rec_actions.add_parser("get", parents=[common], help="save a call's stereo WAV")
    get.add_argument("call_id", metavar="ID")
    get.add_argument("-o", "--output", type=Path, required=True, help="file to write ('-' for stdout)")
    get.set_defaults(func=_run(_get))


def _run(action: Any) -> Any:
    def func(args: argparse.Namespace) -> int:
        try:
            client = _client(args)
            return int(action(client, args) or 0)
        except ConfigError as exc:
            print(f"callbridge: {exc}", file=sys.stderr)
            return 2
        except CommandError as exc:
            print(f"callbridge: {exc}", file=sys.stderr)
            return 1

    return func


class OpsClient:
    def __init__(self, base_url: str, token: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    def url(self, path: str) -> str:
        return urllib.parse.urljoin(self.base_url + "/", path.lstrip("/"))

    def open(self, url: str, *, auth: bool = True) -> Any:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        if auth:
            if not self.token:
                raise CommandError("no ops token: pass --token or set CALLBRIDGE_OPS_TOKEN")
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            return urllib.request.urlopen(request, timeout=_TIMEOUT_SECONDS)
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error") or exc.reason
            except ValueError:
                message = exc.reason
            raise CommandError(f"HTTP {exc.code}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CommandError(f"cannot reach {self.base_url}: {reason}") from None

    def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        url = self.url(path)
        if params:
            query = {k: v for k, v in params.items() if v is not None}
            url += "?" + urllib.parse.urlencode(query)
        with self.open(url) as resp:
            return json.loads(resp.read())


def _client(args: argparse.Namespace) -> OpsClient:
    url = args.url or os.environ.get("CALLBRIDGE_OPS_URL")
    token = args.token or os.environ.get("CALLBRIDGE_OPS_TOKEN")
    if url is None or token is None:
        settings = load_settings(args.config)
        if url is None:
            url = settings.ops.public_url or f"http://127.0.0.1:{settings.http.port}"
        if token is None and settings.ops.admin_token is not None:
            token = settings.ops.admin_token.get_secret_value()
    return OpsClient(url, token)


def _call_path(call_id: str) -> str:
    return "/api/calls/" + urllib.parse.quote(call_id, safe="")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    return f"{s // 60}:{s % 60:02d}"


def _list(client: OpsClient, args: argparse.Namespace) -> int:
    page = client.get_json("/api/calls", {
        "tenant": args.tenant, "number": args.number, "since": args.since, "until": args.until,
        "outcome": args.outcome, "status": args.status, "limit": args.limit, "offset": args.offset,
        "min_score": args.min_score, "max_score": args.max_score,
    })
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    rows = [("STARTED (UTC)", "TENANT", "DIALLED", "CALLER", "DURATION", "OUTCOME", "STATUS", "SCORE", "ID")]
    for c in page["calls"]:
        rows.append(((c["started_at"] or "")[:19].replace("T", " "), c["tenant"], c["dialled"],
                     c["caller_id"] or "-", _duration(c["duration"]), c["outcome"] or "-", c["status"],
                     _score(c.get("evaluation")), c["call_id"]))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    shown = len(page["calls"])
    offset = f" from offset {page['offset']}" if page["offset"] else ""
    print(f"{shown} of {page['total']} call(s){offset}")
    return 0


def _score(evaluation: dict[str, Any] | None) -> str:
    if not evaluation:
        return "-"
    if evaluation.get("status") == "complete":
        return str(evaluation.get("overall_score"))
    return str(evaluation.get("status"))


def _show(client: OpsClient, args: argparse.Namespace) -> int:
    call = client.get_json(_call_path(args.call_id))
    transcript = client.get_json(_call_path(args.call_id) + "/transcript")
    evaluation = client.get_json(_call_path(args.call_id) + "/evaluation") if call.get("evaluation") else None
    if args.json:
        print(json.dumps({"call": call, "transcript": transcript["entries"], "evaluation": evaluation}, indent=2))
        return 0
    recording = call["recording"]
    fields = [
        ("call", call["call_id"]), ("tenant", call["tenant"]), ("transport", call["transport"]),
        ("dialled", call["dialled"]), ("caller", call["caller_id"] or "-"),
        ("started", call["started_at"]), ("answered", call["answered_at"] or "-"),
        ("ended", call["ended_at"] or "-"), ("duration", _duration(call["duration"])),
        ("outcome", call["outcome"] or "-"), ("status", call["status"]),
        ("barge-ins", call["barge_ins"]), ("model", call["model"]), ("voice", call["voice"]),
        ("recording", f"{recording['seconds']:.1f} s, {recording['bytes']} bytes, {recording['storage']}"
         if recording["available"] else "none"),
    ]
    if call.get("transfer_target"):
        fields.append(("transferred to", call["transfer_target"]))
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        print(f"{key.ljust(width)}  {value}")
    entries = transcript["entries"]
    if entries:
        print()
    for entry in entries:
        cut = " (cut off)" if entry.get("interrupted") else ""
        print(f"[{_duration(entry.get('offset') or 0)}] {entry.get('role')}{cut}: {entry.get('text')}")
    if evaluation is not None:
        _print_evaluation(evaluation)
    return 0


def _print_evaluation(evaluation: dict[str, Any]) -> None:
    print()
    status = evaluation.get("status")
    if status == "pending":
        print("evaluation  pending")
        return
    if status == "failed":
        print(f"evaluation  failed: {evaluation.get('evaluation_error')}")
        return
    ended = "yes" if evaluation.get("agent_ended_call") else "no"
    score, model = evaluation.get("overall_score"), evaluation.get("model")
    print(f"evaluation  {score}/100 ({model}; agent ended the call: {ended})")
    for c in evaluation.get("criteria") or []:
        print(f"  {c.get('name')} (weight {c.get('weight')}): {c.get('score')}  {c.get('rationale')}")
    for title in ("strengths", "weaknesses"):
        for item in evaluation.get(title) or []:
            print(f"  {title[:-1]}: {item}")
    if evaluation.get("summary"):
        print(f"  summary: {evaluation['summary']}")


def _get(client: OpsClient, args: argparse.Namespace) -> int:
    link = client.get_json(_call_path(args.call_id) + "/recording/link")
    url = client.url(link["url"]) if link["url"].startswith("/") else link["url"]
    # The link carries its own authorisation (signature or presigned URL): no bearer header, which
    # an object store would refuse alongside its own query signature.
    with client.open(url, auth=False) as resp:
        if str(args.output) == "-":
            written = _copy(resp, sys.stdout.buffer)
        else:
            tmp = args.output.with_name(args.output.name + ".part")
            with open(tmp, "wb") as out:
                written = _copy(resp, out)
            os.replace(tmp, args.output)
    if str(args.output) != "-":
        print(f"wrote {written} bytes to {args.output}", file=sys.stderr)
    return 0


def _copy(src: Any, dst: BinaryIO) -> int:
    total = 0
    while chunk := src.read(_CHUNK_BYTES):
        dst.write(chunk)
        total += len(chunk)
    return total
