"""
wslb's opening handshake with a worker, written out by hand: the relay
needs the connection and the worker's answer, not a WebSocket client
protocol that it would drop the moment the handshake is done.

``WorkerConnector.connect`` fires once the worker accepted the handshake, so
the user's handshake can be answered with the worker's own answer; any
failure before that is a L{WorkerUnavailable} (the user gets 502, never an
accepted-then-closed socket).
"""

from __future__ import annotations

import base64
import hashlib
import os
from functools import partial
from urllib.parse import urlsplit

from twisted.internet import defer, endpoints
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure

from wslb.logs import Logger
from wslb.proxy.transports import dropConnector, noDelay, writeNow
from wslb.timeouts import Timeouts

log = Logger()

# RFC 6455 §1.3: what a server appends to the key before hashing it.
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# The most a worker may answer before its blank line.
MAX_RESPONSE_HEAD = 16 * 1024

# Worker endpoints kept at most (a pool's workers, plus some churn).
MAX_KNOWN_WORKERS = 1024


class WorkerUnavailable(Exception):
    """The worker could not be reached, or refused the handshake."""


def acceptFor(key):
    """The Sec-WebSocket-Accept a server must answer to ``key``."""
    return base64.b64encode(hashlib.sha1(key + _ACCEPT_GUID).digest())


def handshakeRequest(netloc, uri, headers, protocols):
    """(request bytes, the answer's expected Sec-WebSocket-Accept)."""
    key = base64.b64encode(os.urandom(16))
    lines = [
        f"GET {uri} HTTP/1.1", f"Host: {netloc}", "Upgrade: websocket", "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}", "Sec-WebSocket-Version: 13",
    ]
    if protocols:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if any("\r" in line or "\n" in line for line in lines):
        # A line break would let the user write headers of its own.
        raise ValueError("a line break in a request line or header")
    # Header values pass as the user sent their bytes (read as latin-1).
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), acceptFor(key)


class HandshakeFailed(Exception):
    """The worker's answer was not a valid 101 for our request."""


def checkAnswer(head, accept, protocols):
    """The subprotocol the worker chose, from its answer's head; or HandshakeFailed."""
    lines = head.split(b"\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or status[1] != b"101":
        raise HandshakeFailed(f"the worker answered {lines[0][:80]!r}")
    fields = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise HandshakeFailed(f"malformed header line {line[:80]!r}")
        fields[name.strip().lower()] = value.strip()
    if fields.get(b"upgrade", b"").lower() != b"websocket":
        raise HandshakeFailed("no Upgrade: websocket")
    if b"upgrade" not in fields.get(b"connection", b"").lower():
        raise HandshakeFailed("no Connection: Upgrade")
    if fields.get(b"sec-websocket-accept") != accept:
        raise HandshakeFailed("wrong Sec-WebSocket-Accept")
    if fields.get(b"sec-websocket-extensions"):
        raise HandshakeFailed("an extension we did not offer")
    chosen = fields.get(b"sec-websocket-protocol")
    if chosen is None:
        return None
    chosen = chosen.decode("latin-1")
    if chosen not in protocols:
        raise HandshakeFailed(f"subprotocol {chosen!r} was not offered")
    return chosen


class WorkerHandshake(Protocol):
    """
    Sends the request, reads the answer's head and fires the factory's
    ``opened`` with itself: ``websocket_protocol_in_use`` is the worker's
    choice, ``data`` what the worker sent after its head (frames, already).
    """

    websocket_protocol_in_use = None
    data = b""

    def connectionMade(self):
        noDelay(self.transport)
        writeNow(self.transport, self.factory.request)

    def dataReceived(self, data):
        self.data += data
        if self.factory.accept is None:  # answered: what follows is the relay's
            return
        end = self.data.find(b"\r\n\r\n")
        if end < 0:
            if len(self.data) > MAX_RESPONSE_HEAD:
                self._fail(HandshakeFailed("the worker's answer is too long"))
            return
        head, self.data = self.data[:end], self.data[end + 4:]
        factory = self.factory
        try:
            self.websocket_protocol_in_use = checkAnswer(head, factory.accept, factory.protocols)
        except HandshakeFailed as e:
            self._fail(e)
            return
        factory.answered()
        opened, factory.opened = factory.opened, None
        if opened is not None:
            opened.callback(self)

    def _fail(self, reason):
        opened, self.factory.opened = self.factory.opened, None
        self.transport.abortConnection()
        if opened is not None:
            opened.errback(reason)

    def connectionLost(self, reason):
        dropConnector(self.transport)
        self.factory.handshake = None
        opened, self.factory.opened = self.factory.opened, None
        if opened is not None:
            opened.errback(HandshakeFailed("closed during the handshake"))


class HandshakeFactory(ClientFactory):
    """One worker connection's request and what its answer must say."""

    protocol = WorkerHandshake
    noisy = False

    def __init__(self, request, accept, protocols, workerUrl):
        self.request = request
        self.accept = accept
        self.protocols = protocols
        self.workerUrl = workerUrl
        self.opened = None  # the Deferred connect() waits on
        self.handshake = None  # the connection's protocol, until answered or lost

    def buildProtocol(self, addr):
        self.handshake = super().buildProtocol(addr)
        return self.handshake

    def answered(self):
        """
        The handshake is done. The connection keeps its factory as long as
        it lives; not the request and answer it no longer needs (a third of
        a kilobyte per relayed connection).
        """
        self.request = self.accept = self.protocols = self.handshake = None

    def clientConnectionFailed(self, connector, reason):
        """No connection (refused, unreachable, or given up on)."""
        opened, self.opened = self.opened, None
        if opened is not None:
            opened.errback(WorkerUnavailable(f"{self.workerUrl}: {reason.getErrorMessage()}"))


def clientEndpoint(reactor, host, port, tls, timeout):
    """
    A client endpoint to a worker at ``host`` (a name or an address) and
    ``port`` (None: 443 with ``tls``, else 80). Its caller bounds each
    connection attempt; ``timeout`` bounds only a name's resolution and
    connection attempts.
    """
    port = port or (443 if tls else 80)
    # No name to resolve: skip the resolver's thread hop. And no timer of
    # the connector's own: the caller's bound covers the connection too.
    if isIPAddress(host):
        endpoint = endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=None)
    elif isIPv6Address(host):
        endpoint = endpoints.TCP6ClientEndpoint(reactor, host, port, timeout=None)
    else:
        endpoint = endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)
    if tls:
        from twisted.internet.ssl import optionsForClientTLS
        endpoint = endpoints.wrapClientTLS(optionsForClientTLS(host), endpoint)
    return endpoint


def remember(known, key, value):
    """``known[key] = value``, all forgotten now and then: workers come and go."""
    if len(known) >= MAX_KNOWN_WORKERS:
        known.clear()
    known[key] = value
    return value


class WorkerConnector:
    """
    Opens connections to workers and does wslb's handshake on them. With
    ``freezing`` ([gc] freeze), the first worker dialled through an endpoint
    is warned of: see L{_throughEndpoint}.
    """

    def __init__(self, reactor, timeout, freezing=False):
        self._reactor = reactor
        self._timeout = timeout
        self._timeouts = Timeouts(reactor, timeout)  # one timer bounds every handshake
        self._dialers = {}  # worker URL -> what _dialer made of it
        self._warnEndpoint = freezing

    def _dialer(self, workerUrl):
        """("host:port", a dial function: see L{_direct}), made once per worker."""
        known = self._dialers.get(workerUrl)
        if known is None:
            parts = urlsplit(workerUrl)
            host, port, tls = parts.hostname, parts.port, parts.scheme == "wss"
            if not tls and (isIPAddress(host) or isIPv6Address(host)):
                dial = partial(_direct, self._reactor, host, port or 80)
            else:
                dial = partial(_throughEndpoint, clientEndpoint(
                    self._reactor, host, port, tls, self._timeout))
                if self._warnEndpoint:
                    self._warnEndpoint = False
                    log.warn(
                        "worker {url} is named by a host name or reached over TLS: each "
                        "connection to it ends in a reference cycle (Twisted's endpoint), "
                        "which [gc] freeze keeps until its thaw ([gc] thaw_interval); give "
                        "workers IP addresses and ws://, or set [gc] freeze = false",
                        url=workerUrl)
            known = remember(self._dialers, workerUrl, (parts.netloc, dial))
        return known

    def connect(self, workerUrl, uri, headers, protocols):
        """
        Connect to ``workerUrl`` (ws:// or wss://) with a handshake for the
        request ``uri`` (path and query, as the user sent them). Fires within
        the timeout with the L{WorkerHandshake} whose connection the relay
        takes over; else fails with L{WorkerUnavailable}.
        """
        timeout = self._timeout
        netloc, dial = self._dialer(workerUrl)
        request, accept = handshakeRequest(netloc, uri, headers, protocols)
        factory = HandshakeFactory(request, accept, protocols or [], workerUrl)
        opened = factory.opened = defer.Deferred()
        stopConnecting = dial(factory)

        # Errbacks check and return Failures rather than trap and raise: a
        # raised exception's traceback holds the errback's frame, which holds
        # the failure that holds the exception (a cycle with the connection).

        def giveUp(failure):
            # Timed out, or the user left: take the half-open connection down.
            if not failure.check(defer.TimeoutError, defer.CancelledError):
                return failure
            factory.opened = None
            if factory.handshake is not None:
                factory.handshake.transport.abortConnection()
            else:
                stopConnecting()
            if failure.check(defer.TimeoutError):
                return Failure(
                    WorkerUnavailable(f"no handshake with {workerUrl} within {timeout:g}s"))
            return failure

        def refused(failure):
            if failure.check(HandshakeFailed):
                return Failure(WorkerUnavailable(f"{workerUrl}: {failure.getErrorMessage()}"))
            return failure

        self._timeouts.bound(opened)
        opened.addErrback(giveUp)
        opened.addErrback(refused)
        return opened


def _direct(reactor, host, port, factory):
    """
    Connect ``factory`` to a worker at an IP address, with no endpoint: an
    endpoint adds a wrapping factory and a Deferred to every connection,
    which name each other and its connector (reference cycles that outlive
    the connection; see wslb.collector). Returns what gives up on the
    connection attempt.
    """
    try:
        # No timer of the connector's own: the caller's bound covers it.
        connector = reactor.connectTCP(host, port, factory, timeout=None)
    except Exception:  # e.g. an IPv6 scope that names no interface
        factory.clientConnectionFailed(None, Failure())
        return _nothingToStop
    return connector.stopConnecting


def _nothingToStop():
    pass


def _throughEndpoint(endpoint, factory):
    """
    L{_direct} through an endpoint: for a worker with TLS or a host name.
    Twisted's HostnameEndpoint makes a class for every connection, and its
    wrapping factory, Deferred and connector name each other: what a
    connection leaves is freed only by the garbage collector.
    """
    opened = factory.opened  # a connection that fails at once clears it
    connecting = endpoint.connect(factory)
    connecting.addErrback(lambda failure: factory.clientConnectionFailed(None, failure))

    def forget(handshake):
        # The connection keeps the endpoint's factory, and with it this
        # Deferred, for its whole life: it must not keep the handshake too.
        connecting.addCallback(lambda _: None)
        return handshake

    opened.addCallback(forget)
    return connecting.cancel
