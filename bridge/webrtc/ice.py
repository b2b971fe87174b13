"""Which local addresses WebRTC offers as ICE host candidates.

aiortc gathers host candidates through aioice, which offers every address of every interface
except loopback. A deployment may need fewer (a host with interfaces the browsers cannot reach)
or loopback itself (a browser on the same host). ``webrtc.host_addresses`` names them; when set,
aioice's host-address lookup answers with exactly those, for every peer connection of the process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import aioice.ice

_Lookup = Callable[[bool, bool], list[str]]


class HostAddresses:
    def __init__(self, addresses: Sequence[str]) -> None:
        self.addresses = list(addresses)
        self._saved: Any = None

    def lookup(self, use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in self.addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    def install(self) -> None:
        if not self.addresses or self._saved is not None:
            return
        self._saved = aioice.ice.get_host_addresses
        aioice.ice.get_host_addresses = self.lookup

    def uninstall(self) -> None:
        if self._saved is not None:
            aioice.ice.get_host_addresses = self._saved
            self._saved = None
