"""The gate's counts and tables, driven by a Clock."""

import resource

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from wslb.metrics import Metrics
from wslb.proxy.errors import HandshakeRefused
from wslb.proxy.gate import (
    RESERVED_DESCRIPTORS,
    SWEEP_INTERVAL,
    UNKNOWN,
    Gate,
    addressKey,
    connectionLimit,
)
from wslb.proxy.head import readHead


class Leg:
    """A connection as the gate sees it: its transport's peer."""

    def __init__(self, host):
        peer = (IPv6Address if ":" in host else IPv4Address)("TCP", host, 40000)
        self.transport = type("Transport", (), {"getPeer": lambda self: peer})()


def handshake(origin=None):
    """A handshake's head, as the gate reads it: its headers."""
    lines = [b"GET / HTTP/1.1", b"Host: wslb.test"]
    if origin is not None:
        lines.append(b"Origin: " + origin.encode())
    return readHead(b"\r\n".join(lines))


def admitted(gate, leg, origin=None):
    """None when ``gate`` admits the handshake, else the HandshakeRefused."""
    try:
        gate.admit(leg, handshake(origin))
    except HandshakeRefused as refused:
        return refused
    return None


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


def test_per_ip_rate_refuses_with_429_until_the_bucket_refills():
    clock, metrics = Clock(), Metrics()
    gate = Gate(100, (), metrics, clock, perIpRate=2)
    leg, neighbour = Leg("2001:db8::1"), Leg("2001:db8::2")  # one /64: one bucket
    assert [admitted(gate, leg), admitted(gate, neighbour)] == [None, None]  # a burst of 2
    refused = admitted(gate, leg)
    assert (refused.code, refused.headers) == (429, [("Retry-After", "1")])
    assert admitted(gate, Leg("10.0.0.1")) is None  # another address: its own bucket
    clock.advance(0.25)
    assert admitted(gate, neighbour) is not None
    clock.advance(0.25)  # 2 a second: one more token
    assert admitted(gate, neighbour) is None
    assert admitted(gate, leg) is not None
    assert metrics.limitHits.labels("per_ip_rate")._value.get() == 3


def test_a_rate_below_one_a_second_still_allows_one_then_spaces_them():
    clock = Clock()
    gate = Gate(100, (), Metrics(), clock, perIpRate=0.5)
    leg = Leg("203.0.113.7")
    assert admitted(gate, leg) is None
    clock.advance(1.5)
    assert admitted(gate, leg).code == 429  # refused ones cost nothing...
    clock.advance(0.5)
    assert admitted(gate, leg) is None  # ...so one is allowed every 2 s
    clock.advance(10)
    assert [admitted(gate, leg) is None for _ in range(2)] == [True, False]  # burst: 1


@pytest.mark.parametrize("origin, allowed", [
    ("https://app.example.com", True),
    ("HTTPS://APP.EXAMPLE.COM", True),
    ("https://a.b.example.com", True),  # the wildcard takes one or more labels
    ("https://example.com", False),  # but not none
    ("https://evil-example.com", False),
    ("https://app.example.com.evil.test", False),
    ("http://app.example.com", False),  # the scheme counts
    ("https://app.example.com:8443", False),  # and the port
    ("https://exact.test", True),
    ("https://sub.exact.test", False),
    ("null", False),  # a sandboxed page: only when listed
])
def test_only_allowed_origins_are_admitted(origin, allowed):
    gate = Gate(100, ("https://*.example.com", "https://exact.test"), Metrics(), Clock())
    refused = admitted(gate, Leg("10.0.0.1"), origin)
    assert (refused is None) == allowed
    if refused is not None:
        assert refused.code == 403


def test_any_origin_without_a_list_and_null_when_listed():
    assert admitted(Gate(100, (), Metrics(), Clock()), Leg("10.0.0.1"), "https://x.test") is None
    nullGate = Gate(100, ("null",), Metrics(), Clock())
    assert admitted(nullGate, Leg("10.0.0.1"), "null") is None
    assert admitted(nullGate, Leg("10.0.0.1")) is None  # no Origin: not a browser
    assert admitted(nullGate, Leg("10.0.0.1"), "https://x.test").code == 403


def test_outcomes_are_counted_by_status():
    metrics = Metrics()
    gate = Gate(100, (), metrics, Clock())
    gate.accepted()
    gate.accepted()
    gate.refused(429)
    handshakes = metrics.handshakes
    assert (handshakes.labels("ok")._value.get(), handshakes.labels("429")._value.get()) == (2, 1)
