"""
The framed user leg (``[listen] relay = "frames"``): autobahn's WebSocket
server protocol, re-framing every message to and from its L{WorkerLeg}.
The byte relay's users are served by L{UserHandshake} instead.
"""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer

from wslb.logs import Logger
from wslb.metrics import TO_WORKER
from wslb.proxy.errors import HandshakeRefused
from wslb.proxy.opening import MAX_REQUEST_HEAD, OpensSessions, Request
from wslb.proxy.relay import RelayMixin, closeWith
from wslb.proxy.user_handshake import UserHandshake
from wslb.proxy.worker_leg import withSettingsOnClass

log = Logger()

CLOSE_GOING_AWAY = 1001
CLOSE_ABNORMAL = 1006
CLOSE_TRY_AGAIN = 1012


class UserLeg(OpensSessions, RelayMixin, WebSocketServerProtocol):
    direction = TO_WORKER
    _opening = None  # the Deferred onConnect returned
    _refusalHeaders = ()
    _discarding = False  # refused as too large: reading only to close cleanly

    def connectionMade(self):
        super().connectionMade()
        self.factory.gate.connectionMade(self.factory.gate.address(self))
        # Autobahn's openHandshakeTimeout would also count the time spent
        # queued; this one only bounds reading the request (slow clients).
        self._startRequestTimer(self._requestTooSlow)

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
        self._stopRequestTimer()
        self._discarding = True
        self._refusing(431, "Request Header Fields Too Large")
        self.sendHttpErrorResponse(431, "Request Header Fields Too Large")
        self.transport.loseWriteConnection()
        self._startRequestTimer(self.transport.abortConnection)

    def _requestTooSlow(self):
        self._requestTimer = None
        self.factory.gate.limitHit("open_handshake_timeout")
        self.dropConnection(abort=True)

    def onConnect(self, request):
        self._stopRequestTimer()
        opening = Request(self.http_request_uri, request.headers, request.protocols)
        self._opening = defer.ensureDeferred(self._open(opening, relayBytes=False))
        self._opening.addCallback(
            lambda headers: (self.worker.websocket_protocol_in_use, headers))
        return self._opening.addErrback(self._refused)

    def _refused(self, failure):
        if failure.check(defer.CancelledError):
            return defer.Deferred()  # the user left: no answer is needed
        if failure.check(HandshakeRefused):
            # Autobahn passes on only code and reason; keep the headers.
            self._refusalHeaders = failure.value.headers
        return failure

    def failHandshake(self, reason, code=400, responseHeaders=None):
        self._refusing(code, reason)
        super().failHandshake(reason, code, [*(responseHeaders or ()), *self._refusalHeaders])

    def onOpen(self):
        # The user may have left while the handshake was held (DESIGN §9).
        if self.state != self.STATE_OPEN or self.worker is None:
            return
        self._opening = None
        worker, self.worker = self.worker, None
        worker.attach(self, self.factory.traffic)
        self.attach(worker, self.factory.traffic)
        self._relaying(self, self.websocket_protocol_in_use, "frames")

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
        self._stopRequestTimer()
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
            closeWith(worker, code if wasClean else CLOSE_GOING_AWAY, reason)
        if self.key is not None:
            self.factory.sessions.closed(self.key, self)
        self._release()

    def workerClosed(self, wasClean, code, reason):
        """The worker leg closed: pass it on, ending the session if it says so."""
        if code == self.factory.endCloseCode:
            self.factory.registry.endSession(self.key)
        if not wasClean or code in (None, CLOSE_ABNORMAL):
            closeWith(self, CLOSE_TRY_AGAIN, "the worker went away")
        else:
            closeWith(self, code, reason)


class UserLegFactory(WebSocketServerFactory):
    """
    Holds what the user connections of one listener share; builds a
    L{UserHandshake} for each with the byte relay, a L{UserLeg} with frames.
    """

    protocol = UserLeg
    noisy = False

    def __init__(self, *, clock, registry, router, sessions, identifier, gate,
                 traffic, connectWorker, requestTimeout, endCloseCode, options,
                 relayBytes=True, forwardedProto="auto"):
        super().__init__()
        self.relayBytes = relayBytes
        self.forwardedProto = forwardedProto
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
        self.maxMessageSize = options["maxMessagePayloadSize"]

    def buildProtocol(self, addr):
        if not self.relayBytes:
            return super().buildProtocol(addr)
        handshake = UserHandshake()
        handshake.factory = self
        return handshake

    def goingAway(self):
        """Close every open user leg with 1001 (shutdown)."""
        for relay in self.sessions.legs():
            relay.closeWith(CLOSE_GOING_AWAY, "wslb is shutting down")
