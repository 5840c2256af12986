"""Limits (DESIGN §4 [listen], §8): each answered clearly, none disturbing others."""

import pytest
import pytest_twisted
from _echo_helpers import closeAll
from _polling import waitFor
from _raw_ws import connectRaw, upgradeRequest
from _wslb_helpers import rawHandshake, scrape
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

CAPACITY = "pool.capacity=1000"


def connections(n):
    """Fire once the instance counts ``n`` open connections."""
    return lambda metrics: metrics[("wslb_connections", ())] == n


@pytest_twisted.ensureDeferred
async def test_per_ip_connections_are_closed_at_accept_and_rate_gives_429(
        echo_worker, start_wslb, clients):
    wslb = await start_wslb([echo_worker], CAPACITY, "listen.per_ip_connections=2")
    opened = [await wslb.connect(f"k{i}") for i in range(2)]
    clients += opened
    status, _ = await rawHandshake(wslb.port, headers={"X-WSLB-Session": "k3"})
    assert status == 0  # closed before its request was read
    metrics = await scrape(wslb)
    assert metrics[("wslb_limit_hits_total", (("limit", "per_ip_connections"),))] == 1
    closeAll(opened)
    await waitFor(lambda: scrape(wslb), connections(0), what="no connection")
    clients.append(await wslb.connect("k3"))  # the count went down with the closes

    wslb = await start_wslb([echo_worker], CAPACITY, "listen.per_ip_rate=2")
    statuses = [
        (await rawHandshake(wslb.port, headers={"X-WSLB-Session": f"r{i}"}))[0]
        for i in range(6)
    ]
    assert statuses.count(101) >= 2 and 429 in statuses
    metrics = await scrape(wslb)
    assert metrics[("wslb_limit_hits_total", (("limit", "per_ip_rate"),))] >= 1
    assert metrics[("wslb_handshakes_total", (("outcome", "429"),))] >= 1


class Silent(protocol.Protocol):
    """Connects and says nothing; ``closed`` fires with when the server closed it."""

    def connectionMade(self):
        self.closed = defer.Deferred()

    def connectionLost(self, reason):
        self.closed.callback(reactor.seconds())


async def silentConnections(port, n):
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    factory = protocol.Factory.forProtocol(Silent)
    return await defer.gatherResults([endpoint.connect(factory) for _ in range(n)])


def closedWithin(silent, seconds, count):
    """Fire once ``count`` of ``silent`` were closed by the server, within ``seconds``."""
    return waitFor(lambda: [s for s in silent if s.closed.called], lambda c: len(c) >= count,
                   timeout=seconds, what=f"{count} silent connections closed")


@pytest.mark.parametrize("limit, value, opened, closed", [
    ("per_ip_connections", 5, 20, 15),  # all from 127.0.0.1
    ("max_connections", 4, 10, 6),
])
@pytest_twisted.ensureDeferred
async def test_silent_connections_beyond_a_limit_are_closed_at_once(
        echo_worker, start_wslb, raws, limit, value, opened, closed):
    wslb = await start_wslb([echo_worker], CAPACITY, f"listen.{limit}={value}")
    silent = await silentConnections(wslb.port, opened)
    raws += silent
    await closedWithin(silent, 2, closed)
    metrics = await scrape(wslb)
    assert metrics[("wslb_limit_hits_total", (("limit", limit),))] >= closed


@pytest_twisted.ensureDeferred
async def test_behind_a_proxy_header_the_real_address_is_counted(echo_worker, start_wslb, raws):
    """On haproxy: listeners the address comes with the PROXY header, not from the proxy."""
    wslb = await start_wslb([echo_worker], CAPACITY, "listen.per_ip_connections=2",
                            "listen.endpoint=haproxy:tcp:0:interface=127.0.0.1")

    async def fromAddress(address, key):
        raw = await connectRaw(wslb.port)
        raws.append(raw)
        raw.transport.write(f"PROXY TCP4 {address} 127.0.0.1 40000 8080\r\n".encode())
        try:
            return await raw.handshake(upgradeRequest(wslb.port, headers={"X-WSLB-Session": key}))
        except ConnectionError:
            return 0

    assert [await fromAddress("203.0.113.7", f"a{i}") for i in range(3)] == [101, 101, 0]
    assert await fromAddress("203.0.113.8", "b") == 101  # the proxy's own address is shared
    for raw in raws[:2]:
        raw.transport.abortConnection()
    await waitFor(lambda: scrape(wslb), connections(1), what="one connection")
    assert await fromAddress("203.0.113.7", "a3") == 101  # counted down as counted up
