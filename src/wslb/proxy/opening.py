"""
From a user's request to an open connection with its worker: the session
side of L{wslb.proxy.user_handshake.UserHandshake}. The gate admits the
request, the identifier names its session and cost, the router finds it a
worker (perhaps after queueing), and wslb does its own handshake with that
worker.

The user's handshake is held meanwhile; the 101 then carries the worker's
subprotocol.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from twisted.internet.interfaces import ISSLTransport

from wslb.logs import Logger
from wslb.proxy.errors import HandshakeRefused
from wslb.proxy.identity import HandshakeFields
from wslb.proxy.worker_handshake import WorkerUnavailable

log = Logger()

# The most a client may send before its handshake is answered: request line,
# headers, and anything it sends early while the handshake is held.
MAX_REQUEST_HEAD = 16 * 1024

# Request headers the worker sees as the user sent them.
PASSED_HEADERS = ("Origin", "Cookie", "Authorization", "User-Agent")


class Request(NamedTuple):
    uri: str  # path and query, as the user sent them
    headers: dict  # lower-cased name -> value (a repeated header's values joined by ", ")
    protocols: list  # the subprotocols the user offers


class WorkerRef(NamedTuple):
    id: str
    url: str
    provider: str
    capacity: int


def clientScheme(transport, forwardedProto="auto"):
    """
    How the client reached wslb, "https" or "http": the one place that
    decides, for X-Forwarded-Proto and for minted cookies' Secure. "auto"
    asks the connection itself (TLS on any listener: ssl:, proxyssl:,
    haproxy:ssl:, a plugin's); ``[listen] forwarded_proto`` overrides it where
    TLS ends in front of wslb, as on an NLB's TLS listener.
    """
    if forwardedProto != "auto":
        return forwardedProto
    return "https" if ISSLTransport.providedBy(transport) else "http"


def forwardedHeaders(transport, key, scheme, host):
    """
    What wslb tells a worker about a request on ``transport``: its session
    key, and where the client is and what it asked for (instead of anything
    the client said about it: these replace its own headers).
    """
    headers = {
        "X-WSLB-Session": key,
        "X-Forwarded-For": getattr(transport.getPeer(), "host", "unix"),
        "X-Forwarded-Proto": scheme,
    }
    if host is not None:
        headers["X-Forwarded-Host"] = host
    return headers


class OpensSessions:
    """
    A user connection's session: ``_open`` routes a request to a worker and
    connects to it; the rest is the bookkeeping around that. ``context``
    is the listener's L{wslb.proxy.service.Context}.
    """

    context = None

    key = None
    cost = None
    placement = None  # WorkerRef: the worker this session is bound to
    worker = None  # the worker's handshake (and connection), until relayed
    requestId = None  # what the registry counts this connection by (IRegistry.assign)
    _counted = False  # assign() counted this connection: release() it once
    _assigned = None  # (fresh, seconds waited) for the log
    _requestTimer = None  # bounds reading the request, or a refused client's stay
    _waiting = None  # the Deferred _open waits on, if any

    def _startRequestTimer(self, then):
        self._requestTimer = self.context.requestTimers.start(then)

    def _stopRequestTimer(self):
        if self._requestTimer is not None and self._requestTimer.active():
            self._requestTimer.cancel()
        self._requestTimer = None

    async def _open(self, request):
        """The response headers of the 101; sets ``self.worker``. Or HandshakeRefused."""
        context = self.context
        context.gate.admit(self, request)
        scheme = clientScheme(self.transport, context.forwardedProto)
        identity = context.identifier.identify(
            HandshakeFields(request.headers, request.uri.partition("?")[2]),
            secure=scheme == "https")
        self.key = identity.key
        self.cost = identity.cost
        asked = context.clock.seconds()
        self.requestId = os.urandom(16).hex()  # as random as a uuid4, in a fifth of its time
        assigned = await self._waitFor(
            context.router.route(identity.key, identity.cost, self.requestId))
        worker = assigned.worker
        # Only what re-asserting the session needs: a Worker snapshot would
        # keep the whole list of its sessions alive with every connection.
        self.placement = WorkerRef(worker.id, worker.url, worker.provider, worker.capacity)
        self._counted = True
        self._assigned = (assigned.fresh, round(context.clock.seconds() - asked, 3))
        try:
            self.worker = await self._waitFor(context.connectWorker(
                worker.url, request.uri, self._workerHeaders(request, scheme), request.protocols))
        except WorkerUnavailable as e:
            log.info("worker {worker} unavailable for {key}: {why}",
                     worker=worker.id, key=self.key, why=str(e))
            self._counted = False  # abandoned: a session bound for it alone ends
            context.sessions.abandon(self.key, self.requestId)
            raise HandshakeRefused(502, "the worker is unavailable") from e
        return {"Set-Cookie": identity.setCookie} if identity.setCookie else {}

    def _waitFor(self, waited):
        """``waited``, the Deferred _open awaits now: what L{_leave} cancels."""
        self._waiting = waited
        return waited.addBoth(self._waited)

    def _waited(self, result):
        self._waiting = None
        return result

    def _leave(self, opening):
        """
        The user left while ``opening`` (_open's Deferred) was under way: it
        fails with CancelledError. Cancelled through what it waits on, not
        itself: Twisted's cancellation of a coroutine's Deferred leaves its
        failures' tracebacks in a reference cycle with the connection.
        """
        if self._waiting is not None:
            self._waiting.cancel()
        else:
            opening.cancel()

    def _workerHeaders(self, request, scheme):
        headers = {
            name: request.headers[name.lower()]
            for name in PASSED_HEADERS if name.lower() in request.headers
        }
        headers.update(forwardedHeaders(self.transport, self.key, scheme,
                                        request.headers.get("host")))
        return headers

    def _refusing(self, code, reason):
        self.context.gate.refused(code)
        log.info("handshake refused: {status} {reason}", event="refused", status=code,
                 reason=reason, key=self.key, peer=self.context.gate.address(self))

    def _relaying(self, relay, protocol):
        context = self.context
        context.gate.accepted()
        context.sessions.opened(self.key, relay)
        fresh, waited = self._assigned
        log.info(
            "{key} relaying to {worker}", event="opened", key=self.key,
            worker=self.placement.id, worker_url=self.placement.url, fresh=fresh,
            cost=self.cost, waited=waited, peer=context.gate.address(self),
            protocol=protocol,
        )

    def _release(self):
        """The connection is over before a relay took it: count it out of its session."""
        if self._counted:
            self._counted = False
            self.context.sessions.release(self.key, self.requestId)
