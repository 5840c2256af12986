"""
The user leg: the WebSocket server side that users connect to.

The user's handshake is held in ``onConnect`` until this instance knows the
session, has a worker for it (perhaps after queueing) and the worker accepted
its own handshake; the 101 then carries the worker's subprotocol.
"""

from __future__ import annotations

from typing import NamedTuple

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger

from wslb.metrics import TO_WORKER
from wslb.proxy.errors import HandshakeRefused
from wslb.proxy.identity import HandshakeFields
from wslb.proxy.relay import RelayMixin, closeWith
from wslb.proxy.splice import Splice, canTakeOver
from wslb.proxy.worker_leg import WorkerUnavailable, withSettingsOnClass

log = Logger()


class WorkerRef(NamedTuple):
    id: str
    url: str
    provider: str
    capacity: int

CLOSE_GOING_AWAY = 1001
CLOSE_ABNORMAL = 1006
CLOSE_TRY_AGAIN = 1012

# The most a client may send before its handshake is answered: request line,
# headers, and anything it sends early while the handshake is held.
MAX_REQUEST_HEAD = 16 * 1024

# Request headers the worker sees as the user sent them.
PASSED_HEADERS = ("Origin", "Cookie", "Authorization", "User-Agent")


class UserLeg(RelayMixin, WebSocketServerProtocol):
    direction = TO_WORKER
    key = None
    cost = None
    placement = None  # WorkerRef: the worker this session is bound to
    worker = None  # the open WorkerLeg, until the user leg opens
    _counted = False  # assign() counted this connection: release() it once
    _assigned = None  # (fresh, seconds waited) for the log
    _relayBytes = False  # this connection goes to the byte relay once open
    _opening = None  # the Deferred onConnect returned
    _handshakeTimer = None
    _refusalHeaders = ()
    _discarding = False  # refused as too large: reading only to close cleanly

    def connectionMade(self):
        super().connectionMade()
        self.factory.gate.connectionMade(self.factory.gate.address(self))
        # Autobahn's openHandshakeTimeout would also count the time spent
        # queued; this one only bounds reading the request (slow clients).
        self._handshakeTimer = self.factory.clock.callLater(
            self.factory.requestTimeout, self._requestTooSlow
        )

    def dataReceived(self, data):
        if self._discarding:
            return
        if self.state == self.STATE_CONNECTING and len(self.data) + len(data) > MAX_REQUEST_HEAD:
            self.factory.gate.limitHit("request_head_size")
            if self._opening is None:
                self._refuseTooLarge()
            else:
                self.dropConnection(abort=True)  # talking while its handshake is held
            return
        super().dataReceived(data)

    def _refuseTooLarge(self):
        # Closing with the client's bytes unread would reset the connection
        # and lose the answer: answer, half-close, and read until it leaves.
        self._stopHandshakeTimer()
        self._discarding = True
        self.factory.gate.refused(431)
        self.sendHttpErrorResponse(431, "Request Header Fields Too Large")
        self.transport.loseWriteConnection()
        self._handshakeTimer = self.factory.clock.callLater(
            self.factory.requestTimeout, self.transport.abortConnection
        )

    def _requestTooSlow(self):
        self._handshakeTimer = None
        self.factory.gate.limitHit("open_handshake_timeout")
        self.dropConnection(abort=True)

    def _stopHandshakeTimer(self):
        if self._handshakeTimer is not None and self._handshakeTimer.active():
            self._handshakeTimer.cancel()
        self._handshakeTimer = None

    def onConnect(self, request):
        self._stopHandshakeTimer()
        self._opening = defer.ensureDeferred(self._open(request))
        return self._opening.addErrback(self._refused)

    def _refused(self, failure):
        if failure.check(defer.CancelledError):
            return defer.Deferred()  # the user left: no answer is needed
        if failure.check(HandshakeRefused):
            # Autobahn passes on only code and reason; keep the headers.
            self._refusalHeaders = failure.value.headers
        return failure

    async def _open(self, request):
        factory = self.factory
        factory.gate.admit(self, request)
        fields = HandshakeFields(request.headers, _query(self.http_request_uri))
        identity = factory.identifier.identify(fields)
        self.key = identity.key
        asked = factory.clock.seconds()
        self.cost = identity.cost
        assigned = await factory.router.route(identity.key, identity.cost)
        worker = assigned.worker
        # Only what re-asserting the session needs: a Worker snapshot would
        # keep the whole list of its sessions alive with every connection.
        self.placement = WorkerRef(worker.id, worker.url, worker.provider, worker.capacity)
        self._counted = True
        self._assigned = (assigned.fresh, round(factory.clock.seconds() - asked, 3))
        self._relayBytes = factory.relayBytes and canTakeOver(self)
        try:
            self.worker = await factory.connectWorker(
                assigned.worker.url, self.http_request_uri,
                self._workerHeaders(request), request.protocols, self._relayBytes,
            )
        except WorkerUnavailable as e:
            log.info("worker {worker} unavailable for {key}: {why}",
                     worker=assigned.worker.id, key=self.key, why=str(e))
            if assigned.fresh:
                factory.registry.endSession(self.key)
            raise HandshakeRefused(502, "the worker is unavailable") from e
        headers = {}
        if identity.setCookie:
            headers["Set-Cookie"] = identity.setCookie
        return (self.worker.websocket_protocol_in_use, headers)

    def _workerHeaders(self, request):
        headers = {
            name: request.headers[name.lower()]
            for name in PASSED_HEADERS if name.lower() in request.headers
        }
        peer = self.transport.getPeer()
        headers["X-WSLB-Session"] = self.key
        headers["X-Forwarded-For"] = getattr(peer, "host", "unix")
        headers["X-Forwarded-Proto"] = (
            "https" if ISSLTransport.providedBy(self.transport) else "http"
        )
        if request.host:
            headers["X-Forwarded-Host"] = request.headers.get("host", request.host)
        return headers

    def failHandshake(self, reason, code=400, responseHeaders=None):
        self.factory.gate.refused(code)
        log.info("handshake refused: {status} {reason}", event="refused", status=code,
                 reason=reason, key=self.key, peer=self.factory.gate.address(self))
        super().failHandshake(reason, code, list(responseHeaders or []) + self._refusalHeaders)

    def onOpen(self):
        # The user may have left while the handshake was held (DESIGN §9).
        if self.state != self.STATE_OPEN or self.worker is None:
            return
        self._opening = None
        worker, self.worker = self.worker, None
        factory = self.factory
        if self._relayBytes:
            relay = Splice.replace(self, worker, factory)
        else:
            relay = self
            worker.attach(self, factory.traffic)
            self.attach(worker, factory.traffic)
        factory.gate.accepted()
        factory.sessions.opened(self.key, relay)
        fresh, waited = self._assigned
        log.info(
            "{key} relaying to {worker}", event="opened", key=self.key,
            worker=self.placement.id, worker_url=self.placement.url, fresh=fresh,
            cost=self.cost, waited=waited, peer=factory.gate.address(self),
            protocol=self.websocket_protocol_in_use,
            mode="bytes" if self._relayBytes else "frames",
        )

    # What the session bookkeeping calls (a L{Splice} offers the same).

    def closeWith(self, code, reason):
        closeWith(self, code, reason)

    @property
    def activity(self):
        """Payload bytes relayed both ways so far (idle detection)."""
        worker = self.otherLeg
        return self.received + (worker.received if worker is not None else 0)

    def keepAlive(self):
        pass  # autobahn pings framed legs itself (autoPingInterval)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.factory.gate.connectionLost(self.factory.gate.address(self))

    def onClose(self, wasClean, code, reason):
        self._stopHandshakeTimer()
        if self.wasMaxMessagePayloadSizeExceeded or self.wasMaxFramePayloadSizeExceeded:
            self.factory.gate.limitHit("max_message_size")
        if self._opening is not None and not self._opening.called:
            self._opening.cancel()
        worker = self.detach() or self.worker
        self.worker = None
        if self._counted:
            stats = self.trafficStats
            log.info(
                "{key} closed with {code}", event="closed", key=self.key, code=code,
                reason=reason, clean=wasClean, bytes_from_user=stats.incomingOctetsWireLevel,
                bytes_to_user=stats.outgoingOctetsWireLevel,
            )
        if worker is not None:
            if self._relayBytes:  # its handshake was done, no relay took it over
                worker.transport.abortConnection()
            else:
                closeWith(worker, code if wasClean else CLOSE_GOING_AWAY, reason)
        if self.key is not None:
            self.factory.sessions.closed(self.key, self)
        if self._counted:
            self._counted = False
            self.factory.sessions.release(self.key)

    def workerClosed(self, wasClean, code, reason):
        """The worker leg closed: pass it on, ending the session if it says so."""
        if code == self.factory.endCloseCode:
            self.factory.registry.endSession(self.key)
        if not wasClean or code in (None, CLOSE_ABNORMAL):
            closeWith(self, CLOSE_TRY_AGAIN, "the worker went away")
        else:
            closeWith(self, code, reason)


def _query(uri):
    return uri.partition("?")[2]


class UserLegFactory(WebSocketServerFactory):
    """Holds what every user leg of one listener shares."""

    protocol = UserLeg
    noisy = False

    def __init__(self, *, clock, registry, router, sessions, identifier, gate,
                 traffic, connectWorker, requestTimeout, endCloseCode, options,
                 relayBytes=True):
        super().__init__()
        self.relayBytes = relayBytes
        self.traffic = traffic
        self.clock = clock
        self.registry = registry
        self.router = router
        self.sessions = sessions
        self.identifier = identifier
        self.gate = gate
        self.connectWorker = connectWorker
        self.requestTimeout = requestTimeout
        self.endCloseCode = endCloseCode
        self.setProtocolOptions(
            openHandshakeTimeout=0, allowNullOrigin=True, echoCloseCodeReason=True,
            failByDrop=False, **options,
        )
        self.protocol = withSettingsOnClass(UserLeg, self)

    def goingAway(self):
        """Close every open user leg with 1001 (shutdown)."""
        for relay in self.sessions.legs():
            relay.closeWith(CLOSE_GOING_AWAY, "wslb is shutting down")
