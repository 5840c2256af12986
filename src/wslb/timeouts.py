"""
Many timeouts of one length on one timer.

Every connection sets a few timeouts that almost never expire (its request
read, its registry calls, its worker's handshake) and each Twisted timer
costs a DelayedCall pushed on the reactor's heap and cancelled again:
``Deferred.addTimeout`` measured ~25 µs a call, about a tenth of a short
connection's CPU. With one length, timeouts expire in the order they were
set, so a queue holds them and one timer waits for the oldest still
running; a cancelled one is only marked, and dropped when it reaches the
front of the queue (as the next one starts, or the timer passes it).
"""

from __future__ import annotations

from collections import deque

from twisted.internet import defer
from twisted.python.failure import Failure

# Clock arithmetic's rounding: a deadline this close is due.
_EPSILON = 1e-9


class Timeout:
    """One running timeout: L{cancel} it when what it bounds is done (as a DelayedCall)."""

    __slots__ = ("deadline", "_expire")

    def __init__(self, deadline, expire):
        self.deadline = deadline
        self._expire = expire

    def cancel(self):
        self._expire = None

    def active(self):
        return self._expire is not None


class Timeouts:
    """Timeouts of ``length`` seconds on ``clock``, all on one timer."""

    def __init__(self, clock, length):
        self.clock = clock
        self.length = length
        self._queue = deque()  # Timeouts in the order set, so by deadline
        self._timer = None  # waits for the oldest timeout that was running when set

    def __len__(self):
        """Timeouts queued, the cancelled ones not yet dropped included."""
        return len(self._queue)

    def start(self, expire):
        """Call ``expire()`` in ``length`` seconds, unless the L{Timeout} is cancelled."""
        timeout = Timeout(self.clock.seconds() + self.length, expire)
        queue = self._queue
        while queue and queue[0]._expire is None:  # cancelled: forget them now
            queue.popleft()
        queue.append(timeout)
        if self._timer is None:
            self._timer = self.clock.callLater(self.length, self._due)
        return timeout

    def bound(self, d):
        """
        ``d.addTimeout(length, clock)`` on the shared timer: past the length,
        ``d`` is cancelled and fails with L{defer.TimeoutError}.
        """
        expired = []

        def expire():
            expired.append(True)
            d.cancel()

        timeout = self.start(expire)

        def done(result):
            timeout.cancel()
            if expired and isinstance(result, Failure) and result.check(
                    defer.CancelledError):
                raise defer.TimeoutError(self.length, "Deferred")
            return result

        return d.addBoth(done)

    def cancelAll(self):
        """Forget every timeout (on stop): none expires."""
        self._queue.clear()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _due(self):
        self._timer = None
        queue, now = self._queue, self.clock.seconds()
        while queue:
            timeout = queue[0]
            if timeout._expire is not None and timeout.deadline > now + _EPSILON:
                if self._timer is not None:  # an expire() started one: this one is sooner
                    self._timer.cancel()
                self._timer = self.clock.callLater(timeout.deadline - now, self._due)
                return
            queue.popleft()
            expire = timeout._expire
            if expire is not None:
                timeout.cancel()
                expire()
