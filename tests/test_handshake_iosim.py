"""
The byte relay's handshake path with no socket: makeProxy's data path on a
MemoryReactorClock, users connected through twisted.test.iosim pumps, and
workers listening on that memory reactor (wslb connects to them through it;
iosim's ConnectionCompleter completes the connection). Every byte moves
when the test pumps it, so the order of things is the test's: the user's
handshake, the router, wslb's handshake with the worker, the 101, and the
relay, deterministically.

No seam was needed: the relay's direct send (transports.writeNow) and
Direction's writes fall back to ``transport.write`` where no TCP connection
is under the transport, noDelay passes over a transport without
TCP_NODELAY, and takeOver finds the protocol of an iosim FakeTransport as
it does a TCP connection's (``protocol``; a client endpoint's wrapper).
Those socket paths are pinned over real sockets in test_transports.py.
"""

import base64
import hashlib
import struct

import pytest
from _raw_ws import CLOSE, TEXT, RawClient, frame, parseFrames, upgradeRequest
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim

from wslb.config import load_config
from wslb.metrics import Metrics
from wslb.proxy.service import makeProxy
from wslb.registry import HEALTHY
from wslb.registry.memory import MemoryRegistry

WORKER_PORT = 9001
WORKER_URL = f"ws://127.0.0.1:{WORKER_PORT}"
USER = "203.0.113.7"


def accept(key):
    """RFC 6455 §4.2.2: the Sec-WebSocket-Accept for ``key``."""
    guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    return base64.b64encode(hashlib.sha1(key + guid).digest())


def headersOf(head):
    """The lower-cased header names and values of a request or response head."""
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines)}


class RawWorker(Protocol):
    """
    A worker's side of wslb's handshake, by hand: its factory says what it
    answers (``status``, or None: nothing; ``protocol_``, the subprotocol it
    chooses; ``sendWith101``, bytes in the same write as its 101); after the
    head, it collects what it reads.
    """

    def connectionMade(self):
        self.head = None
        self.received = b""
        self.lost = False
        self.factory.connections.append(self)

    def dataReceived(self, data):
        self.received += data
        if self.head is not None or b"\r\n\r\n" not in self.received:
            return
        self.head, _, self.received = self.received.partition(b"\r\n\r\n")
        factory = self.factory
        if factory.status is None:
            return  # it never answers
        if factory.status != 101:
            self.transport.write(b"HTTP/1.1 %d No\r\n\r\n" % factory.status)
            self.transport.loseConnection()
            return
        lines = [b"HTTP/1.1 101 Switching Protocols", b"Upgrade: websocket",
                 b"Connection: Upgrade",
                 b"Sec-WebSocket-Accept: " + accept(headersOf(self.head)["sec-websocket-key"]
                                                    .encode())]
        if factory.protocol_ is not None:
            lines.append(b"Sec-WebSocket-Protocol: " + factory.protocol_)
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + factory.sendWith101)

    def connectionLost(self, reason):
        self.lost = True


class WorkerFactory(Factory):
    protocol = RawWorker

    def __init__(self):
        self.connections = []
        self.status = 101
        self.protocol_ = None
        self.sendWith101 = b""


class Wslb:
    """makeProxy's data path on a MemoryReactorClock over a MemoryRegistry; one worker, w1."""

    def __init__(self, capacity=1):
        self.reactor = MemoryReactorClock()
        self.registry = MemoryRegistry(self.reactor)
        self.proxy = makeProxy(load_config(overrides=["listen.auto_ping=0"]), self.registry,
                               Metrics(), self.reactor, "i1")
        for service in self.proxy.services:
            service.startService()
        self.registry.addWorker("w1", WORKER_URL, "static", capacity, 0)
        self.registry.setWorkerState("w1", HEALTHY, 0)
        self.worker = WorkerFactory()
        self.reactor.listenTCP(WORKER_PORT, self.worker)
        self._connections = iosim.ConnectionCompleter(self.reactor)
        self.pumps = []

    def connect(self, key, *, early=b"", headers=None):
        """A user's connection sending its handshake for ``key`` (and ``early`` bytes)."""
        user, _, pump = iosim.connectedServerAndClient(
            lambda: self.proxy.factory.buildProtocol(None), RawClient,
            serverTransportFactory=lambda protocol: iosim.FakeTransport(
                protocol, isServer=True, hostAddress=IPv4Address("TCP", "10.0.0.1", 8080),
                peerAddress=IPv4Address("TCP", USER, 40000)),
            greet=False, clock=self.reactor)
        self.pumps.append(pump)
        user.transport.write(upgradeRequest(8080, "/room/7?x=1", {
            "X-WSLB-Session": key, **(headers or {})}) + early)
        self.settle()
        return user

    def settle(self):
        """Pump every connection, and complete wslb's connections to the worker, until all is still."""
        while True:
            while (pump := self._connections.succeedOnce()) is not None:
                self.pumps.append(pump)
            if not any([pump.flush() for pump in self.pumps]):
                return

    def session(self, key):
        return self.registry.getSession(key).result

    def stop(self):
        for service in reversed(self.proxy.services):
            service.stopService()


@pytest.fixture
def wslb():
    wslb = Wslb()
    yield wslb
    wslb.stop()


def answered(user):
    """(status, headers) of the answer the user read; its bytes after the head stay."""
    head, _, user.received = user.received.partition(b"\r\n\r\n")
    return int(head.split()[1]), headersOf(head)


def closeCode(data):
    [(_, opcode, payload)], rest = parseFrames(data)
    assert opcode == CLOSE and rest == b""
    return struct.unpack("!H", payload[:2])[0]


def test_a_user_is_relayed_to_its_worker_through_both_handshakes(wslb):
    wslb.worker.protocol_ = b"v2"
    user = wslb.connect("alice", headers={"Sec-WebSocket-Protocol": "v1, v2",
                                          "Origin": "https://app.test"})
    [worker] = wslb.worker.connections
    asked = headersOf(worker.head)
    assert worker.head.startswith(b"GET /room/7?x=1 HTTP/1.1\r\n")
    assert (asked["host"], asked["x-wslb-session"], asked["x-forwarded-for"]) == (
        f"127.0.0.1:{WORKER_PORT}", "alice", USER)
    assert (asked["sec-websocket-protocol"], asked["origin"]) == ("v1, v2", "https://app.test")

    status, headers = answered(user)
    assert (status, headers["sec-websocket-protocol"]) == (101, "v2")
    session = wslb.session("alice")
    assert (session.worker, session.connections) == ("w1", 1)

    hello = frame(TEXT, b"hello")  # masked, as users send
    user.transport.write(hello)
    wslb.settle()
    assert worker.received == hello  # byte for byte
    hi = frame(TEXT, b"hi", mask=False)
    worker.transport.write(hi)
    wslb.settle()
    assert user.received == hi


def test_what_both_send_before_the_relay_starts_is_relayed_first(wslb):
    """Frames in the worker's 101 write, and a user's sent with its request, are not lost."""
    first = frame(TEXT, b"from the worker, with its 101", mask=False)
    wslb.worker.sendWith101 = first
    early = frame(TEXT, b"from the user, before its 101")
    user = wslb.connect("alice", early=early)
    [worker] = wslb.worker.connections
    assert answered(user)[0] == 101
    assert user.received == first
    assert worker.received == early


def test_the_closing_handshake_passes_both_ways_and_counts_the_connection_out(wslb):
    user = wslb.connect("alice")
    [worker] = wslb.worker.connections
    answered(user)
    closing = frame(CLOSE, struct.pack("!H", 1000))
    user.transport.write(closing)
    wslb.settle()
    assert worker.received == closing
    worker.transport.write(frame(CLOSE, struct.pack("!H", 1000), mask=False))
    wslb.settle()
    assert closeCode(user.received) == 1000
    assert user.closed.called and not worker.lost  # wslb, the user's server, closes first
    assert wslb.session("alice").connections == 1
    worker.transport.loseConnection()  # the worker, wslb's server, closes the other
    wslb.settle()
    assert worker.lost
    assert wslb.session("alice").connections == 0  # its reconnect grace runs
    assert wslb.proxy.gate.connections == 0 and wslb.proxy.sessions.byKey() == []


def test_a_queued_user_is_relayed_once_the_worker_frees(wslb):
    alice = wslb.connect("alice")
    answered(alice)
    bob = wslb.connect("bob")
    assert bob.received == b"" and len(wslb.worker.connections) == 1  # held, no worker yet
    wslb.registry.endSession("alice")  # e.g. DELETE /api/v1/sessions/alice
    wslb.settle()
    assert closeCode(alice.received) == 4000  # [session] end_close_code
    assert answered(bob)[0] == 101
    assert len(wslb.worker.connections) == 2
    assert wslb.session("bob").connections == 1


def test_a_worker_that_refuses_the_handshake_gives_the_user_502(wslb):
    wslb.worker.status = 503
    user = wslb.connect("alice")
    assert answered(user)[0] == 502
    assert user.closed.called
    assert wslb.session("alice") is None  # bound for this user alone: undone
    assert wslb.proxy.gate.connections == 0


def test_a_user_that_leaves_during_the_worker_handshake_takes_it_down(wslb):
    wslb.worker.status = None  # never answers
    user = wslb.connect("alice")
    [worker] = wslb.worker.connections
    user.transport.loseConnection()
    wslb.settle()
    assert worker.lost
    assert wslb.session("alice").connections == 0  # counted out: its reconnect grace runs
    assert wslb.proxy.gate.connections == 0
