"""
The worker leg: wslb's WebSocket client connection to a worker.

``WorkerConnector.connect`` fires with an open leg once the worker accepted the
handshake, so the user's handshake can be answered with the worker's own
answer; any failure before that is a L{WorkerUnavailable} (the user gets 502,
never an accepted-then-closed socket).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.util import parse_url
from twisted.internet import defer, endpoints
from twisted.internet.abstract import isIPAddress, isIPv6Address

from wslb.metrics import TO_USER
from wslb.proxy.relay import RelayMixin
from wslb.proxy.worker_handshake import HandshakeFactory, HandshakeFailed, handshakeRequest

# Worker endpoints kept at most (a pool's workers, plus some churn).
MAX_KNOWN_WORKERS = 1024


class WorkerUnavailable(Exception):
    """The worker could not be reached, or refused the handshake."""


class WorkerLeg(RelayMixin, WebSocketClientProtocol):
    direction = TO_USER
    def connectionMade(self):
        super().connectionMade()
        # Frames that arrive before the user leg is open wait here.
        self.parkUntilAttached()

    def onOpen(self):
        opened, self.factory.opened = self.factory.opened, None
        if opened is not None:
            opened.callback(self)

    def onClose(self, wasClean, code, reason):
        opened, self.factory.opened = self.factory.opened, None
        if opened is not None:
            opened.errback(WorkerUnavailable(
                self.wasNotCleanReason or reason or "closed during the handshake"
            ))
            return
        peer = self.detach()
        if peer is not None:
            if self.remoteCloseCode is not None:
                # The worker said why it closed, even if the closing
                # handshake then timed out (autobahn reports 1006 for that).
                peer.workerClosed(True, self.remoteCloseCode, self.remoteCloseReason)
            else:
                peer.workerClosed(wasClean, code, reason)


def withSettingsOnClass(protocol, factory):
    """
    A subclass of ``protocol`` carrying ``factory``'s options as class
    attributes: autobahn copies onto each connection only the options the
    protocol does not already have, so every connection then shares them
    instead of holding fifty attributes of its own.
    """
    settings = {name: getattr(factory, name) for name in protocol.CONFIG_ATTRS}
    return type(protocol.__name__, (protocol,), settings)


class _SharedFactory(WebSocketClientFactory):
    noisy = False

    def clientConnectionFailed(self, connector, reason):
        pass  # reported through the endpoint's Deferred


class _OneLeg:
    """
    The factory one worker leg sees: its own URL, headers and subprotocols,
    everything else read from the shared factory. Building a full autobahn
    factory per connection cost kilobytes and a reseeding of ``random`` each.
    """

    __slots__ = ("_shared", "opened", "url", "isSecure", "host", "port", "resource",
                 "path", "params", "origin", "protocols", "useragent", "headers", "proxy")

    def __init__(self, shared, url, origin, protocols, useragent, headers):
        self._shared = shared
        self.opened = None
        (self.isSecure, self.host, self.port, self.resource, self.path,
         self.params) = parse_url(url)
        self.url = url
        self.origin = origin
        self.protocols = protocols or []
        self.useragent = useragent
        self.headers = headers
        self.proxy = None

    def __getattr__(self, name):
        return getattr(self._shared, name)

    def buildProtocol(self, addr):
        leg = self._shared.protocol()
        leg.factory = self
        return leg


class WorkerConnector:
    """Opens worker legs, all sharing one set of autobahn options."""

    def __init__(self, reactor, timeout, options):
        self._reactor = reactor
        self._timeout = timeout
        shared = _SharedFactory()
        # The worker is trusted to send valid UTF-8 (and the user's client
        # checks it again): validating it here too would cost every message.
        shared.setProtocolOptions(openHandshakeTimeout=0, utf8validateIncoming=False,
                                  **options)
        shared.protocol = withSettingsOnClass(WorkerLeg, shared)
        self._shared = shared
        self._endpoints = {}  # worker URL -> what _endpoint made of it

    def _endpoint(self, workerUrl):
        """("scheme://host:port", client endpoint) for a worker, made once per worker."""
        known = self._endpoints.get(workerUrl)
        if known is not None:
            return known
        reactor, timeout = self._reactor, self._timeout
        parts = urlsplit(workerUrl)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "wss" else 80)
        if isIPAddress(host):  # no name to resolve: skip the resolver's thread hop
            endpoint = endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
        elif isIPv6Address(host):
            endpoint = endpoints.TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
        else:
            endpoint = endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)
        if parts.scheme == "wss":
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = endpoints.wrapClientTLS(optionsForClientTLS(parts.hostname), endpoint)
        if len(self._endpoints) >= MAX_KNOWN_WORKERS:
            self._endpoints.clear()  # workers come and go: forget the old ones now and then
        known = self._endpoints[workerUrl] = (parts.scheme, parts.netloc, endpoint)
        return known

    def connect(self, workerUrl, uri, headers, protocols, relayBytes=False):
        """
        Open a leg to ``workerUrl`` (ws:// or wss://) for the request ``uri``
        (path and query, as the user sent them). Fires within the timeout
        with the open L{WorkerLeg}, or for the byte relay (``relayBytes``)
        with a L{WorkerHandshake} whose connection the relay takes over;
        else fails with L{WorkerUnavailable}.
        """
        reactor, timeout = self._reactor, self._timeout
        scheme, netloc, endpoint = self._endpoint(workerUrl)
        if relayBytes:
            request, accept = handshakeRequest(netloc, uri, headers, protocols)
            factory = HandshakeFactory(request, accept, protocols or [])
        else:
            factory = _OneLeg(
                self._shared, f"{scheme}://{netloc}{uri}",
                origin=headers.pop("Origin", None), protocols=protocols,
                useragent=headers.pop("User-Agent", None), headers=headers,
            )
        opened = factory.opened = defer.Deferred()
        connecting = endpoint.connect(factory)

        def connectFailed(failure):
            if factory.opened is not None:
                factory.opened = None
                opened.errback(WorkerUnavailable(f"{workerUrl}: {failure.getErrorMessage()}"))

        def abort(leg):
            if leg is not None:
                leg.transport.abortConnection()

        def giveUp(failure):
            # Timed out, or the user left: take the half-open leg down.
            failure.trap(defer.TimeoutError, defer.CancelledError)
            factory.opened = None
            connecting.cancel()
            connecting.addCallback(abort)
            if failure.check(defer.TimeoutError):
                raise WorkerUnavailable(f"no handshake with {workerUrl} within {timeout:g}s")
            return failure

        def forget(leg):
            # The connection keeps the endpoint's factory, and with it this
            # Deferred, for its whole life: it must not keep the leg too.
            connecting.addCallback(lambda _: None)
            return leg

        def refused(failure):
            failure.trap(HandshakeFailed)
            raise WorkerUnavailable(f"{workerUrl}: {failure.getErrorMessage()}")

        connecting.addErrback(connectFailed)
        opened.addTimeout(timeout, reactor)
        opened.addCallbacks(forget, giveUp)
        opened.addErrback(refused)
        return opened
