"""
What each instance does for the shared Redis registry besides serving users.

Every second: keep this instance's heartbeat alive and notice whether Redis
lost its data; if so (or if this instance was swept as dead meanwhile),
re-assert every session it is relaying, so relayed users keep their workers
and their slots count. On the leader, every scale interval: drop the
connection counts of instances that died, and end sessions whose reconnect
grace ran out (their instance's grace timers died with it). Every
RECONCILE_INTERVAL: count out what Redis counts for this instance and it no
longer holds (L{wslb.proxy.held}).
"""

from __future__ import annotations

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger

from wslb.proxy.frames import CLOSE_TRY_AGAIN

log = Logger()

HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_TTL = 5.0  # an instance silent this long is swept as dead
# How often this instance's connection counts are checked against what it
# holds (a release or abandon lost with Redis would count forever).
RECONCILE_INTERVAL = 15.0


class RegistryUpkeep(MultiService):
    def __init__(self, registry, clock, instance, sessions, leader, scaleInterval, grace):
        super().__init__()
        self._registry = registry
        self._clock = clock
        self._instance = instance
        self._sessions = sessions
        self._leader = leader
        self._grace = grace
        self._firstBeat = True
        for interval, call in ((HEARTBEAT_INTERVAL, self.beat),
                               (scaleInterval, self.sweep),
                               (RECONCILE_INTERVAL, self.reconcile)):
            timer = TimerService(interval, self._logged, call)
            timer.clock = clock
            timer.setServiceParent(self)

    def _logged(self, call):
        # A TimerService stops for good on an unhandled error.
        return call().addErrback(lambda f: log.failure("registry upkeep", f))

    @defer.inlineCallbacks
    def beat(self):
        fresh = yield self._registry.instanceHeartbeat(self._instance, HEARTBEAT_TTL)
        lost = yield self._registry.epochChanged()
        if lost or (not fresh and not self._firstBeat):
            log.warn("the registry lost this instance's sessions (data loss or a long "
                     "silence): re-asserting {n} live sessions", n=len(self._sessions.byKey()))
            yield self.reassert()
        self._firstBeat = False

    @defer.inlineCallbacks
    def reassert(self):
        now = self._clock.seconds()
        held = self._sessions.held.byKey()  # the relays', and handshakes' on the same key
        for key, legs in self._sessions.byKey():
            leg = next(iter(legs))
            worker = leg.placement
            session = yield self._registry.reassertSession(
                key, worker.id, worker.url, worker.provider, worker.capacity, leg.cost,
                self._instance, held[key], now,
            )
            if session is not None and session.worker != worker.id:
                # Someone else got the key meanwhile: ours must reconnect there.
                for other in legs:
                    other.closeWith(CLOSE_TRY_AGAIN, "the session moved to another worker")

    @defer.inlineCallbacks
    def reconcile(self):
        corrected = yield self._sessions.held.reconcile()
        if corrected:
            log.warn("counted out connections of {n} sessions that this instance no longer "
                     "holds (a release or abandon lost with Redis)", n=len(corrected))

    @defer.inlineCallbacks
    def sweep(self):
        if not self._leader.isLeader():
            return
        now = self._clock.seconds()
        yield self._registry.sweepInstances(now)
        yield self._registry.expireSessions(now, self._grace)
