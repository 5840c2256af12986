"""
This instance's live sessions: which user legs hold which key, when a
disconnected session's reconnect grace runs out, and closing the legs of a
session that was ended anywhere. What the registry counts for them is
``held`` (L{wslb.proxy.held.Held}).
"""

from __future__ import annotations

from collections import deque

from twisted.application.service import Service

from wslb.logs import Logger
from wslb.proxy.grouped import Grouped
from wslb.proxy.held import Held

log = Logger()


class LiveSessions(Service):
    def __init__(self, registry, clock, instance, grace, endCloseCode):
        self._registry = registry
        self._clock = clock
        self._instance = instance
        self._grace = grace
        self._endCloseCode = endCloseCode
        self._legs = Grouped()  # key -> open user legs
        self._wheels = []  # what visits every relay in turn (keep-alive, idle)
        # Reconnect graces, one timer for all: the grace is the same for
        # every session, so deadlines arrive in order and a deque holds them.
        self._graces = deque()  # (deadline, key), earliest first
        self._deadlines = {}  # key -> its running grace's deadline
        self._graceTimer = None
        self.held = Held(registry, clock, instance, self._released)
        registry.addSessionEndedListener(self.sessionEnded)

    def stopService(self):
        super().stopService()
        self.held.stop()
        if self._graceTimer is not None and self._graceTimer.active():
            self._graceTimer.cancel()
        self._graceTimer = None
        self._graces.clear()
        self._deadlines.clear()

    def byKey(self):
        """(key, open user legs) for every session this instance relays now."""
        return [(key, set(legs)) for key, legs in self._legs.items()]

    def legs(self):
        return [leg for legs in self._legs.values() for leg in legs]

    def visitEach(self, wheel):
        """Have ``wheel`` (L{wslb.proxy.wheel.TimerWheel}) visit every relay while it is open."""
        self._wheels.append(wheel)
        for leg in self.legs():
            wheel.add(leg)

    def opened(self, key, leg):
        self._legs.add(key, leg)
        self._deadlines.pop(key, None)  # back before its grace ran out
        for wheel in self._wheels:
            wheel.add(leg)

    def closed(self, key, leg):
        for wheel in self._wheels:
            wheel.discard(leg)
        self._legs.discard(key, leg)

    def release(self, key, requestId):
        """
        The connection ``assign`` counted for ``requestId`` is over; count
        it out (retried until the registry answers), and start the reconnect
        grace when it was the session's last.
        """
        return self.held.release(key, requestId)

    def abandon(self, key, requestId):
        """Its user never had the session ``assign`` gave: undo it (IRegistry.abandon)."""
        return self.held.abandon(key, requestId)

    def _released(self, session):
        if session is None or session.connected or not self.running:
            return
        deadline = self._clock.seconds() + self._grace
        self._deadlines[session.key] = deadline
        self._graces.append((deadline, session.key))
        if self._graceTimer is None:
            self._graceTimer = self._clock.callLater(self._grace, self._gracesOver)

    def _gracesOver(self):
        """Expire the sessions whose grace ran out; wait for the next one."""
        self._graceTimer = None
        now = self._clock.seconds()
        due = False
        while self._graces and self._graces[0][0] <= now:
            deadline, key = self._graces.popleft()
            if self._deadlines.get(key) == deadline:  # not reconnected, nor released again
                del self._deadlines[key]
                due = True
        if due:
            d = self._registry.expireSessions(now, self._grace)
            d.addErrback(lambda f: log.failure("expiring sessions", f))
        if self._graces:
            self._graceTimer = self._clock.callLater(self._graces[0][0] - now, self._gracesOver)

    def sessionEnded(self, key):
        """The session was ended (anywhere): close its users here."""
        for leg in self._legs.get(key, ()):
            leg.closeWith(self._endCloseCode, "session ended")
