"""
A request on the listener, as the hand-off's HTTP channel (http_listener.py)
makes it: for the part mounted where its path is. A part that streams
(L{IStreamingResource}) is rendered once the head is read and takes the body
as it arrives (L{RequestBody}); any other gets the body whole, bounded.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.client import ResponseDone
from twisted.web.http import parse_qs
from twisted.web.resource import IResource
from zope.interface import implementer

from wslb.proxy.errors import HandshakeRefused
from wslb.proxy.head import originForm
from wslb.proxy.identity import HandshakeFields

# A request body a part takes whole (not streamed) is at most this long.
MAX_BUFFERED_BODY = 64 * 1024


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
