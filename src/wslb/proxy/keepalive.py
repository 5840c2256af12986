"""
``[listen] auto_ping``: one shared tick instead of a timer per connection.
"""

from __future__ import annotations

from twisted.application.internet import TimerService

from wslb.logs import Logger

log = Logger()


class KeepAlive(TimerService):
    """
    Every ``interval``: each session pings its user and its worker, and drops
    a side that did not answer the previous tick's ping.
    """

    def __init__(self, clock, sessions, interval):
        super().__init__(interval, self.tick)
        self.clock = clock
        self._sessions = sessions

    def tick(self):
        for relay in self._sessions.legs():
            try:
                relay.keepAlive()
            except Exception:
                log.failure("pinging {key}", key=relay.key)
