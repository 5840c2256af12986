"""
Full garbage collections that trace only what is new.

CPython 3.11's collector makes a full (generation 2) pass when the objects
that survived into the oldest generation since the last one reach a quarter
of it: a few seconds after a crowd arrives, and again and again as users
come and go. Such a pass traces every tracked object and holds the reactor
meanwhile: 81-125 ms with 8,000 relayed users on the benchmark box, a
stall for every user of the instance (bench/keepalive.py).

While L{FrozenSurvivors} runs, whatever survives a full pass is moved to
the collector's permanent generation (``gc.freeze()``), which later passes
skip: each traces only what came since the last. That is sound for what
lives long and dies by reference counting, as a user's connection does
(tests/test_reference_cycles.py holds the ways one ends to that; a worker
dialled by host name or over TLS is the exception, and is warned of). The
price: a reference cycle among frozen objects is not freed until they are
thawed. So every ``thaw_interval`` everything is thawed and collected in
one full pass, the only one that traces the whole heap.

Nothing here counts the frozen objects: ``gc.get_freeze_count()`` walks
them all, a stall of its own (~25 ms at 8,000 users) wherever it is asked.
"""

from __future__ import annotations

import gc

from twisted.application import service
from twisted.internet import task


class FrozenSurvivors(service.Service):
    """
    Freezes the survivors of every full collection, and every
    ``thawInterval`` seconds of ``clock`` (0: never) thaws them into one
    full collection. Collections are process-wide: stopping thaws (another
    instance in the process, as in tests, freezes again at its next pass).
    """

    name = "gc-freeze"

    def __init__(self, clock, thawInterval):
        self._clock = clock
        self._thawInterval = thawInterval
        self._thawing = None

    def startService(self):
        super().startService()
        if self._survived not in gc.callbacks:
            gc.callbacks.append(self._survived)
        # What wslb built to start (modules, config, services) lives as long
        # as it does: frozen at once, it is never traced again.
        gc.collect()
        if self._thawInterval > 0 and self._thawing is None:
            self._thawing = task.LoopingCall(self.thaw)
            self._thawing.clock = self._clock
            self._thawing.start(self._thawInterval, now=False)

    def stopService(self):
        # A composition stops every part, started or not.
        if self._thawing is not None:
            self._thawing.stop()
            self._thawing = None
        if self._survived in gc.callbacks:
            gc.callbacks.remove(self._survived)
            gc.unfreeze()
        return super().stopService()

    def thaw(self):
        """Collect everything once, frozen or not; what survives is frozen again."""
        gc.unfreeze()
        gc.collect()

    def _survived(self, phase, info):
        # A bound method: each instance registers and removes its own.
        if phase == "stop" and info["generation"] == 2:
            gc.freeze()
