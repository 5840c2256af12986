"""
makeService(config): one wslb instance as a MultiService.

Children start in the order below and stop in reverse: the admin API and
listener stop first (no new users), users are drained, and the pool (with
any local worker processes) goes last.
"""

from __future__ import annotations

import uuid
from functools import partial

from twisted.application import service, strports
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from wslb.admin.api import makeAdminRoutes, makeAdminSite
from wslb.admin.history import History
from wslb.admin.metrics_page import MetricsPage
from wslb.admin.status_page import StatusAPI, StatusPage
from wslb.collector import FrozenSurvivors
from wslb.config import parseEndpoints
from wslb.gcpauses import GCPauses
from wslb.logs import showSessionKeys
from wslb.metrics import Metrics
from wslb.pool.leader import AlwaysLeader
from wslb.pool.redis_leader import RedisLeader
from wslb.pool.service import PoolService, makeProvider
from wslb.proxy.service import makeProxy
from wslb.registry.memory import MemoryRegistry
from wslb.registry.redis import IRedisRegistryExtras, RedisRegistry
from wslb.upkeep import HEARTBEAT_INTERVAL, RegistryUpkeep

log = Logger()

# /healthz reports 503 when the registry takes longer than this to answer.
REGISTRY_PROBE_TIMEOUT = 1.0
# Every Redis call is bounded by this: a new user gets 503 within it when
# Redis is unreachable.
REGISTRY_TIMEOUT = 1.0
# After Redis starts empty, the pool hands out no worker for this long:
# instances notice within a reconnect delay (redis_connection) and re-assert
# their sessions at the next heartbeat, about 2.2 s at worst. (Every new
# Redis starts this wait too, so longer delays each first start.)
REGISTRY_SETTLE = 3 * HEARTBEAT_INTERVAL


class OrderedServices(service.MultiService):
    """
    A MultiService that stops its children one at a time, last started
    first, each after the previous one has finished stopping: users must be
    drained before the workers they talk to go away.
    """

    async def _stopInOrder(self):
        for child in reversed(list(self)):
            try:
                await defer.maybeDeferred(child.stopService)
            except Exception:
                log.failure("stopping {service}", service=child.name)

    def stopService(self):
        service.Service.stopService(self)
        return defer.ensureDeferred(self._stopInOrder())


class ListenerService(strports.StreamServerEndpointService):
    """A listening endpoint whose port the embedding code (and tests) can ask for."""

    def whenListening(self):
        d = defer.Deferred()
        self._waitingForPort.addCallback(lambda port: (d.callback(port), port)[1])
        return d


def listener(endpoint, factory):
    svc = ListenerService(endpoint, factory)
    svc._raiseSynchronously = True  # twistd fails fast on a bind error
    return svc


def makeRegistry(config, reactor):
    """The registry and the pool's leadership for ``[registry] backend``."""
    if config.registry.backend == "memory":
        return MemoryRegistry(reactor), AlwaysLeader()
    registry = RedisRegistry(
        reactor, config.registry.url, config.registry.namespace, timeout=REGISTRY_TIMEOUT,
    )
    leader = RedisLeader(registry, config.registry.namespace, config.pool.leader_ttl, reactor)
    return registry, leader


def registryReady(registry, clock):
    """
    For a Redis registry: hold the pool (adopting and health-checking
    workers) for a few heartbeats after Redis started empty, so every
    instance has re-asserted the sessions it relays before workers it knew
    become assignable again; else one could take a second session.
    """
    if not IRedisRegistryExtras.providedBy(registry):
        return None
    return RegistrySettling(registry, clock).ready


class RegistrySettling:
    """
    Whether the registry's epoch is REGISTRY_SETTLE old, asked of Redis on
    each pool tick only until it is: an old epoch only grows older, until
    the registry's ``disruptions`` move (Redis may have lost its data; the
    upkeep heartbeat's epochChanged sees a flush within a beat), and then
    it is asked again.
    """

    def __init__(self, registry, clock):
        self._registry = registry
        self._clock = clock
        self._settledAt = None  # the registry's disruptions when the epoch was old enough

    def ready(self):
        disruptions = self._registry.disruptions
        if disruptions == self._settledAt:
            return True

        def settled(age):
            if age >= REGISTRY_SETTLE:
                # As of the ask: a disruption while it was out asks again.
                self._settledAt = disruptions
            return age >= REGISTRY_SETTLE

        return self._registry.epochAge(self._clock.seconds()).addCallback(settled)


def makeService(config, reactor=None):
    """
    Build a wslb instance from a L{wslb.config.Config}. Raises
    L{wslb.config.ConfigError} for an endpoint Twisted cannot parse.
    """
    if reactor is None:
        from twisted.internet import reactor
    endpoints = parseEndpoints(config, partial(serverFromString, reactor))
    showSessionKeys(config.log.session_keys)
    instance = uuid.uuid4().hex[:12]
    top = OrderedServices()

    metrics = Metrics()
    GCPauses(metrics.gcPauses).setServiceParent(top)
    if config.gc.freeze:
        FrozenSurvivors(reactor, config.gc.thaw_interval).setServiceParent(top)
    registry, leader = makeRegistry(config, reactor)
    for part in (registry, leader):
        if service.IService.providedBy(part):
            part.setServiceParent(top)  # first in, last out: they outlive the rest
    provider = makeProvider(reactor, config.pool)
    pool = PoolService(registry, provider, leader, reactor, config.pool,
                       ready=registryReady(registry, reactor))
    pool.setName("pool")
    pool.setServiceParent(top)

    proxy = makeProxy(config, registry, metrics, reactor, instance)
    for part in proxy.services:
        part.setServiceParent(top)
    if IRedisRegistryExtras.providedBy(registry):
        RegistryUpkeep(
            registry, reactor, instance, proxy.sessions, leader, config.pool.scale_interval,
            config.session.reconnect_grace,
        ).setServiceParent(top)

    def isServing():
        # Serving means: not draining, and the registry answers promptly.
        if proxy.drain.stopping:
            return defer.succeed(False)
        d = registry.queueInfo(reactor.seconds())
        d.addTimeout(REGISTRY_PROBE_TIMEOUT, reactor)
        return d.addCallbacks(lambda _: True, lambda _: False)

    metrics.watch("wslb_connections", lambda: proxy.gate.connections)
    metrics.watch("wslb_leader", lambda: int(leader.isLeader()))
    metrics.watch("wslb_leader_fencing_token", lambda: leader.fencingToken)
    metrics.watch("wslb_workers_starting_oldest_seconds", pool.startingFor)
    metrics.watch("wslb_queue_timeout_seconds", lambda: config.queue.timeout)
    metrics.watch("wslb_pool_start_timeout_seconds", lambda: config.pool.start_timeout)
    metrics.watchCounts(
        "wslb_scaler_actions", "Workers launched or terminated by the scaler.", "action",
        lambda: {a: pool.scaler.actionCounts[a] for a in ("launch", "terminate")},
    )
    metrics.watchCounts(
        "wslb_health_checks", "Worker health checks this instance made, by outcome.", "outcome",
        lambda: pool.health.outcomes,
    )
    httpRequests = (proxy.sessionProxy.counts.__getitem__ if proxy.sessionProxy is not None
                    else lambda key: 0)
    routes = makeAdminRoutes(registry, reactor, isServing, config.admin.token,
                             allocator=proxy.allocator, httpRequests=httpRequests)
    routes.mount("metrics", MetricsPage(metrics, lambda: metrics.refresh(registry, reactor)))
    routes.mount("status", StatusPage())
    StatusAPI(
        instance, reactor,
        lambda: {"leader": leader.isLeader(), "fencing_token": leader.fencingToken},
        lambda: pool.scaler.recentActions,
    ).addRoutes(routes)
    history = History(reactor, metrics, registry)
    history.setServiceParent(top)
    history.addRoutes(routes)
    admin = listener(endpoints["admin"], makeAdminSite(routes, reactor))
    admin.setName("admin")
    admin.setServiceParent(top)
    proxy.drain.setServiceParent(top)
    users = listener(endpoints["listen"], proxy.factory)
    users.setName("listener")
    users.setServiceParent(top)
    return top
