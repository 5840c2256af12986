"""
makeProxy: the data path's front door. It builds the parts a connection
meets (see L{wslb.proxy}) from the config, and hands back the listening
factory and the services to start before the listener.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from wslb import proxyssl
from wslb.proxy.allocation import Allocator
from wslb.proxy.capacity import LargestCapacity
from wslb.proxy.errors import unavailable
from wslb.proxy.frames import CLOSE_GOING_AWAY
from wslb.proxy.gate import Gate, connectionLimit
from wslb.proxy.http_listener import ListenerWeb
from wslb.proxy.http_session import SessionProxy, WorkerConnections
from wslb.proxy.identity import Identifier
from wslb.proxy.idle import IdleSweeper
from wslb.proxy.keepalive import KeepAlive
from wslb.proxy.queue_status import ClientScript, QueueStatusPage
from wslb.proxy.queue_watch import QueueWatch
from wslb.proxy.router import Router
from wslb.proxy.sessions import LiveSessions
from wslb.proxy.signing import Signer
from wslb.proxy.splice import CLOSE_TIMEOUT
from wslb.proxy.user_handshake import UserHandshake
from wslb.proxy.worker_handshake import WorkerConnector
from wslb.timeouts import Timeouts

log = Logger()

# How long closing users may take to say goodbye before we stop anyway.
CLOSE_BOUND = 3.0


@dataclass(frozen=True)
class Context:
    """
    What the handshakes and relays of one listener share, and all they may
    reach: given to each, read only.
    """

    clock: Any
    registry: Any
    gate: Gate
    identifier: Identifier
    router: Router
    sessions: LiveSessions
    connectWorker: Any  # WorkerConnector.connect
    traffic: Any  # metrics.Traffic
    requestTimeout: float  # [listen] open_handshake_timeout
    requestTimers: Timeouts  # of that length, for reading requests (one timer for all)
    closeTimers: Timeouts  # of splice.CLOSE_TIMEOUT, for closing handshakes
    forwardedProto: str  # [listen] forwarded_proto: "auto", "https" or "http"
    maxMessageSize: int
    endCloseCode: int
    web: ListenerWeb  # plain HTTP requests for the paths it serves


class UserFactory(Factory):
    """The listener's factory: a L{UserHandshake} for each connection."""

    noisy = False

    def __init__(self, context):
        self.context = context

    def buildProtocol(self, addr):
        return UserHandshake(self.context)


class Drain(service.Service):
    """
    On stop: report unhealthy at once (the NLB stops sending users), give
    connected users ``period`` seconds, then close them with 1001. Plain
    HTTP connections close once their request is answered (idle ones now).
    """

    def __init__(self, clock, sessions, period, web):
        self._clock = clock
        self._sessions = sessions
        self._period = period
        self._web = web
        self.stopping = False

    async def _drain(self):
        self.stopping = True
        self._web.drain()
        sessions = self._sessions
        if sessions.legs():
            await task.deferLater(self._clock, self._period, lambda: None)
        for relay in sessions.legs():
            relay.closeWith(CLOSE_GOING_AWAY, "wslb is shutting down")
        waited = 0.0
        while sessions.legs() and waited < CLOSE_BOUND:
            await task.deferLater(self._clock, 0.1, lambda: None)
            waited += 0.1

    def stopService(self):
        super().stopService()
        return defer.ensureDeferred(self._drain())


@dataclass(frozen=True)
class Proxy:
    """What makeProxy built: ``factory`` for the listener, ``services`` to start first."""

    factory: UserFactory
    services: tuple  # start in this order (stopped in reverse), before the listener
    drain: Drain  # start after the admin API: stopped first, /healthz then says 503
    gate: Gate
    sessions: LiveSessions
    web: ListenerWeb
    allocator: Allocator  # allocation before connect, for the admin API
    sessionProxy: SessionProxy | None  # with [http] paths


def readsProxyHeader(endpoint):
    """Whether a listener reads a PROXY header first: the client's address comes with it."""
    return endpoint.startswith(("haproxy:", f"{proxyssl.PREFIX}:"))


def makeSigner(session, clock):
    """
    The session key L{Signer} whenever any verification material is set (a
    secret, or a public key alone for RS256/ES256 tokens); else None, with
    a warning: keys are then trusted as sent.
    """
    if not session.secret and not session.jwt_public_key_file:
        log.warn("[session] secret is not set: session keys are trusted as sent; "
                 "anyone who knows a key can reach that user's worker")
        return None
    publicKey = None
    if session.jwt_public_key_file:
        with open(session.jwt_public_key_file, "rb") as f:
            publicKey = f.read()
    return Signer(
        session.secret, session.previous_secrets, clock,
        algorithms=session.jwt_algorithms, publicKey=publicKey,
        audience=session.jwt_audience, issuer=session.jwt_issuer,
        requireExp=session.jwt_require_exp, maxAge=session.max_age,
    )


def warnOfCookiesFromAnyOrigin(listen, session, cost):
    """
    A browser sends its cookies with a WebSocket any page opens (the
    handshake is not bound by CORS): with a cookie source and no
    allowed_origins, any web site can open its visitors' sessions.
    """
    cookies = [str(s) for s in (*session.sources, *cost.sources) if s.kind == "cookie"]
    if cookies and not listen.allowed_origins:
        log.warn("{sources} read with [listen] allowed_origins empty: any web page can open a "
                 "WebSocket with its visitors' cookies (cross-site WebSocket hijacking); list "
                 "your sites' origins", sources=", ".join(cookies))


def mountWaitingRoom(config, web, registry, clock, identifier):
    """
    The queue's status (``[queue] status_path``) and the browser client
    (``client_path``) on the listener, when configured; the services they need.
    """
    queue, pool = config.queue, config.pool
    if queue.client_path:
        web.mount(queue.client_path, ClientScript(queue.client_path))
    if not queue.status_path:
        return []
    watch = QueueWatch(registry, clock, max(1, pool.capacity // pool.default_cost),
                       pool.start_timeout)
    web.mount(queue.status_path, QueueStatusPage(queue.status_path, watch, identifier, clock,
                                                 queue.timeout))
    return [watch]


def makeProxy(config, registry, metrics, clock, instance):
    """The data path of one wslb instance (``instance`` names it in the registry)."""
    listen, session = config.listen, config.session
    warnOfCookiesFromAnyOrigin(listen, session, config.cost)
    sessions = LiveSessions(registry, clock, instance, session.reconnect_grace,
                            session.end_close_code)
    router = Router(
        registry, clock, instance, config.pool.placement,
        config.queue.max_length, config.queue.timeout, unavailable, metrics, sessions.held,
        allowOvertake=config.queue.allow_overtake, rejoinGrace=config.queue.rejoin_grace,
    )
    router.setName("router")
    largestCapacity = LargestCapacity(registry, clock, config.pool.capacity)
    identifier = Identifier(session, config.cost, config.pool.default_cost,
                            largestCapacity, makeSigner(session, clock))
    gate = Gate(
        connectionLimit(listen.max_connections), listen.allowed_origins, metrics, clock,
        perIpConnections=listen.per_ip_connections, perIpRate=listen.per_ip_rate,
        proxied=readsProxyHeader(listen.endpoint),
    )
    web = ListenerWeb(clock, gate, listen.open_handshake_timeout)
    services = [sessions, router, largestCapacity]
    sessionProxy = None
    if config.http.paths:
        workers = WorkerConnections(clock, config.http.timeout)
        services.append(workers)
        sessionProxy = SessionProxy(config.http, registry, identifier, workers.agent, clock,
                                    metrics, listen.forwarded_proto)
        for prefix in config.http.paths:
            web.mount(prefix, sessionProxy)
    context = Context(
        clock=clock, registry=registry, gate=gate, identifier=identifier, router=router,
        sessions=sessions,
        connectWorker=WorkerConnector(clock, listen.open_handshake_timeout,
                                      freezing=config.gc.freeze).connect,
        traffic=metrics.traffic, requestTimeout=listen.open_handshake_timeout,
        requestTimers=Timeouts(clock, listen.open_handshake_timeout),
        closeTimers=Timeouts(clock, CLOSE_TIMEOUT),
        forwardedProto=listen.forwarded_proto, maxMessageSize=listen.max_message_size,
        endCloseCode=session.end_close_code, web=web,
    )
    if (sweeper := gate.sweeper()) is not None:
        services.append(sweeper)
    wheels = []
    if listen.auto_ping > 0:
        wheels.append(KeepAlive(clock, listen.auto_ping))
    if listen.idle_timeout > 0:
        wheels.append(IdleSweeper(clock, listen.idle_timeout, gate.limitHit))
    for wheel in wheels:
        sessions.visitEach(wheel)
    services += wheels
    services += mountWaitingRoom(config, web, registry, clock, identifier)
    return Proxy(
        factory=UserFactory(context), services=tuple(services),
        drain=Drain(clock, sessions, listen.drain_period, web), gate=gate, sessions=sessions,
        web=web, allocator=Allocator(router, sessions, registry, clock, largestCapacity,
                                     config.pool.default_cost, config.queue.timeout),
        sessionProxy=sessionProxy,
    )
