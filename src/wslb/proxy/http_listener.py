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
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.client import ResponseDone
from twisted.web.http import HTTPChannel, parse_qs
from twisted.web.resource import IResource, Resource
from zope.interface import implementer

from wslb.logs import Logger
from wslb.proxy.errors import HandshakeRefused, badRequest
from wslb.proxy.head import isUpgrade, originForm, readHead
from wslb.proxy.identity import HandshakeFields
from wslb.proxy.transports import isTCP, takeOver, writesLandIn
from wslb.proxy.user_handshake import handshakeOf

log = Logger()

# A request body a part takes whole (not streamed) is at most this long.
MAX_BUFFERED_BODY = 64 * 1024

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


class IStreamingResource(IResource):
    """
    A resource rendered as soon as a request's head is read, before its
    body: it reads the body as it comes, if it wants it, with
    C{request.body.deliverBody(protocol)} (L{RequestBody}).
    """


@implementer(IPushProducer)
class RequestBody:
    """
    A request's body as it arrives, for a part that streams it: delivered
    to an L{IProtocol} as twisted.web.client delivers a response's, whose
    transport (this) pauses and resumes reading the client's connection.
    Until a protocol asks for it, what arrives is held and reading paused.
    Asking for it is what a client that sent ``Expect: 100-continue`` is
    told to go on by; a request answered without its body never was.
    """

    complete = False  # the whole body came
    done = False  # nothing more is delivered: it came whole, or never will
    _protocol = None
    _ending = None  # the Failure to end a protocol with, once there is one
    _waiting = False  # reading paused: nobody reads the body yet
    _paused = False  # reading paused by the protocol's transport

    def __init__(self, request, length, continues):
        self.length = length  # in bytes; None when chunked (known at its end)
        self._request = request
        self._transport = request.transport
        self._continues = continues  # the client waits for 100 Continue
        self._held = []

    def deliverBody(self, protocol):
        if self._continues and not self._request.startedWriting:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._continues = False
        self._protocol = protocol
        protocol.makeConnection(self)
        held, self._held = self._held, []
        for data in held:
            if self._protocol is not protocol:
                return  # it stopped reading
            protocol.dataReceived(data)
        if self._protocol is not protocol:
            return
        if self._ending is not None:
            protocol.connectionLost(self._ending)
        elif self._waiting:
            self._waiting = False
            if not self._paused:
                self._transport.resumeProducing()

    def received(self, data):
        if self.done:
            return  # abandoned: dropped
        if self._protocol is None:
            self._held.append(data)
            self._waiting = True
            self._transport.pauseProducing()
            return
        if self._paused:  # read anyway (the channel resumed it): pause again
            self._transport.pauseProducing()
        self._protocol.dataReceived(data)

    def ended(self, reason):
        """The body is over: whole (L{ResponseDone}), or not (the client left, or was answered)."""
        if reason.check(ResponseDone):
            self.complete = True
        if self.done:
            return
        self.done = True
        if self._protocol is None:
            self._ending = reason
        else:
            self._protocol.connectionLost(reason)

    @property
    def held(self):
        """Whether wslb holds the client back (nobody reads yet, or the reader is full)."""
        return self._waiting or self._paused

    # IPushProducer, for the protocol reading it

    def pauseProducing(self):
        self._paused = True
        self._transport.pauseProducing()

    def resumeProducing(self):
        self._paused = False
        if not self._waiting:
            self._transport.resumeProducing()

    def stopProducing(self):
        """The reader gives up on the body: the rest is dropped as it comes."""
        self._protocol = None
        self.done = True
        self.resumeProducing()


class ListenerRequest(server.Request):
    """
    A request on the listener, for the part the channel found for it. A
    streaming part (L{IStreamingResource}) is rendered once the head is in
    and reads the body as it comes (L{body}); for any other, the body is
    taken whole, and bounded (L{MAX_BUFFERED_BODY}: 413).
    """

    head = None  # its L{Head}, set by the channel once the head is read
    prefix = None  # where the part serving it is mounted, likewise
    part = None  # that part
    body = None  # a L{RequestBody}, for a streaming part
    _bodyLength = 0

    def fields(self):
        """Where its session key may be (L{Identifier} reads them as a handshake's)."""
        return HandshakeFields(self.head.headers, self._target().partition(b"?")[2].decode())

    def _target(self):
        """The path and query: a target in absolute form gives its path."""
        return originForm(self.head.target).encode("latin-1")

    def gotLength(self, length):
        if IStreamingResource.providedBy(self.part):
            self._stream(length)
            return
        if length is not None and length > MAX_BUFFERED_BODY:
            self.channel.refuse(_tooLarge())
            return
        super().gotLength(length)

    def _stream(self, length):
        # Twisted answers Expect: 100-continue right after this, before the
        # part could refuse the request: the body says when (deliverBody).
        expect = [v.lower() for v in self.requestHeaders.getRawHeaders(b"expect", [])]
        self.requestHeaders.removeHeader(b"expect")
        continues = expect == [b"100-continue"] and self.head.version == "HTTP/1.1"
        self.body = RequestBody(self, length, continues)
        self.method = self.head.method.encode("latin-1")
        self.clientproto = self.head.version.encode("latin-1")
        self.uri = self._target()
        self.path, _, query = self.uri.partition(b"?")
        self.args = parse_qs(query, 1)
        # The channel processes it once Twisted is done with the head.

    def handleContentChunk(self, data):
        if self.body is not None:
            self.body.received(data)
            return
        if self.content is None:
            return  # refused: what is left of it is discarded
        self._bodyLength += len(data)
        if self._bodyLength > MAX_BUFFERED_BODY:
            self.content.close()
            self.content = None
            self.channel.refuse(_tooLarge())
            return
        super().handleContentChunk(data)

    def requestReceived(self, command, path, version):
        if self.body is not None:
            self.body.ended(Failure(ResponseDone()))
            return
        if self.content is None:
            return  # refused meanwhile
        super().requestReceived(command, self._target(), version)

    def finish(self):
        if self.body is not None and not self.body.complete:
            # Answered before its body was read: the rest of it must not be
            # read as the next request. The connection closes after this.
            self.channel.persistent = False
            if not self.startedWriting:
                self.setHeader(b"Connection", b"close")
            self.body.ended(Failure(ConnectionDone("answered before the body ended")))
        super().finish()

    def connectionLost(self, reason):
        if self.body is not None:
            self.body.ended(reason)
        super().connectionLost(reason)


def _tooLarge():
    return HandshakeRefused(413, "request body too large")


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
