"""Source networks: the allow-list of a listener, and what "open to the world" means.

The default allow-list is what a PBX or carrier gateway on the same network uses: loopback and the
private ranges (RFC 1918 for IPv4, RFC 4193 unique-local for IPv6). A listener whose list reaches
beyond them is *public*: in production it needs authentication or an explicit ``allow_public``.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

PRIVATE_NETWORKS: tuple[str, ...] = (
    "127.0.0.0/8",  # loopback
    "::1/128",
    "10.0.0.0/8",  # RFC 1918
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",  # RFC 4193 unique local
)


def private_networks() -> list[Network]:
    return [ipaddress.ip_network(n) for n in PRIVATE_NETWORKS]


def parse_networks(value: object) -> object:
    """A list of networks as given: a list, a JSON list, or "10.0.0.0/8, 192.168.1.7" (one
    environment variable). A bare address is a network of one."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError as exc:
                raise ValueError(f"not valid JSON: {exc}") from None
        return [item.strip() for item in text.replace(";", ",").split(",") if item.strip()]
    return value


def network(value: object) -> Network:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    try:
        return ipaddress.ip_network(str(value).strip(), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP network (like 10.0.0.0/8 or 192.0.2.7)") from None


def is_private(networks: Iterable[Network]) -> bool:
    """True when every network lies inside the loopback and private ranges."""
    private = private_networks()
    return all(
        any(net.version == p.version and net.subnet_of(p) for p in private)  # type: ignore[arg-type]
        for net in networks
    )


def describe(networks: Iterable[Network]) -> str:
    nets = list(networks)
    if not nets:
        return "nobody (empty allow-list)"
    if any(net.prefixlen == 0 for net in nets):
        return "any address"
    return ", ".join(str(net) for net in nets)


class SourceNetworks:
    """Membership test for one listener's allow-list. IPv4-mapped IPv6 peers (``::ffff:a.b.c.d``,
    what a dual-stack socket reports for IPv4 clients) are checked as their IPv4 address."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)
        self._v4 = tuple(n for n in self.networks if n.version == 4)
        self._v6 = tuple(n for n in self.networks if n.version == 6)

    def allows(self, host: str | None) -> bool:
        if not host:
            return False  # a peer without an address (a Unix socket is never configured) is refused
        try:
            address: Address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        nets = self._v4 if address.version == 4 else self._v6
        return any(address in net for net in nets)
