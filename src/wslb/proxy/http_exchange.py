"""
One plain HTTP request through to its worker and the answer back, for the
session proxy (http_session.py): Twisted's Agent over a pool of kept-alive
connections per worker, both bodies streamed with backpressure (the user's
connection is read as fast as the worker's takes it, and the other way
round), so wslb holds no more of either than its sockets' buffers.
"""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.web.client import PotentialDataLoss, ResponseDone
from twisted.web.http import NO_BODY_CODES
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from wslb.logs import Logger
from wslb.metrics import TO_USER, TO_WORKER
from wslb.proxy.errors import HandshakeRefused

log = Logger()

# Answer headers that are the connection's, not the answer's (RFC 9110
# §7.6.1; Twisted's client keeps Content-Length and the rest of them apart
# already), and the trailer announcement of a body whose trailers are not
# passed on.
HOP_BY_HOP = frozenset((
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade",
))


def answer(request, refused):
    """Answer ``request`` with ``refused`` (a L{HandshakeRefused}) as JSON: ``{"error": ...}``."""
    body = json.dumps({"error": refused.reason}).encode("utf-8")
    if request.body is not None and not request.body.complete:
        request.setHeader(b"Connection", b"close")  # what is left of it is not read
    request.setResponseCode(refused.code)
    request.responseHeaders.removeHeader(b"server")
    for name, value in refused.headers:
        request.setHeader(name, value)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    request.setHeader(b"Cache-Control", b"no-store")
    request.write(body)
    request.finish()


class BodyTooLarge(Exception):
    """A chunked request body went over ``[http] max_body``."""


@implementer(IBodyProducer)
class WorkerBody:
    """
    The user's request body as the Agent sends it: read from the listener's
    L{wslb.proxy.http_listener.RequestBody} as the worker takes it (the
    worker's connection pauses it, and so the user's).
    """

    transport = None  # the RequestBody
    _done = None  # what startProducing returned, until it fires

    def __init__(self, exchange, body, maxBody):
        self.length = UNKNOWN_LENGTH if body.length is None else body.length
        self._exchange = exchange
        self._body = body
        self._maxBody = maxBody
        self._consumer = None
        self.sent = 0

    def startProducing(self, consumer):
        self._consumer = consumer
        done = self._done = Deferred(lambda _: self.stopProducing())
        self._body.deliverBody(self)  # what came already may be all of it: done fires
        return done

    # The body's reader (an IProtocol).

    def makeConnection(self, transport):
        self.transport = transport

    def dataReceived(self, data):
        if self._done is None:
            return
        self.sent += len(data)
        if self.sent > self._maxBody:
            # The request fails as it is sent: the Agent drops the worker's
            # connection, and the exchange answers 413.
            done, self._done = self._done, None
            self.transport.stopProducing()
            self._exchange.tooLarge()
            done.errback(BodyTooLarge())
            return
        self._consumer.write(data)
        self._exchange.moved(TO_WORKER, len(data))

    def connectionLost(self, reason):
        done, self._done = self._done, None
        if done is None:
            return  # stopped: it must never fire
        if reason.check(ResponseDone):
            done.callback(None)
        elif not self._exchange.answered:
            done.errback(reason)  # the user left mid-body: the Agent gives up on the worker
        # else answered before the body ended: the worker's connection closes with it

    # IPushProducer, for the worker's connection

    def pauseProducing(self):
        self.transport.pauseProducing()

    def resumeProducing(self):
        self.transport.resumeProducing()

    def stopProducing(self):
        self._done = None
        if self.transport is not None:
            self.transport.stopProducing()


class ResponseRelay(Protocol):
    """The worker's answer body on its way to the user, who pauses it while it cannot take more."""

    def __init__(self, exchange):
        self._exchange = exchange

    def connectionMade(self):
        self._exchange.request.registerProducer(self.transport, True)

    def dataReceived(self, data):
        self._exchange.request.write(data)
        self._exchange.moved(TO_USER, len(data))

    def connectionLost(self, reason):
        self._exchange.answerEnded(reason)


class Exchange:
    """
    One request to a worker and its answer. ``timeout`` bounds how long
    nothing may move either way: before the answer began, 504; after, the
    user's connection is closed (the answer is cut off).
    """

    answered = False  # the user's answer began: status and headers are out
    _relay = None
    _why = None  # why the Agent's request was cancelled: a HandshakeRefused
    _over = False
    _code = None  # the worker's status

    def __init__(self, agent, clock, timeout, maxBody, metrics, request, workerId):
        self._agent = agent
        self._clock = clock
        self._timeout = timeout
        self._maxBody = maxBody
        self._metrics = metrics
        self.request = request
        self._workerId = workerId
        self._started = clock.seconds()
        self._timer = None
        self._asking = None

    def start(self, url, headers):
        request = self.request
        body = request.body
        producer = WorkerBody(self, body, self._maxBody) if body.length != 0 else None
        self._timer = self._clock.callLater(self._timeout, self._stalled)
        request.notifyFinish().addErrback(self._userLeft)
        asking = self._asking = self._agent.request(request.method, url, headers, producer)
        asking.addCallbacks(self._answer, self._failed)
        if self._why is not None:  # cut short while it was being sent
            asking.cancel()

    def moved(self, direction, count):
        """Body bytes went ``direction``: progress."""
        self._metrics.httpBytes[direction].inc(count)
        if self._timer is not None:
            self._timer.reset(self._timeout)

    def _answer(self, response):
        self._asking = None
        if self._over:  # the user left while it came
            response.deliverBody(_Dropped())
            return
        self.answered = True
        self._timer.reset(self._timeout)
        request = self.request
        request.setResponseCode(response.code, response.phrase)
        headers = request.responseHeaders
        headers.removeHeader(b"server")  # the worker's own, if it says one
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in HOP_BY_HOP:
                headers.setRawHeaders(name, values)
        if (response.length is not UNKNOWN_LENGTH and request.method != b"HEAD"
                and response.code not in NO_BODY_CODES):
            headers.setRawHeaders(b"Content-Length", [b"%d" % response.length])
        self._code = response.code
        self._relay = ResponseRelay(self)
        response.deliverBody(self._relay)

    def answerEnded(self, reason):
        if self._over:
            return  # the user left: nobody to answer
        request = self.request
        request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            request.finish()
            self._end(f"{self._code // 100}xx")
            return
        log.info("worker {worker} broke off its answer to {uri}: {why}",
                 worker=self._workerId, uri=request.uri, why=reason.getErrorMessage())
        request.transport.abortConnection()  # the user must see it cut off
        self._end("aborted")

    def _failed(self, failure):
        self._asking = None
        if self._over:
            return
        refused = self._why
        if refused is None:
            refused = HandshakeRefused(502, "the worker failed to answer")
            log.info("worker {worker} failed to answer {uri}: {why}", worker=self._workerId,
                     uri=self.request.uri, why=failure.getErrorMessage())
        answer(self.request, refused)
        self._end(str(refused.code))

    def tooLarge(self):
        """The body went over ``max_body``: its request fails (and _failed answers)."""
        self._cutShort(HandshakeRefused(413, f"the request body is larger than {self._maxBody} "
                                             f"bytes ([http] max_body)"), cancel=False)

    def _stalled(self):
        self._timer = None
        log.info("worker {worker}: nothing moved for {timeout}s on {uri}", worker=self._workerId,
                 timeout=self._timeout, uri=self.request.uri)
        self._cutShort(HandshakeRefused(504, f"the worker did not answer within "
                                             f"{self._timeout:g}s ([http] timeout)"))

    def _cutShort(self, refused, cancel=True):
        if self._over:
            return
        if not self.answered:
            self._why = refused
            if cancel and self._asking is not None:
                self._asking.cancel()  # _failed answers
            return
        self._relay.transport.stopProducing()
        self.request.transport.abortConnection()
        self._end("aborted")

    def _userLeft(self, failure):
        if self._over:
            return
        self._end("aborted")
        if self._asking is not None:
            self._asking.cancel()
        elif self._relay is not None and self._relay.transport is not None:
            self._relay.transport.stopProducing()

    def _end(self, outcome):
        self._over = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        metrics = self._metrics
        metrics.httpRequests.labels(outcome, self._workerId).inc()
        metrics.httpSeconds.observe(self._clock.seconds() - self._started)


class _Dropped(Protocol):
    """An answer nobody waits for any more: its connection is closed."""

    def connectionMade(self):
        self.transport.stopProducing()
