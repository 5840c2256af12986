"""
Plain HTTP on the listener: the hand-off from the hand-written handshake
reader to Twisted's HTTP server.

The listener speaks WebSocket first. A request that is no WebSocket upgrade,
for a path some part of wslb serves (L{ListenerWeb.mount}), is handed over
with the bytes already read to an L{HTTPChannel} of a twisted.web L{Site}
whose resource tree is those parts; the connection keeps what the handshake
knew of it (its peer behind a PROXY header, its TLS, its place in the gate's
counts). Twisted then reads that request and any kept-alive ones after it.

Every request head on such a connection is read by the same strict reader
as a handshake (L{wslb.proxy.head}) and passes the same gate (rate, origin);
one for a path nothing serves gets the answer it would have got as the
connection's first request (426 for a GET), and a WebSocket upgrade, which
must come on a new connection, gets 400; both close the connection.
Each request is an L{wslb.proxy.http_request.ListenerRequest}.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from twisted.web import server
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource

from wslb.logs import Logger
from wslb.proxy.errors import HandshakeRefused, badRequest
from wslb.proxy.head import isUpgrade, originForm, readHead
from wslb.proxy.http_request import ListenerRequest
from wslb.proxy.transports import isTCP, takeOver, writesLandIn
from wslb.proxy.user_handshake import handshakeOf

log = Logger()

# How long a client that was answered and is being closed may still send
# (its request's body, unread) before its connection is dropped: it must
# read the answer before the close, not lose it to a reset.
LINGER = 2.0

# Request headers that say how long the body is: once only, and not both.
_FRAMING = ("content-length", "transfer-encoding")


def servedPath(target):
    """The path a request target names (absolute form too), or a 400."""
    return originForm(target).partition("?")[0]


def checkHTTP(head):
    """
    Refuse (400) what a plain HTTP request may not be: a head whose body
    length two parties could read differently (RFC 9112 §6.3: both
    Content-Length and Transfer-Encoding, either one twice, a transfer coding
    other than chunked, chunked before HTTP/1.1), or without exactly one
    Host in HTTP/1.1.
    """
    headers = head.headers
    for name in _FRAMING:
        if name in head.repeated:
            raise badRequest(f"{name} header appears more than once")
    if all(name in headers for name in _FRAMING):
        raise badRequest("both Content-Length and Transfer-Encoding")
    coding = headers.get("transfer-encoding")
    if coding is not None and (coding.lower() != "chunked" or head.version != "HTTP/1.1"):
        raise badRequest("the only transfer coding taken is chunked, in HTTP/1.1")
    length = headers.get("content-length")
    if length is not None and not (length.isascii() and length.isdigit()):
        raise badRequest("Content-Length must be digits")
    if head.version == "HTTP/1.1" and ("host" not in headers or "host" in head.repeated):
        raise badRequest("an HTTP/1.1 request needs one Host header")


class Mounts(Resource):
    """
    The listener's resource tree: parts mounted at path prefixes (the
    longest matching prefix wins). A part is traversed from its mount point,
    as if it were a child: ``/session/`` mounted, ``/session/a/b`` gives it
    ``prepath`` ``[b"session"]`` and ``postpath`` ``[b"a", b"b"]``.
    """

    def __init__(self):
        super().__init__()
        self.parts = []  # (prefix, resource), longest prefix first

    def mount(self, prefix, resource):
        if not prefix.startswith("/"):
            raise ValueError(f"a mount point is a path: {prefix!r}")
        self.parts.append((prefix, resource))
        self.parts.sort(key=lambda part: -len(part[0]))

    def find(self, path):
        """(prefix, resource) serving ``path`` (a str), or None."""
        for prefix, resource in self.parts:
            if path.startswith(prefix):
                return prefix, resource
        return None

    def getChildWithDefault(self, name, request):
        # Traversal starts here with the path's first segment: start it
        # again from the part's mount point instead.
        path = request.path.decode("latin-1")
        prefix, resource = self.find(path)
        request.prepath = [s.encode("latin-1") for s in prefix.strip("/").split("/") if s]
        rest = path[len(prefix):].lstrip("/")
        request.postpath = [unquote_to_bytes(s) for s in rest.split("/")] if rest else []
        return resource


class ListenerChannel(HTTPChannel):
    """
    Twisted's HTTP/1.1 server protocol for a connection handed over by the
    handshake reader: reads each head strictly first (L{readHead},
    L{checkHTTP}), passes it through the gate, and answers here what no part
    serves. Closing after an answer is lingering: the client may read it
    whole before its connection goes.
    """

    _lines = None  # the head being read, line by line (None: between requests)
    _closing = False
    _lingering = None  # the DelayedCall dropping a client being closed

    def __init__(self, web, counted):
        super().__init__()
        self.web = web
        self.counted = counted  # what the gate counts this connection as

    def dataReceived(self, data):
        if not self._closing:
            super().dataReceived(data)

    def rawDataReceived(self, data):
        if not self._closing:
            super().rawDataReceived(data)

    def lineReceived(self, line):
        if self._closing:
            return
        if self._lines is None:
            if line:  # a request line (Twisted skips one blank line before it)
                self._lines = [line]
            return super().lineReceived(line)
        if line:
            self._lines.append(line)
            return super().lineReceived(line)
        lines, self._lines = self._lines, None
        try:
            head, found = self.web.admit(self, b"\r\n".join(lines))
        except HandshakeRefused as refused:
            self.refuse(refused)
            return
        request = self.requests[-1]
        request.head, (request.prefix, request.part) = head, found
        super().lineReceived(line)  # the head's end: Twisted takes it on
        if request.body is not None and not self._closing:
            # A streaming part's turn, now that Twisted is done with the head
            # (and, without a body, with the request): it may answer at once.
            request.process()

    def refuse(self, refused):
        """Answer with a refusal, and close."""
        self.web.refused(self, refused)
        self.persistent = False
        lines = [f"HTTP/1.1 {refused.code} {' '.join(refused.reason.split())}",
                 *(f"{name}: {value}" for name, value in refused.headers),
                 "Connection: close", "Content-Length: 0"]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
        self.loseConnection()

    def loseConnection(self):
        """
        Half-close once what was written is sent, read on (and drop) what
        the client still sends, drop it after L{LINGER}: closing with its
        bytes unread would reset the connection, and the client might lose
        the answer.
        """
        if self._closing:
            return
        self._closing = True
        self.setTimeout(None)
        transport = self.transport
        transport.unregisterProducer()
        transport.resumeProducing()
        if isTCP(writesLandIn(transport)):
            transport.loseWriteConnection()
        else:  # TLS: its close reads on until the client answers it
            transport.loseConnection()
        self._lingering = self.callLater(LINGER, transport.abortConnection)

    def timeoutConnection(self):
        """Idle between requests (quietly closed), or too slow sending one."""
        body = self.requests[-1].body if self.requests else None
        if body is not None and body.held and not body.done:
            # Not the client's silence: wslb stopped reading (the part's own
            # timeout bounds how long that may last).
            self.resetTimeout()
            return
        if self.requests:
            self.web.limitHit("open_handshake_timeout")
        self.loseConnection()

    def connectionLost(self, reason):
        if self._lingering is not None and self._lingering.active():
            self._lingering.cancel()
        super().connectionLost(reason)
        self.web.connectionLost(self)


class ListenerWeb:
    """
    The parts of wslb that answer plain HTTP on the listener, and the
    hand-off that brings them their requests: a twisted.web L{Site} over
    L{Mounts}, and the gate's view of those requests.
    """

    def __init__(self, clock, gate, requestTimeout):
        self.clock = clock
        self._gate = gate
        self._requestTimeout = requestTimeout
        self.mounts = Mounts()
        self.site = server.Site(self.mounts, requestFactory=ListenerRequest, reactor=clock,
                                timeout=requestTimeout, parsePOSTFormSubmission=False)
        self.channels = set()  # open connections handed over

    def mount(self, prefix, resource):
        """
        Serve requests whose path starts with ``prefix`` with ``resource``
        (a twisted.web resource, traversed from there): the way a part of
        wslb joins the listener.
        """
        self.mounts.mount(prefix, resource)

    def drain(self):
        """Shutting down: each connection closes once its request is answered (idle ones now)."""
        for channel in list(self.channels):
            channel.persistent = False
            if not channel.requests:
                channel.loseConnection()

    def takes(self, head):
        """Whether a connection's first request (its L{Head}) is for a part here."""
        if not self.mounts.parts or isUpgrade(head):
            return False
        try:
            path = servedPath(head.target)
        except HandshakeRefused:
            return False  # the handshake's refusal says it
        return self.mounts.find(path) is not None

    def handOff(self, handshake, counted, data):
        """
        Make an HTTP channel the protocol of ``handshake``'s connection and
        give it ``data``, the bytes read so far (the first request's head
        and whatever followed). The connection stays counted by the gate as
        ``counted`` until it is gone.
        """
        channel = ListenerChannel(self, counted)
        channel.site = channel.factory = self.site
        channel.requestFactory = self.site.requestFactory
        channel.timeOut = self._requestTimeout
        channel.callLater = self.clock.callLater
        transport = handshake.transport
        takeOver(handshake, channel)
        channel.makeConnection(transport)
        self.channels.add(channel)
        channel.dataReceived(data)

    def admit(self, channel, raw):
        """
        The L{Head} of a request on a handed-over connection and (the mount
        point, the part) serving it; or the refusal to answer it with.
        """
        head = readHead(raw)
        if isUpgrade(head):
            raise badRequest("a WebSocket opens on a new connection, not one that carried "
                             "HTTP requests")
        found = self.mounts.find(servedPath(head.target))
        if found is None:
            handshakeOf(head)  # raises what the connection's first request would have got
        checkHTTP(head)
        self._gate.admit(channel, head)
        return head, found

    def refused(self, channel, refused):
        self._gate.refused(refused.code)
        log.info("HTTP request refused: {status} {reason}", event="refused",
                 status=refused.code, reason=refused.reason,
                 peer=self._gate.address(channel))

    def limitHit(self, limit):
        self._gate.limitHit(limit)

    def connectionLost(self, channel):
        self.channels.discard(channel)
        self._gate.connectionLost(channel.counted)
