"""
The user's opening handshake read and answered by hand (RFC 6455 §4.2): a
relayed user needs its request checked, a 101 and its connection, not a
WebSocket server protocol of some fifty attributes that the relay would
drop the moment the handshake is done (with autobahn's, a tenth of a short
connection's CPU went to it).
"""

from __future__ import annotations

import base64
import binascii

from twisted.internet import defer
from twisted.internet.protocol import Protocol

from wslb.logs import Logger
from wslb.proxy.errors import HandshakeRefused, badRequest
from wslb.proxy.gate import UNKNOWN
from wslb.proxy.head import TOKEN, isUpgrade, originForm, readHead, tokens
from wslb.proxy.opening import MAX_REQUEST_HEAD, OpensSessions, Request
from wslb.proxy.splice import Splice
from wslb.proxy.transports import noDelay, writeNow
from wslb.proxy.worker_handshake import acceptFor

log = Logger()

# Headers a handshake may carry once only: which value would count is unclear.
_SINGLE = ("host", "sec-websocket-key", "sec-websocket-version")


def readRequest(head):
    """
    The L{Request} and its Sec-WebSocket-Key from a request's head (up to
    the blank line); or the L{HandshakeRefused} to answer it with.
    """
    return handshakeOf(readHead(head))


def handshakeOf(head):
    """The L{Request} and Sec-WebSocket-Key of a WebSocket handshake's L{Head}; or a refusal."""
    if head.method != "GET":
        raise HandshakeRefused(405, f"method {head.method[:16]} not allowed", [("Allow", "GET")])
    if head.version != "HTTP/1.1":
        raise HandshakeRefused(505, "only HTTP/1.1 upgrades to a WebSocket")
    uri = originForm(head.target)
    headers = head.headers
    for name in _SINGLE:
        if name in head.repeated:
            raise badRequest(f"{name} header appears more than once")
    if "host" not in headers:
        raise badRequest("no Host header")
    if not isUpgrade(head):
        raise HandshakeRefused(426, "a WebSocket upgrade is required",
                               [("Upgrade", "websocket"), ("Connection", "Upgrade")])
    if "upgrade" not in tokens(headers.get("connection", "")):
        raise badRequest("no Connection: Upgrade header")
    if headers.get("sec-websocket-version") != "13":
        raise HandshakeRefused(426, "unsupported WebSocket version",
                               [("Sec-WebSocket-Version", "13")])
    key = headers.get("sec-websocket-key", "")
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise badRequest("Sec-WebSocket-Key must be 16 bytes in base64")
    protocols = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
    protocols = [p for p in protocols if p]
    if not all(TOKEN.match(p) for p in protocols):
        raise badRequest("a subprotocol must be a token")
    if len(set(protocols)) != len(protocols):
        raise badRequest("a subprotocol is offered twice")
    return Request(uri, headers, protocols), key.encode("ascii")


def switchingProtocols(key, protocol, headers):
    """The 101 for a request with ``key``, choosing ``protocol`` (or none)."""
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Accept: " + acceptFor(key).decode("ascii")]
    if protocol is not None:
        lines.append("Sec-WebSocket-Protocol: " + protocol)
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def refusal(code, reason, headers=()):
    """An error answer; the reason goes in the status line, as autobahn puts it."""
    lines = [f"HTTP/1.1 {code} {' '.join(reason.split())}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


class UserHandshake(OpensSessions, Protocol):
    """
    Reads the request, holds it while the session opens, answers, and hands
    the connection to a L{Splice}. Bytes the user sends early (frames after
    its request, before the 101) go to the relay.
    """

    data = b""  # read and not yet handled: the head, or frames sent early
    counted = None  # what the gate counts this connection as (None: refused)
    _opening = None  # the Deferred of _open, while the handshake is held
    _discarding = False  # refused: reading only until it is closed

    def __init__(self, context):
        self.context = context

    def connectionMade(self):
        noDelay(self.transport)
        self.counted = self.context.gate.accept(self)
        if self.counted is None:
            self._discarding = True
            self.transport.abortConnection()  # a limit: nothing is read
            return
        self._startRequestTimer(self._tooSlow)

    def dataReceived(self, data):
        if self._discarding:
            return
        if self.counted is UNKNOWN:  # the PROXY header was read: the address is known
            self.counted = self.context.gate.identified(self)
            if self.counted is None:
                self._discarding = True
                self.transport.abortConnection()
                return
        data = self.data = self.data + data
        if self._opening is not None:
            if len(data) > MAX_REQUEST_HEAD:  # talking while its handshake is held
                self.context.gate.limitHit("request_head_size")
                self.transport.abortConnection()
            return
        end = data.find(b"\r\n\r\n", 0, MAX_REQUEST_HEAD)
        if end < 0:
            if len(data) >= MAX_REQUEST_HEAD:
                self._refuseTooLarge()
            return
        head, self.data = data[:end], data[end + 4:]
        self._stopRequestTimer()
        try:
            head = readHead(head)
            web = self.context.web
            if web.takes(head):
                web.handOff(self, self.counted, data)
                return
            request, key = handshakeOf(head)
        except HandshakeRefused as refused:
            self._refuse(refused)
            return
        self._opening = defer.ensureDeferred(self._open(request))
        self._opening.addCallbacks(self._accept, self._refused, callbackArgs=(key,))

    def _accept(self, headers, key):
        self._opening = None
        worker, self.worker = self.worker, None
        writeNow(self.transport, switchingProtocols(key, worker.websocket_protocol_in_use, headers))
        relay = Splice.replace(self, worker, self.context)
        self._relaying(relay, worker.websocket_protocol_in_use)

    def _refused(self, failure):
        self._opening = None
        if failure.check(defer.CancelledError):
            # The user left: no answer is needed. The exception's traceback
            # holds Twisted's frames, which hold failures that hold it.
            failure.value.__traceback__ = None
            return
        if failure.check(HandshakeRefused):
            self._refuse(failure.value)
            return
        log.failure("opening a session for {key}", failure, key=self.key)
        self._refuse(HandshakeRefused(500, "internal server error"))

    def _refuse(self, refused):
        self._discarding = True  # TLS reads on until the client answers its close
        self._refusing(refused.code, refused.reason)
        self.transport.write(refusal(refused.code, refused.reason, refused.headers))
        self.transport.loseConnection()
        self._abortLater()

    def _refuseTooLarge(self):
        # Closing with the client's bytes unread would reset the connection
        # and lose the answer: answer, half-close, and read until it leaves.
        self._stopRequestTimer()
        self._discarding = True
        self.context.gate.limitHit("request_head_size")
        self._refusing(431, "Request Header Fields Too Large")
        self.transport.write(refusal(431, "Request Header Fields Too Large"))
        self.transport.loseWriteConnection()
        self._abortLater()

    def _abortLater(self):
        """A refused client that will not leave is dropped after the request timeout."""
        self._startRequestTimer(self.transport.abortConnection)

    def _tooSlow(self):
        self._requestTimer = None
        self.context.gate.limitHit("open_handshake_timeout")
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self._stopRequestTimer()
        if self._opening is not None:
            self._leave(self._opening)
        if self.worker is not None:  # connected to the worker, never relayed
            self.worker.transport.abortConnection()
            self.worker = None
        self.context.gate.connectionLost(self.counted)
        self._release()
