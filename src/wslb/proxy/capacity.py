"""
The largest capacity any worker has, for refusing costs no worker can take.

A cost above every worker's capacity would wait in the queue for nothing,
so the handshake gets 400 at once (DESIGN §5). Workers registered through
the admin API may be larger than ``[pool] capacity``; asking the registry
on every handshake would cost a round trip each, so the answer is refreshed
every few seconds instead, from a value the registry keeps (no worker is
read, whatever the size of the fleet).
"""

from __future__ import annotations

from twisted.application.internet import TimerService
from twisted.logger import Logger

log = Logger()

REFRESH_INTERVAL = 3.0  # seconds: a newly registered larger worker counts after this


class LargestCapacity(TimerService):
    """
    Call it for the largest capacity known: ``configured`` (``[pool]
    capacity``) or that of any worker in the registry that is not dead.
    When the registry cannot answer, the last known value stays.
    """

    def __init__(self, registry, clock, configured, interval=REFRESH_INTERVAL):
        super().__init__(interval, self.refresh)
        self.clock = clock
        self._registry = registry
        self._configured = configured
        self._largest = configured

    def __call__(self):
        return self._largest

    def refresh(self):
        d = self._registry.largestCapacity()
        d.addCallback(self._learn)
        # A TimerService stops for good on an unhandled error.
        d.addErrback(lambda f: log.warn(
            "worker capacities unknown (keeping {largest}): {error}",
            largest=self._largest, error=f.getErrorMessage()))
        return d

    def _learn(self, largest):
        self._largest = max(self._configured, largest)
