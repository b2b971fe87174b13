"""Source allow-lists, the per-source token bucket, and rate-limited refusal logging."""

from __future__ import annotations

import ipaddress
import logging

import pytest
from prometheus_client import CollectorRegistry

from bridge.ops.metrics import Metrics
from bridge.security.networks import describe, is_private, network, private_networks
from bridge.security.sources import MAX_SOURCES, SourceGate, TokenBucket, peer_host


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _gate(allow: list[str], clock: Clock, rate: float = 2.0, burst: int = 3) -> tuple[SourceGate, Metrics]:
    metrics = Metrics(CollectorRegistry())
    return SourceGate("agi", [network(n) for n in allow], metrics, rate=rate, burst=burst,
                      log_interval=10.0, clock=clock), metrics


def _refused(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("callbridge_connections_refused_total",
                                              {"listener": "agi", "reason": reason})
    return value or 0.0


def test_allow_list_membership() -> None:
    gate, metrics = _gate(["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"], Clock())
    for host in ("127.0.0.1", "10.200.1.2", "::ffff:10.1.1.1", "fd12::1", "fd12::1%eth0"):
        assert gate.allows_peer(host), host
    for host in ("127.0.0.2", "192.168.1.1", "::1", "2001:db8::1", "::ffff:8.8.8.8", None, "", "nonsense"):
        assert not gate.allows_peer(host), host
    assert _refused(metrics, "network") == 8


def test_private_defaults_and_what_counts_as_public() -> None:
    defaults = private_networks()
    assert is_private(defaults)
    assert not is_private([*defaults, network("0.0.0.0/0")])
    assert not is_private([network("192.0.2.7")])
    assert is_private([network("192.168.10.5"), network("10.20.0.0/16"), network("fd00::/8")])
    assert describe([network("0.0.0.0/0")]) == "any address"
    assert network("192.0.2.7") == ipaddress.ip_network("192.0.2.7/32")
    with pytest.raises(ValueError, match="not an IP network"):
        network("pbx.example.com")


def test_token_bucket_rate_and_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.4)  # 0.8 of a token
    assert bucket.take(0.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # refills to burst only


def test_each_source_has_its_own_bucket_and_refusals_are_logged_once_per_interval(caplog) -> None:
    clock = Clock()
    gate, metrics = _gate(["127.0.0.0/8"], clock)
    with caplog.at_level(logging.WARNING, logger="bridge.security.sources"):
        flood = [gate.allows_setup("127.0.0.2") for _ in range(50)]
        assert flood.count(True) == 3
        assert all(gate.allows_setup("127.0.0.1") for _ in range(3))  # another source is not starved
        clock.now += 11
        assert gate.allows_setup("127.0.0.2")
        for _ in range(5):
            gate.allows_setup("127.0.0.2")
    assert _refused(metrics, "rate") == 47 + 3
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "over the per-source set-up rate" in lines[0] and "127.0.0.2" in lines[0]
    assert "and 46 more since the last report" in lines[1]


def test_sources_remembered_are_bounded() -> None:
    gate, _ = _gate(["0.0.0.0/0"], Clock(), rate=1.0, burst=1)
    for i in range(MAX_SOURCES + 10):
        gate.allows_setup(str(ipaddress.ip_address(i + 1)))
    assert len(gate._buckets) == MAX_SOURCES


def test_peer_host() -> None:
    assert peer_host(("10.0.0.1", 5060)) == "10.0.0.1"
    assert peer_host(("::1", 5060, 0, 0)) == "::1"
    assert peer_host(None) is None and peer_host("/run/sock") is None
