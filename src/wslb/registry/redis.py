"""
The Redis registry, shared by every wslb instance of a pool.

Each IRegistry method is one Lua script run (L{wslb.registry.redis_ops},
``lua/*.lua``), so every state transition is atomic across instances and
the Lambda handlers run the very same logic. Scripts announce changes on
the ``{ns}:events`` channel; a subscriber connection hands them to the
listeners through the clock, in the order they came, never from inside a
registry call. Every call is bounded by ``timeout``: with Redis away, calls
fail (callers answer 503) and the connections come back by themselves.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import deque

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from wslb.redis_url import parseRedisURL
from wslb.registry import redis_ops
from wslb.registry._interfaces import IRegistry
from wslb.registry.keys import Keys
from wslb.registry.redis_connection import RedisConnection

log = Logger()


class IRedisRegistryExtras(Interface):
    """
    What a registry shared through Redis needs beyond IRegistry: surviving
    the loss of Redis's data and the death of a wslb instance (DESIGN §8).

    Wiring (each wslb instance, ``instance`` being its id):
      - every second or so, ``instanceHeartbeat(instance, ttl)`` with a TTL
        of a few beats, and ``epochChanged()``; when either says the
        registry forgot us (heartbeat False after the first beat, or epoch
        True), re-assert every relayed session with ``reassertSession``
        before assigning new ones;
      - on the leader, every scale interval, ``sweepInstances(now)`` (drops
        the connection counts of instances whose heartbeat expired) and
        ``expireSessions(now, grace)`` (their sessions' grace timers died
        with them);
      - every so often, ``reconcile(instance, held, now)`` (IRegistry): a
        release or abandon lost with Redis does not count forever.
    """

    def reassertSession(key, worker_id, worker_url, provider, capacity, cost, instance,
                        requests, now):
        """
        Put back a session this instance relays right now, after Redis lost
        it: recreate the worker (state healthy) if missing, bind the key to
        it if unbound (adding its cost to the load), and make this
        instance's connections of it those of the request ids ``requests``
        (at least one: see IRegistry.assign). Fires with the L{Session}
        as the registry has it; when its worker is not ``worker_id`` the key
        was re-bound meanwhile and nothing changed: close the user (1012).
        """

    def dropInstance(instance, now):
        """
        An instance died: drop the connections it counted; sessions left
        with none start their reconnect grace at ``now``. Fires with those
        keys, sorted.
        """

    def sweepInstances(now):
        """
        Drop (as dropInstance) every instance whose heartbeat key
        ``{ns}:instance:<id>`` expired. Fires with their ids, sorted.
        """

    def instanceHeartbeat(instance, ttl):
        """
        Mark this instance alive for ``ttl`` seconds. Fires with True when
        its previous heartbeat was still there; False on the first beat,
        after it was swept, or after Redis lost its data.
        """

    def epochAge(now):
        """Fire with the seconds since the registry's epoch was set."""

    def epochChanged():
        """
        Fire with True when the registry's epoch (a random value set once,
        SET NX) differs from the one seen before: Redis lost its data. The
        first call only learns the epoch (False).
        """

    disruptions = Attribute(
        """
        A count that grows whenever Redis may have lost its data: the
        command connection dropped (a restart, a failover), or epochChanged
        found a new epoch (a flush). What was learnt from Redis while it
        stayed the same (the epoch's age) still holds.
        """
    )

    def whenNoticesDelivered():
        """
        Fire once every notice published before this call has been handed
        to the listeners (a barrier: tests settle with it). Bounded.
        """


@implementer(IRegistry, IRedisRegistryExtras)
class RedisRegistry(Service):
    """
    IRegistry over the Redis at ``url`` (redis:// or rediss://; ``ca_file``
    stands in for the URL's ``ssl_ca_certs``), keys under ``{namespace}:``.
    A Service: it connects on start and disconnects on stop.
    """

    def __init__(self, clock, url, namespace, timeout=2.0, ca_file=None):
        self._clock = clock
        self.keys = Keys(namespace)
        self._scriptKeys = self.keys.scriptKeys()
        self.connection = RedisConnection(clock, parseRedisURL(url, ca_file), timeout)
        self._capacityListeners = []
        self._sessionEndedListeners = []
        self._queueListeners = []
        self._pending = deque()  # (callable, args) to run from the clock, in order
        self._delivery = None  # the DelayedCall running them
        self._subscribedOnce = defer.Deferred()
        self._barriers = {}  # sync token -> Deferred
        self._epoch = None
        self._newEpochs = 0  # times epochChanged found a new epoch

    def startService(self):
        super().startService()
        log.info("registry: Redis at {url}", url=self.connection.address.redacted())
        self.connection.connect()
        self.connection.subscribe(self.keys.events, self._received, self._subscribed)
        self.epochChanged().addErrback(
            lambda f: log.warn("registry epoch unknown yet: {e}", e=f.getErrorMessage()))

    def stopService(self):
        super().stopService()
        if self._delivery is not None and self._delivery.active():
            self._delivery.cancel()
        self._delivery = None
        self._pending.clear()
        return self.connection.disconnect()

    def _run(self, make, *args):
        """Build an Op (its ValueError fails the Deferred) and run it."""
        try:
            op = make(*args)
        except Exception:
            return defer.fail()
        d = self.connection.runScript(op.source, self._scriptKeys, op.args)
        return d.addCallback(op.decode)

    @defer.inlineCallbacks
    def _paged(self, page, after, limit, name):
        """
        Up to ``limit`` (None: all) records after ``after``, read a page
        (``page(after, n)``: an Op) at a time: each call is short, and other
        instances' calls run between them.
        """
        found = []
        while limit is None or len(found) < limit:
            wanted = redis_ops.PAGE if limit is None else min(redis_ops.PAGE, limit - len(found))
            records = yield self._run(page, after, wanted)
            found.extend(records)
            if len(records) < wanted:
                break
            after = name(records[-1])
        return found

    # -- workers --------------------------------------------------------

    def addWorker(self, worker_id, url, provider, capacity, now):
        return self._run(redis_ops.addWorker, worker_id, url, provider, capacity, now)

    def getWorker(self, worker_id, sessions=True):
        return self._run(redis_ops.getWorker, worker_id, sessions)

    def listWorkers(self, sessions=True, state=None, after=None, limit=None):
        return self._paged(
            lambda after, n: redis_ops.listWorkers(sessions, state, after, n),
            after, limit, lambda worker: worker.id)

    def countWorkers(self):
        return self._run(redis_ops.countWorkers)

    def largestCapacity(self):
        return self._run(redis_ops.largestCapacity)

    def workerTotals(self):
        return self._run(redis_ops.workerTotals)

    def setWorkerState(self, worker_id, state, now, allowedFrom=None, sessions=True):
        return self._run(redis_ops.setWorkerState, worker_id, state, now, allowedFrom, sessions)

    def setDraining(self, worker_id, draining):
        return self._run(redis_ops.setDraining, worker_id, draining)

    def heartbeat(self, worker_id, now):
        return self._run(redis_ops.heartbeat, worker_id, now)

    def removeWorker(self, worker_id):
        return self._run(redis_ops.removeWorker, worker_id)

    def claimIdleWorker(self, worker_id):
        return self._run(redis_ops.claimIdleWorker, worker_id)

    # -- sessions -------------------------------------------------------

    def assign(self, request, now):
        return self._run(redis_ops.assign, request, now)

    def release(self, key, instance, now, request_id=None):
        return self._run(redis_ops.release, key, instance, now, request_id)

    def abandon(self, key, request_id, now, keep_place_until=None):
        return self._run(redis_ops.abandon, key, request_id, now, keep_place_until)

    @defer.inlineCallbacks
    def reconcile(self, instance, held, now):
        # A page at a time: the sessions Redis counts for the instance, then
        # those reconciled against what it holds; each call short.
        changed, cursor = set(), "0"
        while True:
            cursor, keys = yield self._run(redis_ops.countedSessions, instance, cursor)
            if keys:
                page = {key: held.get(key, ()) for key in keys}
                changed.update((yield self._run(redis_ops.reconcile, instance, page, now)))
            if cursor == "0":
                return sorted(changed)

    def endSession(self, key):
        # IRegistry.endSession carries no ``now``: the clock dates idle_since.
        return self._run(redis_ops.endSession, key, self._clock.seconds())

    def expireSessions(self, now, grace):
        return self._run(redis_ops.expireSessions, now, grace)

    def getSession(self, key):
        return self._run(redis_ops.getSession, key)

    def listSessions(self, after=None, limit=None):
        return self._paged(redis_ops.listSessions, after, limit, lambda session: session.key)

    def countSessions(self, connected=None):
        return self._run(redis_ops.countSessions, connected)

    # -- queue ----------------------------------------------------------

    def leaveQueue(self, ticket):
        return self._run(redis_ops.leaveQueue, ticket)

    def touchTickets(self, tickets, now):
        # In slices, so that no call holds Redis longer with more tickets.
        tickets = list(tickets)
        return defer.gatherResults([
            self._run(redis_ops.touchTickets, tickets[i:i + redis_ops.PAGE], now)
            for i in range(0, len(tickets), redis_ops.PAGE)
        ], consumeErrors=True).addCallback(lambda _: None)

    def expireTickets(self, now, max_age):
        return self._run(redis_ops.expireTickets, now, max_age)

    def queueInfo(self, now):
        return self._run(redis_ops.queueInfo, now)

    def queueStatus(self, keys, now):
        # In slices, so that no call holds Redis longer with more keys.
        keys = list(keys)
        slices = [keys[i:i + redis_ops.PAGE] for i in range(0, len(keys), redis_ops.PAGE)]
        d = defer.gatherResults([self._run(redis_ops.queueStatus, s, now) for s in slices or [[]]],
                                consumeErrors=True)
        return d.addCallback(_joined)

    # -- lost data, dead instances (IRedisRegistryExtras) ---------------

    def reassertSession(self, key, worker_id, worker_url, provider, capacity, cost,
                        instance, requests, now):
        return self._run(redis_ops.reassertSession, key, worker_id, worker_url, provider,
                         capacity, cost, instance, requests, now)

    def dropInstance(self, instance, now):
        return self._run(redis_ops.dropInstance, instance, now)

    def sweepInstances(self, now):
        return self._run(redis_ops.sweepInstances, now)

    def instanceHeartbeat(self, instance, ttl):
        return self._run(redis_ops.instanceHeartbeat, instance, ttl)

    def epochChanged(self):
        def compare(epoch):
            changed = self._epoch is not None and epoch != self._epoch
            self._epoch = epoch
            if changed:
                self._newEpochs += 1
            return changed

        return self._run(redis_ops.epoch, self._clock.seconds()).addCallback(compare)

    @property
    def disruptions(self):
        return self.connection.losses + self._newEpochs

    def epochAge(self, now):
        """
        Fire with how long ago the registry's epoch was set (0 when it is
        being set now): how long since Redis last started empty.
        """
        def age(epoch):
            _, _, since = epoch.rpartition(":")
            try:
                return max(0.0, now - float(since))
            except ValueError:
                return float("inf")  # an epoch from before ages were kept

        return self._run(redis_ops.epoch, now).addCallback(age)

    # -- notification ---------------------------------------------------

    def addCapacityListener(self, listener):
        self._capacityListeners.append(listener)

    def addSessionEndedListener(self, listener):
        self._sessionEndedListeners.append(listener)

    def addQueueListener(self, listener):
        self._queueListeners.append(listener)

    def whenNoticesDelivered(self):
        token = uuid.uuid4().hex
        barrier = self._barriers[token] = defer.Deferred()
        d = _follow(self._subscribedOnce)
        d.addCallback(lambda _: self.connection.execute(
            "PUBLISH", self.keys.events, "sync:" + token))
        d.addCallback(lambda _: barrier)
        d.addTimeout(self.connection.timeout, self._clock)

        def forget(result):
            self._barriers.pop(token, None)
            return result

        return d.addBoth(forget)

    def _subscribed(self):
        """(Re)subscribed: a notice may have been lost meanwhile, so tell them all again."""
        if not self._subscribedOnce.called:
            self._subscribedOnce.callback(None)
        self._tell(self._capacityListeners)
        self._tell(self._queueListeners)

    def _received(self, message):
        if message == "capacity":
            self._tell(self._capacityListeners)
        elif message == "queue":
            self._tell(self._queueListeners)
        elif message.startswith("ended:"):
            self._tell(self._sessionEndedListeners, message[len("ended:"):])
        elif message.startswith("sync:"):
            barrier = self._barriers.get(message[len("sync:"):])
            if barrier is not None:
                self._later(barrier.callback, None)

    def _tell(self, listeners, *args):
        for listener in list(listeners):
            self._later(listener, *args)

    def _later(self, call, *args):
        """Run ``call`` from the clock, after everything queued before it."""
        self._pending.append((call, args))
        if self._delivery is None:
            self._delivery = self._clock.callLater(0, self._deliver)

    def _deliver(self):
        self._delivery = None
        while self._pending:
            call, args = self._pending.popleft()
            try:
                call(*args)
            except Exception:
                log.failure("registry listener {listener!r} failed", listener=call)


def _joined(statuses):
    """One L{QueueStatus} from those of consecutive slices of the keys: the last one's pace."""
    last = statuses[-1]
    places = tuple(place for status in statuses for place in status.places)
    return dataclasses.replace(last, places=places)


def _follow(d):
    """A Deferred firing with ``d``'s result, leaving ``d`` itself untouched."""
    follower = defer.Deferred()
    d.addBoth(lambda result: (follower.callback(result), result)[1])
    return follower
