"""
Leadership among the wslb instances sharing one Redis (DESIGN §6).

Every instance tries to take the lock ``{ns}:leader`` every ttl/3; the holder
renews it at the same pace. A new leadership takes a fencing token (INCR
``{ns}:fencing``), larger than any earlier leader's, which the scaler logs
with each action. The lease is judged by our own clock, counted from before
each acquire or renew was sent: when Redis goes away the leader stops
leading once its TTL has run out, no later than Redis lets the lock expire.
Stopping releases the lock at once, so another instance takes over on its
next try instead of after the TTL.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from wslb.pool._interfaces import ILeader
from wslb.registry.keys import Keys
from wslb.registry.locks import RedisLock

log = Logger()


@implementer(ILeader)
class RedisLeader(Service):
    """
    Leadership for ``namespace`` with a lock TTL of ``ttl`` seconds, over
    ``redis``: a L{wslb.registry.redis.RedisRegistry} (its connection is
    shared) or a L{wslb.registry.redis_connection.RedisConnection}.
    """

    def __init__(self, redis, namespace, ttl, clock):
        connection = getattr(redis, "connection", redis)
        keys = Keys(namespace)
        self._connection = connection
        self._fencingKey = keys.fencing
        self._lock = RedisLock(connection, keys.leader, ttl, clock)
        self._ttl = ttl
        self._clock = clock
        self._validUntil = None  # set while leading: when our lease ends by our clock
        self._loop = None
        self._looping = None  # fires when the loop has stopped, tick included
        self._listeners = []
        self.fencingToken = 0

    def addLeadershipListener(self, listener):
        self._listeners.append(listener)

    def isLeader(self):
        return self._validUntil is not None and self._clock.seconds() < self._validUntil

    def checkLeader(self):
        if not self.isLeader():
            return defer.succeed(False)

        def confirmed(holds):
            if not holds:
                self._stepDown("the lock holds another token")
            return holds and self.isLeader()

        def failed(failure):
            log.warn("leader check failed: {error}", error=failure.getErrorMessage())
            return False

        return self._lock.check().addCallbacks(confirmed, failed)

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(lambda: defer.ensureDeferred(self._lead()))
        self._loop.clock = self._clock
        self._looping = self._loop.start(self._ttl / 3, now=True)

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
            yield self._looping  # a tick in progress may still take the lock
        if self._validUntil is not None:
            self._stepDown("stopping")
        try:
            yield self._lock.release()
        except Exception as e:
            log.warn("releasing the leader lock failed: {error}", error=e)

    async def _lead(self):
        # LoopingCall stops for good on a failure: this never fails.
        asked = self._clock.seconds()
        try:
            if self._lock.token is None:
                if not await self._lock.acquire():
                    return
            elif not await self._lock.renew():
                self._stepDown("the lock expired or was taken")
                return
            becameLeader = self._validUntil is None
            if becameLeader:
                token = await self._connection.execute("INCR", self._fencingKey)
                self.fencingToken = int(token)
                log.info("leading the pool (fencing token {token})", token=self.fencingToken)
            self._validUntil = asked + self._ttl
            if becameLeader:
                for listener in self._listeners:
                    self._clock.callLater(0, listener)
        except Exception as e:
            # Redis away: the lease runs out by our clock; try again next tick.
            log.warn("leader lock: {error}", error=e)

    def _stepDown(self, why):
        if self._validUntil is not None:
            log.info("no longer leading the pool: {why}", why=why)
        self._validUntil = None
