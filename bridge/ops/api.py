"""The ops API and web page: find calls, read their transcript, fetch and play their recording.

Routes (all JSON unless said otherwise; every ``/api`` route but the signed-link one needs
``Authorization: Bearer <token>``)::

    GET /api/whoami                          {"role": "admin" | "tenant", "tenant": slug | null}
    GET /api/calls?tenant=&number=&since=&until=&outcome=&status=&limit=&offset=
                                             {"calls": [...], "total", "limit", "offset"}
    GET /api/calls/{id}                      one call's metadata
    GET /api/calls/{id}/transcript           {"call_id", "entries": [{"role", "text", "at", "offset"}]}
    GET /api/calls/{id}/waveform             min/max envelope of both channels
    GET /api/calls/{id}/recording            audio/wav with Range support (RFC 9110 section 14),
                                             or 307 to a presigned object-store URL
    GET /api/calls/{id}/recording/link       {"url", "expires_at"}: a short-lived URL needing no
                                             header (what the page's <audio> element plays)
    GET /api/recordings/{id}.wav?exp=&sig=   the signed form of the recording
    GET /ops/                                the web page (static; it asks for a token)

Tokens (RFC 6750 bearer): the admin token sees every tenant; a tenant token sees only calls of
its tenant. A missing or unknown token gets 401 and no data; asking a tenant token for another
tenant's list gets 403; another tenant's call id answers 404, as if it did not exist. Tokens are
compared in constant time. ``since``/``until`` take ISO 8601 or Unix seconds; ``number`` matches
digits anywhere in the dialled or the caller number.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import importlib.resources
import json
import logging
import secrets
import time
from collections.abc import Callable

from aiohttp import web

from bridge.ops.metrics import OUTCOMES
from bridge.ops.tokens import BearerTokens, Principal
from bridge.records.archive import CallArchive
from bridge.records.callstore import CallQuery, CallRecord, CallStatus, CallStoreError, valid_call_id
from bridge.records.objectstore import ObjectStoreError
from bridge.records.views import iso, record_view
from bridge.settings import OpsSettings

log = logging.getLogger(__name__)

WEB_ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# The page loads nothing from elsewhere; recordings may come from the object store's origin.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
            "img-src 'self' data:; media-src 'self' blob: http: https:; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'")
_JSON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
MAX_OFFSET = 1_000_000_000  # rows skipped by one page request


def _error(cls: type[web.HTTPException], message: str, **headers: str) -> web.HTTPException:
    return cls(text=json.dumps({"error": message}), content_type="application/json",
               headers={**_JSON_HEADERS, **headers})


def parse_time(value: str, name: str) -> float:
    """ISO 8601 (naive means UTC) or Unix seconds."""
    try:
        return float(value)
    except ValueError:
        pass
    text = value.strip()
    if "T" in text and " " in text:
        text = text.replace(" ", "+")  # the "+" of an offset, decoded as a space in a query string
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise _error(web.HTTPBadRequest, f"{name}: not an ISO 8601 time or Unix seconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


class OpsApi:
    def __init__(self, archive: CallArchive, settings: OpsSettings, *,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.archive = archive
        self.settings = settings
        self.wall_clock = wall_clock
        # Keys of signed recording links: the configured ones (shared by every instance; the first
        # signs, each verifies, so a rotated-out key keeps its links valid while it stays listed),
        # else one per process (links then break on a restart or at another instance).
        self._link_keys = [key.get_secret_value().encode() for key in settings.link_secrets] \
            or [secrets.token_bytes(32)]
        self.tokens = BearerTokens(settings)
        if not self.tokens:
            log.warning("ops API has no tokens configured: every request will be refused")
        self._assets: dict[str, bytes] = {}

    def install(self, app: web.Application) -> None:
        web_dir = importlib.resources.files("bridge.ops") / "web"
        for name in WEB_ASSETS:
            self._assets[name] = (web_dir / name).read_bytes()
        r = app.router
        r.add_get("/api/whoami", self._whoami)
        r.add_get("/api/calls", self._list)
        r.add_get("/api/calls/{call_id}", self._show)
        r.add_get("/api/calls/{call_id}/transcript", self._transcript)
        r.add_get("/api/calls/{call_id}/waveform", self._waveform)
        r.add_get("/api/calls/{call_id}/recording", self._recording)
        r.add_get("/api/calls/{call_id}/recording/link", self._recording_link)
        r.add_get("/api/recordings/{call_id}.wav", self._signed_recording)
        r.add_get("/ops", self._ops_redirect)
        r.add_get("/ops/", self._page)
        r.add_get("/ops/{asset}", self._asset)

    # ------------------------------------------------------------------ auth
    def authenticate(self, request: web.Request) -> Principal:
        return self.tokens.authenticate(request)

    async def _call(self, request: web.Request) -> tuple[Principal, CallRecord]:
        principal = self.authenticate(request)
        call_id = request.match_info["call_id"]
        if not valid_call_id(call_id):
            raise _error(web.HTTPNotFound, "no such call")
        try:
            record = await self.archive.get(call_id)
        except CallStoreError as exc:
            log.error("call index unavailable: %s", exc)
            raise _error(web.HTTPServiceUnavailable, "call index unavailable") from None
        if record is None or (principal.tenant is not None and record.tenant != principal.tenant):
            raise _error(web.HTTPNotFound, "no such call")
        return principal, record

    # ------------------------------------------------------------------ API
    async def _whoami(self, request: web.Request) -> web.Response:
        principal = self.authenticate(request)
        return web.json_response({"role": "admin" if principal.admin else "tenant",
                                  "tenant": principal.tenant}, headers=_JSON_HEADERS)

    def _query(self, request: web.Request, principal: Principal) -> CallQuery:
        q = request.query
        tenant = q.get("tenant") or None
        if principal.tenant is not None:
            if tenant is not None and tenant != principal.tenant:
                raise _error(web.HTTPForbidden, "this token sees only its own tenant's calls")
            tenant = principal.tenant
        outcome = q.get("outcome") or None
        if outcome is not None and outcome not in OUTCOMES:
            raise _error(web.HTTPBadRequest, f"outcome must be one of {', '.join(OUTCOMES)}")
        status = q.get("status") or None
        if status is not None and status not in {s.value for s in CallStatus}:
            raise _error(web.HTTPBadRequest, "status must be in_progress, complete or interrupted")
        try:
            limit = int(q.get("limit", "50"))
            offset = int(q.get("offset", "0"))
        except ValueError:
            raise _error(web.HTTPBadRequest, "limit and offset must be integers") from None
        # SQLite and PostgreSQL take a signed 64-bit OFFSET; far below that, no index is that long.
        if not 1 <= limit <= self.settings.max_page_size or not 0 <= offset <= MAX_OFFSET:
            raise _error(web.HTTPBadRequest,
                         f"limit must be 1..{self.settings.max_page_size}, offset 0..{MAX_OFFSET}")
        return CallQuery(
            tenant=tenant,
            number=q.get("number") or None,
            since=parse_time(q["since"], "since") if q.get("since") else None,
            until=parse_time(q["until"], "until") if q.get("until") else None,
            outcome=outcome,
            status=CallStatus(status) if status else None,
            limit=limit,
            offset=offset,
        )

    async def _list(self, request: web.Request) -> web.Response:
        principal = self.authenticate(request)
        query = self._query(request, principal)
        try:
            page = await self.archive.search(query)
        except CallStoreError as exc:
            log.error("call index unavailable: %s", exc)
            raise _error(web.HTTPServiceUnavailable, "call index unavailable") from None
        return web.json_response({
            "calls": [record_view(r) for r in page.calls],
            "total": page.total,
            "limit": query.limit,
            "offset": query.offset,
        }, headers=_JSON_HEADERS)

    async def _show(self, request: web.Request) -> web.Response:
        _, record = await self._call(request)
        base = f"/api/calls/{record.call_id}"
        view = record_view(record)
        view["links"] = {"transcript": f"{base}/transcript", "waveform": f"{base}/waveform",
                         "recording": f"{base}/recording" if record.recorded else None}
        return web.json_response(view, headers=_JSON_HEADERS)

    async def _transcript(self, request: web.Request) -> web.Response:
        _, record = await self._call(request)
        entries = await self.archive.transcript(record)
        out = [{"role": e.get("role"), "text": e.get("text"),
                "at": iso(e["at"]) if isinstance(e.get("at"), (int, float)) else e.get("at"),
                "offset": e.get("offset")} for e in entries]
        return web.json_response({"call_id": record.call_id, "entries": out}, headers=_JSON_HEADERS)

    async def _waveform(self, request: web.Request) -> web.Response:
        _, record = await self._call(request)
        peaks = await self.archive.peaks(record) if record.recorded else None
        if peaks is None:
            raise _error(web.HTTPNotFound, "no waveform for this call")
        return web.json_response(peaks, headers={**_JSON_HEADERS, "Cache-Control": "private, max-age=300"})

    async def _recording(self, request: web.Request) -> web.StreamResponse:
        _, record = await self._call(request)
        return await self._serve_recording(record)

    async def _serve_recording(self, record: CallRecord) -> web.StreamResponse:
        if record.status is CallStatus.IN_PROGRESS:
            raise _error(web.HTTPConflict, "the call is still in progress")
        if not record.recorded:
            raise _error(web.HTTPNotFound, "this call has no recording")
        path = await self.archive.local_file(record, ".wav")
        if path is not None:
            # FileResponse answers Range and If-Range itself (206 / 416) and sends with sendfile.
            return web.FileResponse(path, headers={
                "Content-Type": "audio/wav",
                "Content-Disposition": f'inline; filename="{record.call_id}.wav"',
                "Cache-Control": "private, no-store",
                "X-Content-Type-Options": "nosniff",
            })
        try:
            url = await self.archive.presigned_recording(record)
        except ObjectStoreError as exc:
            log.error("cannot presign call %s: %s", record.call_id, exc)
            raise _error(web.HTTPServiceUnavailable, "object store unavailable") from None
        if url is None:
            raise _error(web.HTTPNotFound, "recording not found")
        raise web.HTTPTemporaryRedirect(url, headers={"Cache-Control": "no-store"})

    def _signature(self, call_id: str, expires: int, key: bytes | None = None) -> str:
        message = f"{call_id}\n{expires}".encode()
        return hmac.new(key or self._link_keys[0], message, hashlib.sha256).hexdigest()

    def _link_valid(self, call_id: str, expires: int, signature: str) -> bool:
        given = signature.encode()
        ok = False
        for key in self._link_keys:  # every key compared, in constant time
            ok |= hmac.compare_digest(given, self._signature(call_id, expires, key).encode())
        return ok

    async def _recording_link(self, request: web.Request) -> web.Response:
        _, record = await self._call(request)
        if record.status is CallStatus.IN_PROGRESS:
            raise _error(web.HTTPConflict, "the call is still in progress")
        if not record.recorded:
            raise _error(web.HTTPNotFound, "this call has no recording")
        seconds = self.settings.link_seconds
        expires = int(self.wall_clock()) + seconds
        if await self.archive.local_file(record, ".wav") is not None:
            signature = self._signature(record.call_id, expires)
            url = f"/api/recordings/{record.call_id}.wav?exp={expires}&sig={signature}"
            if self.settings.public_url:
                url = self.settings.public_url.rstrip("/") + url
        else:
            try:
                presigned = await self.archive.presigned_recording(record, seconds)
            except ObjectStoreError as exc:
                log.error("cannot presign call %s: %s", record.call_id, exc)
                raise _error(web.HTTPServiceUnavailable, "object store unavailable") from None
            if presigned is None:
                raise _error(web.HTTPNotFound, "recording not found")
            url = presigned
        return web.json_response({"url": url, "expires_at": iso(expires)}, headers=_JSON_HEADERS)

    async def _signed_recording(self, request: web.Request) -> web.StreamResponse:
        call_id = request.match_info["call_id"]
        try:
            expires = int(request.query.get("exp", ""))
        except ValueError:
            raise _error(web.HTTPForbidden, "invalid link") from None
        signature = request.query.get("sig", "")
        if (not valid_call_id(call_id) or expires < self.wall_clock()
                or not self._link_valid(call_id, expires, signature)):
            raise _error(web.HTTPForbidden, "invalid or expired link")
        record = await self.archive.get(call_id)
        if record is None:
            raise _error(web.HTTPNotFound, "no such call")
        return await self._serve_recording(record)

    # ------------------------------------------------------------------ page
    async def _ops_redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/ops/")

    async def _page(self, request: web.Request) -> web.Response:
        return self._asset_response("index.html")

    async def _asset(self, request: web.Request) -> web.Response:
        name = request.match_info["asset"]
        if name not in WEB_ASSETS:
            raise web.HTTPNotFound()
        return self._asset_response(name)

    def _asset_response(self, name: str) -> web.Response:
        headers = {
            "Content-Type": WEB_ASSETS[name],
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        if name == "index.html":
            headers["Content-Security-Policy"] = PAGE_CSP
        return web.Response(body=self._assets[name], headers=headers)

