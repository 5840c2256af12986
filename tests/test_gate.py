"""The gate's counts and tables, driven by a Clock."""

import resource

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from wslb.metrics import Metrics
from wslb.proxy.gate import (
    RESERVED_DESCRIPTORS,
    SWEEP_INTERVAL,
    UNKNOWN,
    Gate,
    addressKey,
    connectionLimit,
)


class Leg:
    """A connection as the gate sees it: its transport's peer."""

    def __init__(self, host):
        peer = (IPv6Address if ":" in host else IPv4Address)("TCP", host, 40000)
        self.transport = type("Transport", (), {"getPeer": lambda self: peer})()


@pytest.mark.parametrize("host, key", [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ("fe80::1%eth0", "fe80::/64"),
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("unix", "unix"),
])
def test_ipv6_clients_are_counted_per_64(host, key):
    assert addressKey(host) == key


def test_per_ip_connections_at_accept_count_ipv6_per_64():
    gate = Gate(100, (), Metrics(), Clock(), perIpConnections=2)
    counted = [gate.accept(Leg(f"2001:db8::{i}")) for i in range(3)]
    assert counted == ["2001:db8::/64", "2001:db8::/64", None]
    assert gate.accept(Leg("2001:db8:0:1::1")) == "2001:db8:0:1::/64"
    assert gate.connections == 3
    gate.connectionLost(counted[0])
    gate.connectionLost(None)  # the refused one: never counted
    assert gate.connections == 2
    assert gate.accept(Leg("2001:db8::9")) == "2001:db8::/64"


def test_max_connections_at_accept():
    metrics = Metrics()
    gate = Gate(2, (), metrics, Clock())
    assert [gate.accept(Leg("10.0.0.1")) for _ in range(3)] == ["10.0.0.1", "10.0.0.1", None]
    assert metrics.limitHits.labels("max_connections")._value.get() == 1
    gate.connectionLost("10.0.0.1")
    assert gate.accept(Leg("10.0.0.2")) == "10.0.0.2"


def test_behind_a_proxy_header_the_address_counts_once_known():
    gate = Gate(100, (), Metrics(), Clock(), perIpConnections=1, proxied=True)
    legs = [Leg("203.0.113.7"), Leg("203.0.113.7"), Leg("203.0.113.7")]
    assert [gate.accept(leg) for leg in legs] == [UNKNOWN] * 3  # no address before the header
    assert gate.identified(legs[0]) == "203.0.113.7"
    assert gate.identified(legs[1]) is None  # refused: counted out at once
    assert gate.connections == 2
    gate.connectionLost(None)  # legs[1] closing
    gate.connectionLost(UNKNOWN)  # legs[2]: silent, never identified
    gate.connectionLost("203.0.113.7")
    assert gate.connections == 0 and gate._byAddress == {}


def test_rate_buckets_are_forgotten_on_a_timer_not_on_the_hot_path():
    clock = Clock()
    gate = Gate(100, (), Metrics(), clock, perIpRate=1)
    sweeper = gate.sweeper()
    sweeper.startService()
    try:
        rate = gate._rate
        for i in range(50):
            assert rate.allow(f"10.0.0.{i}")
        assert not rate.allow("10.0.0.1")
        assert len(rate._buckets) == 50
        clock.advance(SWEEP_INTERVAL)
        assert rate._buckets == {}  # all refilled by then
        assert rate.allow("10.0.0.1")
    finally:
        sweeper.stopService()
    assert Gate(100, (), Metrics(), clock).sweeper() is None


@pytest.mark.parametrize("configured, descriptors, limit", [
    (10000, 20000, (20000 - RESERVED_DESCRIPTORS) // 2),
    (100, 20000, 100),
    (10000, 1024, (1024 - RESERVED_DESCRIPTORS) // 2),
    (10000, resource.RLIM_INFINITY, 10000),
])
def test_max_connections_follows_the_open_file_limit_and_is_logged(configured, descriptors, limit):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert connectionLimit(configured, descriptors) == limit
    finally:
        globalLogPublisher.removeObserver(events.append)
    [logged] = [e for e in events if e.get("limit") == limit]
    assert logged["configured"] == configured
