"""
The worker leg: wslb's WebSocket client connection to a worker.

``connectWorker`` fires with an open leg once the worker accepted the
handshake, so the user's handshake can be answered with the worker's own
answer; any failure before that is a L{WorkerUnavailable} (the user gets 502,
never an accepted-then-closed socket).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, endpoints

from wslb.metrics import TO_USER
from wslb.proxy.relay import RelayMixin


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
            peer.workerClosed(wasClean, code, reason)


class _WorkerLegFactory(WebSocketClientFactory):
    protocol = WorkerLeg
    opened = None
    noisy = False  # one per connection: no start/stop log lines

    def clientConnectionFailed(self, connector, reason):
        pass  # reported through the endpoint's Deferred


def connectWorker(reactor, workerUrl, uri, headers, protocols, timeout, options):
    """
    Open a leg to ``workerUrl`` (ws:// or wss://) for the request ``uri``
    (path and query, as the user sent them). Fires with the open L{WorkerLeg}
    or fails with L{WorkerUnavailable} within ``timeout`` seconds.
    """
    parts = urlsplit(workerUrl)
    factory = _WorkerLegFactory(
        url=f"{parts.scheme}://{parts.netloc}{uri}",
        origin=headers.pop("Origin", None),
        protocols=protocols,
        useragent=headers.pop("User-Agent", None),
        headers=headers,
    )
    # The worker is trusted to send valid UTF-8 (and the user's client checks
    # it again): validating it here too would only cost time on every message.
    factory.setProtocolOptions(openHandshakeTimeout=0, utf8validateIncoming=False, **options)
    factory.opened = defer.Deferred()
    endpoint = endpoints.HostnameEndpoint(
        reactor, parts.hostname, parts.port or (443 if parts.scheme == "wss" else 80),
        timeout=timeout,
    )
    if parts.scheme == "wss":
        from twisted.internet.ssl import optionsForClientTLS

        endpoint = endpoints.wrapClientTLS(optionsForClientTLS(parts.hostname), endpoint)

    opened = factory.opened = defer.Deferred()
    connecting = endpoint.connect(factory)

    def connectFailed(failure):
        if factory.opened is not None:
            factory.opened = None
            opened.errback(WorkerUnavailable(f"{workerUrl}: {failure.getErrorMessage()}"))

    def abort(leg):
        if leg is not None:
            leg.dropConnection(abort=True)

    def giveUp(failure):
        # Timed out, or the user left: take the half-open leg down.
        failure.trap(defer.TimeoutError, defer.CancelledError)
        factory.opened = None
        connecting.cancel()
        connecting.addCallback(abort)
        if failure.check(defer.TimeoutError):
            raise WorkerUnavailable(f"no handshake with {workerUrl} within {timeout:g}s")
        return failure

    connecting.addErrback(connectFailed)
    opened.addTimeout(timeout, reactor)
    opened.addErrback(giveUp)
    return opened
