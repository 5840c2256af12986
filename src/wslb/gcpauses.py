"""
The garbage collector's pauses, measured.

CPython's cyclic collector holds the reactor for as long as it traces: a
full (generation 2) pass visits every tracked object, so an instance holding
8,000 relayed users (about 230,000 objects) pauses 80-125 ms on the
benchmark box (bench/keepalive.py) unless wslb.collector freezes what
earlier passes found alive. ``wslb_gc_pause_seconds`` shows the pauses, so
an operator can tell them from a slow worker or Redis.
"""

from __future__ import annotations

import gc
import time

from twisted.application import service

PAUSE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class GCPauses(service.Service):
    """While running, times each collection into ``histogram`` by its generation."""

    name = "gc-pauses"

    def __init__(self, histogram, timer=time.perf_counter):
        # The children are looked up here, once: labels() takes the metric's
        # lock, which a collection may interrupt (a scrape copying its dict).
        self._byGeneration = [histogram.labels(str(generation)) for generation in range(3)]
        self._timer = timer  # a duration's clock (monotonic), never the time of day
        self._started = None

    def startService(self):
        super().startService()
        if self._collecting not in gc.callbacks:
            gc.callbacks.append(self._collecting)

    def stopService(self):
        # A composition stops every part, started or not.
        if self._collecting in gc.callbacks:
            gc.callbacks.remove(self._collecting)
        return super().stopService()

    def _collecting(self, phase, info):
        if phase == "start":
            self._started = self._timer()
        elif self._started is not None:
            self._byGeneration[min(info["generation"], 2)].observe(self._timer() - self._started)
            self._started = None
