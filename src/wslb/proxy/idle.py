"""
``[listen] idle_timeout``: close users after a while with no message either
way (1008). One shared sweep instead of a timer per connection; pings do not
count as activity, so ``auto_ping`` does not keep idle users forever.
"""

from __future__ import annotations

from twisted.application.internet import TimerService

from wslb.proxy.frames import CLOSE_POLICY


class IdleSweeper(TimerService):
    """Every ``timeout / 4`` (at least 1 s): close relays idle for ``timeout``."""

    def __init__(self, clock, sessions, timeout, limitHit):
        super().__init__(max(1.0, timeout / 4), self.sweep)
        self.clock = clock
        self._sessions = sessions
        self._timeout = timeout
        self._limitHit = limitHit
        self._seen = {}  # relay -> (payload bytes both ways, when that last changed)

    def sweep(self):
        now = self.clock.seconds()
        seen = {}
        for relay in self._sessions.legs():
            activity = relay.activity
            before, since = self._seen.get(relay, (None, now))
            if activity != before:
                since = now
            elif now - since >= self._timeout - self.step / 2:  # sweeps come a bit late
                self._limitHit("idle_timeout")
                relay.closeWith(CLOSE_POLICY, "idle timeout")
            seen[relay] = (activity, since)
        self._seen = seen
