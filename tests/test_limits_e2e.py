"""Limits (DESIGN §4 [listen], §8): each answered clearly, none disturbing others."""

import pytest
import pytest_twisted
from _echo_helpers import closeAll, waitFor
from _raw_ws import connectRaw, upgradeRequest
from _wslb_helpers import rawHandshake, staticWslb
from test_proxy_e2e import scrape
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint


async def limitedWslb(worker, *overrides):
    wslb = await staticWslb([worker], "pool.capacity=1000", *overrides).start()
    await wslb.waitHealthy(1)
    return wslb


@pytest_twisted.ensureDeferred
async def test_per_ip_connections_are_closed_at_accept_and_rate_gives_429(echo_worker):
    clients = []
    wslb = await limitedWslb(echo_worker, "listen.per_ip_connections=2")
    try:
        clients += [await wslb.connect(f"k{i}") for i in range(2)]
        status, _ = await rawHandshake(wslb.port, headers={"X-WSLB-Session": "k3"})
        assert status == 0  # closed before its request was read
        metrics = await scrape(wslb)
        assert metrics[("wslb_limit_hits_total", (("limit", "per_ip_connections"),))] == 1
        closeAll(clients)
        await waitFor(lambda: scrape(wslb), lambda m: m[("wslb_connections", ())] == 0)
        clients.append(await wslb.connect("k3"))  # the count went down with the closes
    finally:
        closeAll(clients)
        await wslb.stop()

    wslb = await limitedWslb(echo_worker, "listen.per_ip_rate=2")
    try:
        statuses = [
            (await rawHandshake(wslb.port, headers={"X-WSLB-Session": f"r{i}"}))[0]
            for i in range(6)
        ]
        assert statuses.count(101) >= 2 and 429 in statuses
        metrics = await scrape(wslb)
        assert metrics[("wslb_limit_hits_total", (("limit", "per_ip_rate"),))] >= 1
        assert metrics[("wslb_handshakes_total", (("outcome", "429"),))] >= 1
    finally:
        await wslb.stop()


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


async def closedWithin(silent, seconds):
    await task.deferLater(reactor, seconds, lambda: None)
    return [s for s in silent if s.closed.called]


@pytest.mark.parametrize("limit, value, opened, closed", [
    ("per_ip_connections", 5, 20, 15),  # all from 127.0.0.1
    ("max_connections", 4, 10, 6),
])
@pytest_twisted.ensureDeferred
async def test_silent_connections_beyond_a_limit_are_closed_at_once(
        echo_worker, limit, value, opened, closed):
    wslb = await limitedWslb(echo_worker, f"listen.{limit}={value}")
    silent = []
    try:
        silent = await silentConnections(wslb.port, opened)
        assert len(await closedWithin(silent, 2)) >= closed
        metrics = await scrape(wslb)
        assert metrics[("wslb_limit_hits_total", (("limit", limit),))] >= closed
    finally:
        for connection in silent:
            connection.transport.abortConnection()
        await wslb.stop()


@pytest_twisted.ensureDeferred
async def test_behind_a_proxy_header_the_real_address_is_counted(echo_worker):
    """On haproxy: listeners the address comes with the PROXY header, not from the proxy."""
    wslb = await limitedWslb(echo_worker, "listen.per_ip_connections=2",
                             "listen.endpoint=haproxy:tcp:0:interface=127.0.0.1")
    raws = []

    async def fromAddress(address, key):
        raw = await connectRaw(wslb.port)
        raws.append(raw)
        raw.transport.write(f"PROXY TCP4 {address} 127.0.0.1 40000 8080\r\n".encode())
        try:
            return await raw.handshake(upgradeRequest(wslb.port, headers={"X-WSLB-Session": key}))
        except ConnectionError:
            return 0

    try:
        assert [await fromAddress("203.0.113.7", f"a{i}") for i in range(3)] == [101, 101, 0]
        assert await fromAddress("203.0.113.8", "b") == 101  # the proxy's own address is shared
        for raw in raws[:2]:
            raw.transport.abortConnection()
        await waitFor(lambda: scrape(wslb), lambda m: m[("wslb_connections", ())] == 1)
        assert await fromAddress("203.0.113.7", "a3") == 101  # counted down as counted up
    finally:
        for raw in raws:
            raw.transport.abortConnection()
        await wslb.stop()
