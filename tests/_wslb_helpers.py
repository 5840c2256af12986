"""
Test helpers: a wslb instance running in this process on real loopback
sockets, and a raw HTTP handshake for reading refusals (status, headers).
"""

import base64
import os

from _echo_helpers import TIMEOUT, connectWebSocket, getJSON
from _polling import waitFor
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

from wslb.config import load_config
from wslb.service import makeService

LOOPBACK_ANY_PORT = "tcp:0:interface=127.0.0.1"


class InProcessWslb:
    """``makeService(load_config(overrides=...))`` listening on free ports."""

    def __init__(self, *overrides):
        self.config = load_config(overrides=[
            f"listen.endpoint={LOOPBACK_ANY_PORT}",
            f"admin.endpoint={LOOPBACK_ANY_PORT}",
            "listen.drain_period=0",
            *overrides,
        ])
        self.service = makeService(self.config)

    async def start(self):
        self.service.startService()
        users = await self.service.getServiceNamed("listener").whenListening()
        admin = await self.service.getServiceNamed("admin").whenListening()
        self.port = users.getHost().port
        self.admin = f"http://127.0.0.1:{admin.getHost().port}"
        return self

    def stop(self):
        """Stop it, once: the start_wslb fixture stops what a test did not."""
        if not self.service.running:
            return defer.succeed(None)
        return self.service.stopService()

    def url(self, path="/"):
        return f"ws://127.0.0.1:{self.port}{path}"

    def connect(self, key=None, path="/", headers=None, protocols=None):
        headers = dict(headers or {})
        if key is not None:
            headers["X-WSLB-Session"] = key
        return defer.ensureDeferred(connectWebSocket(self.url(path), headers, protocols))

    async def workers(self):
        _, body = await getJSON(self.admin + "/api/v1/workers")
        return body["workers"]

    async def queueLength(self):
        _, body = await getJSON(self.admin + "/api/v1/queue")
        return body["length"]

    def waitQueued(self, length):
        """Fire once the queue is ``length`` long (its waiters are held)."""
        return waitFor(self.queueLength, lambda n: n == length, what=f"{length} queued")

    def waitHealthy(self, count):
        return waitFor(self.workers, lambda ws: sum(w["state"] == "healthy" for w in ws) >= count,
                       what=f"{count} healthy workers")


def staticWslb(workers, *overrides):
    """An in-process wslb over these echo workers as a static pool, checked once."""
    urls = ", ".join(f'"{w.url}"' for w in workers)
    return InProcessWslb(
        "pool.provider=static", f"pool.static.workers=[{urls}]",
        "pool.health.interval=60", "pool.min_spare=0", "pool.max_spare=0",
        *overrides,
    )


class _RawResponse(protocol.Protocol):
    def connectionMade(self):
        self.data = b""
        self.done = defer.Deferred()
        self.transport.write(self.factory.request)

    def dataReceived(self, data):
        self.data += data
        if b"\r\n\r\n" in self.data and not self.done.called:
            self.done.callback(self.data)
            self.transport.loseConnection()

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback(self.data)


async def rawHandshake(port, path="/", headers=None):
    """
    Send a WebSocket upgrade request by hand; fire with (status, headers)
    of the answer (status 0 when the connection closed without one).
    """
    lines = [
        f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
        "Connection: Upgrade", "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode(),
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    factory = protocol.Factory.forProtocol(_RawResponse)
    factory.request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    client = await TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=TIMEOUT).connect(factory)
    raw = await client.done.addTimeout(TIMEOUT * 3, reactor)
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    if not head[0]:
        return 0, {}
    status = int(head[0].split()[1])
    fields = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return status, fields


async def scrape(wslb):
    """The instance's /metrics: (sample name, sorted labels) -> value."""
    import treq
    from prometheus_client.parser import text_string_to_metric_families

    response = await treq.get(wslb.admin + "/metrics", timeout=5)
    assert response.code == 200
    text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }
