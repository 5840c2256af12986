"""
This instance's live sessions: which user legs hold which key, when a
disconnected session's reconnect grace runs out, and closing the legs of a
session that was ended anywhere.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.logger import Logger

log = Logger()


class LiveSessions(Service):
    def __init__(self, registry, clock, instance, grace, endCloseCode):
        self._registry = registry
        self._clock = clock
        self._instance = instance
        self._grace = grace
        self._endCloseCode = endCloseCode
        self._legs = {}  # key -> set of open user legs
        self._expiries = {}  # key -> DelayedCall ending its grace
        registry.addSessionEndedListener(self.sessionEnded)

    def stopService(self):
        super().stopService()
        for call in self._expiries.values():
            if call.active():
                call.cancel()
        self._expiries.clear()

    def byKey(self):
        """(key, open user legs) for every session this instance relays now."""
        return [(key, set(legs)) for key, legs in self._legs.items()]

    def legs(self):
        return [leg for legs in self._legs.values() for leg in legs]

    def opened(self, key, leg):
        self._legs.setdefault(key, set()).add(leg)
        call = self._expiries.pop(key, None)
        if call is not None and call.active():
            call.cancel()

    def closed(self, key, leg):
        legs = self._legs.get(key)
        if legs is not None:
            legs.discard(leg)
            if not legs:
                del self._legs[key]

    def release(self, key):
        """
        The handshake of a connection counted by ``assign`` is over; count it
        out, and start the reconnect grace when it was the session's last.
        """
        d = self._registry.release(key, self._instance, self._clock.seconds())
        d.addCallback(self._released)
        d.addErrback(lambda f: log.failure("releasing session {key}", f, key=key))
        return d

    def _released(self, session):
        if session is None or session.connected or not self.running:
            return
        previous = self._expiries.pop(session.key, None)
        if previous is not None and previous.active():
            previous.cancel()
        self._expiries[session.key] = self._clock.callLater(
            self._grace, self._graceOver, session.key
        )

    def _graceOver(self, key):
        self._expiries.pop(key, None)
        d = self._registry.expireSessions(self._clock.seconds(), self._grace)
        d.addErrback(lambda f: log.failure("expiring sessions", f))

    def sessionEnded(self, key):
        """The session was ended (anywhere): close its users here."""
        for leg in list(self._legs.get(key, ())):
            leg.closeWith(self._endCloseCode, "session ended")
