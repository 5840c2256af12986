"""
``[listen] idle_timeout``: close users after a while with no message either
way (1008). Pings do not count as activity, so ``auto_ping`` does not keep
idle users forever. Each relay is looked at every ``timeout / 4`` (at least
1 s), the relays spread over that period (L{wslb.proxy.wheel}).
"""

from __future__ import annotations

from wslb.proxy.frames import CLOSE_POLICY
from wslb.proxy.wheel import TimerWheel


class IdleSweeper(TimerWheel):
    """Closes relays idle for ``timeout``."""

    def __init__(self, clock, timeout, limitHit):
        super().__init__(clock, max(1.0, timeout / 4), self._look)
        self._timeout = timeout
        self._limitHit = limitHit
        self._seen = {}  # relay -> (payload bytes both ways, when that last changed)

    def discard(self, relay):
        super().discard(relay)
        self._seen.pop(relay, None)

    def _look(self, relay):
        now = self.clock.seconds()
        activity = relay.activity
        before, since = self._seen.get(relay, (None, now))
        if activity != before:
            since = now
        elif now - since >= self._timeout - self.period / 2:  # looks may come a bit late
            self._limitHit("idle_timeout")
            relay.closeWith(CLOSE_POLICY, "idle timeout")
        self._seen[relay] = (activity, since)
