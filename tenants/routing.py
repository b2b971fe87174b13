"""The routing decision every transport shares: which tenant answers a dialled number, if any.

Transports refuse an unrouted call their own way (FastAGI sets a status and hangs up, a WebSocket
closes with a code, ...); the decision itself is made here so that it is the same everywhere.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tenants.directory import MatchKind, Resolution, TenantDirectory
from tenants.numbers import MAX_DIALLED_CHARS, NumberError, normalize_number

if TYPE_CHECKING:
    from tenants.settings import TenantSettings

log = logging.getLogger(__name__)

DEFAULT_PATTERN = "*"  # what Resolution.pattern says when the default tenant answered


async def route(directory: TenantDirectory, dialled: str, settings: TenantSettings) -> Resolution | None:
    """The tenant answering ``dialled``, or None to refuse the call.

    Exact number, then the longest prefix pattern (both in the directory); failing those, the
    ``unknown_number`` policy: ``refuse``, or ``default`` to send the call to ``default_tenant``
    (which must exist and be active, else the call is refused). DirectoryUnavailable propagates:
    a store that cannot answer is not the same as an unknown number. A value longer than
    ``tenants.numbers.MAX_DIALLED_CHARS`` is refused whatever the policy: no telephone number or
    SIP URI is that long, and nothing of it is looked at or kept.
    """
    if len(dialled) > MAX_DIALLED_CHARS:
        log.info("dialled value of %d characters refused unread", len(dialled))
        return None
    try:
        number = normalize_number(dialled, settings.default_country)
    except NumberError as exc:
        log.info("dialled value not usable as a number: %s", exc)
        number = None
    if number is not None:
        found = await directory.explain(number)
        if found is not None:
            return found
    if settings.unknown_number != "default" or not settings.default_tenant:
        return None
    tenant = await directory.tenant_by_slug(settings.default_tenant)
    if tenant is None or not tenant.active:
        log.warning("default tenant %r is missing or inactive; refusing the call", settings.default_tenant)
        return None
    return Resolution(tenant, number if number is not None else dialled.strip(), MatchKind.DEFAULT,
                      DEFAULT_PATTERN)
