"""
The session proxy: a plain HTTP request under ``[http] paths`` that names a
session goes to the worker that session is bound to.

The key is read and checked as a handshake's (the same ``[session]
sources``, the same signing: 400, 401), but a request never mints one and
never assigns a worker: no session, or a session whose worker is gone, is
404. The worker gets the request as the user sent it, less what is the
connection's own, with wslb's ``X-WSLB-Session`` and ``X-Forwarded-*``
instead of any the user sent. A request neither ends nor extends a
session's reconnect grace: the registry is only read.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet import defer
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from wslb.httpclient import QuietPool
from wslb.logs import Logger
from wslb.proxy.errors import HandshakeRefused, unavailable
from wslb.proxy.http_exchange import Exchange, answer
from wslb.proxy.http_request import IStreamingResource
from wslb.proxy.opening import clientScheme, forwardedHeaders
from wslb.proxy.worker_handshake import clientEndpoint, remember
from wslb.registry import DEAD

log = Logger()

# Kept-alive connections to one worker waiting for the next request, at
# most (more are opened while more requests are in flight, and closed after).
IDLE_PER_WORKER = 64
# How long such a connection waits: a worker that closes its own sooner
# is noticed when it does.
IDLE_TIMEOUT = 30.0

# Sessions whose request counts this instance keeps (the oldest go first).
MAX_COUNTED = 100_000

# Request headers the worker does not get as the user sent them: the
# connection's own (RFC 9110 §7.6.1; those the Connection header names too),
# those the Agent writes for its own connection (Host, Content-Length), the
# Expect answered here, credentials meant for a proxy, and what only wslb
# may say of the client and the session.
_DROPPED = frozenset((
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"host", b"content-length", b"expect",
    b"proxy-authorization", b"forwarded", b"x-real-ip",
))
_DROPPED_PREFIXES = (b"x-forwarded-", b"x-wslb-")

_RETRY_AFTER = 1


def workerHeaders(received, forwarded):
    """The headers for the worker: ``received`` (the user's) cleaned, plus ``forwarded``."""
    named = {token.strip().lower() for value in received.getRawHeaders(b"connection", [])
             for token in value.split(b",")}
    headers = Headers()
    for name, values in received.getAllRawHeaders():
        lower = name.lower()
        if lower in _DROPPED or lower in named or lower.startswith(_DROPPED_PREFIXES):
            continue
        headers.setRawHeaders(name, values)
    for name, value in forwarded.items():
        headers.setRawHeaders(name, [value])
    return headers


def httpBase(workerUrl):
    """``ws://host:port`` -> ``http://host:port`` (wss: https)."""
    parts = urlsplit(workerUrl)
    return f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"


class RequestCounts:
    """
    How many HTTP requests this instance proxied for each session, until
    the session ends: O(1) a request, and the status page's count. Counted
    per instance: requests for one session through another instance are
    that instance's.
    """

    def __init__(self, limit=MAX_COUNTED):
        self._counts = {}
        self._limit = limit

    def add(self, key):
        counts = self._counts
        if key not in counts and len(counts) >= self._limit:
            del counts[next(iter(counts))]
        counts[key] = counts.get(key, 0) + 1

    def __getitem__(self, key):
        return self._counts.get(key, 0)

    def forget(self, key):
        self._counts.pop(key, None)


@implementer(IAgentEndpointFactory)
class WorkerEndpoints:
    """
    The Agent's endpoint for each worker, made once (the Agent's own factory
    makes one for every request: a tenth of a request's CPU went to it).
    """

    def __init__(self, reactor, timeout):
        self._reactor = reactor
        self._timeout = timeout
        self._known = {}  # (scheme, host, port) -> endpoint

    def endpointForURI(self, uri):
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._known.get(key)
        if endpoint is None:
            endpoint = remember(self._known, key, clientEndpoint(
                self._reactor, uri.host.decode("ascii"), uri.port, uri.scheme == b"https",
                self._timeout))
        return endpoint


class WorkerConnections(Service):
    """
    The Agent plain HTTP requests reach workers with, and its pool, closed
    on stop. A connection attempt is bounded by the exchange's timeout.
    """

    def __init__(self, reactor, timeout):
        self.pool = QuietPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = IDLE_PER_WORKER
        self.pool.cachedConnectionTimeout = IDLE_TIMEOUT
        self.agent = Agent.usingEndpointFactory(reactor, WorkerEndpoints(reactor, timeout),
                                                pool=self.pool)

    def stopService(self):
        super().stopService()
        return self.pool.closeCachedConnections()


@implementer(IStreamingResource)
class SessionProxy(Resource):
    """The part of the listener that ``[http] paths`` are mounted on."""

    isLeaf = True

    def __init__(self, http, registry, identifier, agent, clock, metrics, forwardedProto="auto",
                 counts=None):
        super().__init__()
        self._stripPrefix = http.strip_prefix
        self._maxBody = http.max_body
        self._timeout = http.timeout
        self._registry = registry
        self._identifier = identifier
        self._agent = agent
        self._clock = clock
        self._metrics = metrics
        self._forwardedProto = forwardedProto
        self.counts = RequestCounts() if counts is None else counts
        registry.addSessionEndedListener(self.counts.forget)

    def render(self, request):
        d = defer.ensureDeferred(self._proxy(request))
        d.addErrback(lambda f: log.failure("proxying {uri}", f, uri=request.uri))
        return NOT_DONE_YET

    async def _proxy(self, request):
        started = self._clock.seconds()
        gone = []
        request.notifyFinish().addErrback(gone.append)
        try:
            key, worker = await self._route(request)
        except HandshakeRefused as refused:
            if refused.code == 401:
                refused.headers.append(("WWW-Authenticate", 'Bearer realm="wslb"'))
            if not gone:
                answer(request, refused)
            self._metrics.httpRequests.labels(str(refused.code), "").inc()
            self._metrics.httpSeconds.observe(self._clock.seconds() - started)
            return
        if gone:
            self._metrics.httpRequests.labels("aborted", worker.id).inc()
            return
        self.counts.add(key)
        target, forwarded = self._target(request)
        scheme = clientScheme(request.transport, self._forwardedProto)
        forwarded.update(forwardedHeaders(request.transport, key, scheme,
                                          request.head.headers.get("host")))
        exchange = Exchange(self._agent, self._clock, self._timeout, self._maxBody,
                            self._metrics, request, worker.id)
        exchange.start((httpBase(worker.url) + target).encode("latin-1"),
                       workerHeaders(request.requestHeaders, forwarded))

    async def _route(self, request):
        """(key, worker) for a request; or the HandshakeRefused to answer it with."""
        key = self._identifier.sessionKey(request.fields())
        if key is None:
            raise HandshakeRefused(404, "no session key in the request (a session starts "
                                        "with its WebSocket)")
        length = request.body.length
        if length is not None and length > self._maxBody:
            raise HandshakeRefused(413, f"the request body is larger than {self._maxBody} "
                                        f"bytes ([http] max_body)")
        registry = self._registry
        try:
            session = await registry.getSession(key)
            worker = None
            if session is not None:
                worker = await registry.getWorker(session.worker, sessions=False)
        except Exception as e:
            self._metrics.registryErrors.inc()
            log.warn("registry unavailable for {key}: {error!r}", key=key, error=e)
            raise unavailable("the registry is unavailable", _RETRY_AFTER) from e
        if session is None:
            raise HandshakeRefused(404, "no session for this key (a session starts with its "
                                        "WebSocket)")
        if worker is None or worker.state == DEAD:
            raise HandshakeRefused(404, "the session's worker is gone")
        return key, worker

    def _target(self, request):
        """The path and query the worker is asked for, and the headers that say more of it."""
        target = request.uri.decode("latin-1")
        if not self._stripPrefix:
            return target, {}
        prefix = request.prefix
        rest = target[len(prefix):]
        if not rest.startswith("/"):
            rest = "/" + rest
        return rest, {"X-Forwarded-Prefix": prefix.rstrip("/") or "/"}
