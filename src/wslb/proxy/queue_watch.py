"""
The queue as waiting users see it: each key's place, the queue's length and
an estimate of the wait (``[queue] status_path``).

One instance follows the keys its status streams ask about, whichever
instance holds their handshakes: when tickets leave the queue anywhere, the
registry says so (a "queue" notice), and the instance reads the places of
the keys it follows, all in one registry call (a ZRANK each: O(keys * log
n)) at most every MIN_READ_INTERVAL, however many notices came. So a notice
costs an instance in proportion to its own streams, not to the queue, and an
instance that follows no key reads nothing. A slow re-read covers a notice
lost with the subscriber's connection.
"""

from __future__ import annotations

import math

from twisted.application.service import Service
from twisted.internet import task

from wslb.logs import Logger
from wslb.registry import SERVED_BUCKET, QueuePlace, Session

log = Logger()

MIN_READ_INTERVAL = 0.25  # seconds between two reads of the followed keys' places
REREAD_INTERVAL = 5.0  # and at least this often while any key is followed

NOT_QUEUED = {"queued": False}
READY = {"queued": False, "ready": True}  # the key has its session: its handshake is answered


def etaSeconds(position, pace, perWorker, startTimeout):
    """
    Whole seconds until the ticket at ``position`` is likely served, or None
    without data. Two sources serve the queue: sessions ending, at the pace
    observed (queued sessions served over the last minutes, L{QueuePace}),
    and the workers starting, each taking ``perWorker`` sessions once
    started: after the mean start time measured lately, or ``startTimeout``
    when none was (a worker not healthy by then is replaced), never longer.
    The estimate is the first time those two have served ``position + 1``.
    """
    needed = position + 1
    rate = pace.served / max(pace.over, SERVED_BUCKET) if pace.served else 0.0
    starts = min(pace.start_seconds, startTimeout) if pace.start_seconds is not None \
        else startTimeout
    started = pace.starting * perWorker
    if rate and needed / rate <= starts:
        seconds = needed / rate
    elif started >= needed:
        seconds = starts
    elif rate:
        seconds = max(starts, (needed - started) / rate)
    else:
        return None
    return math.ceil(seconds)


class QueueWatch(Service):
    """
    ``follow(key, listener)``: ``listener(status)`` hears the key's status
    (a place, L{READY} or L{NOT_QUEUED}) after every read; ``statusOf(key)``
    reads one key's once.
    """

    def __init__(self, registry, clock, perWorker, startTimeout):
        self._registry = registry
        self._clock = clock
        self._perWorker = perWorker
        self._startTimeout = startTimeout
        self._listeners = {}  # key -> set of listeners
        self._reading = False
        self._readAgain = False
        self._lastRead = -math.inf
        self._timer = None
        self._reread = task.LoopingCall(self.changed)
        self._reread.clock = clock
        registry.addQueueListener(self.changed)

    def startService(self):
        super().startService()
        self._reread.start(REREAD_INTERVAL, now=False)

    def stopService(self):
        super().stopService()
        if self._reread.running:
            self._reread.stop()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def follow(self, key, listener):
        """Call ``listener`` with ``key``'s status after every read; returns the unfollow."""
        self._listeners.setdefault(key, set()).add(listener)
        self.changed()  # its first status comes soon

        def unfollow():
            listeners = self._listeners.get(key)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._listeners[key]

        return unfollow

    def statusOf(self, key):
        """Fire with ``key``'s status, read now."""
        d = self._registry.queueStatus([key], self._clock.seconds())
        return d.addCallback(lambda status: self._status(status.places[0], status))

    def changed(self):
        """Places may have changed: read the followed keys' again, soon."""
        if not self._listeners or not self.running:
            return
        if self._reading:
            self._readAgain = True
        elif self._timer is None:
            wait = max(0.0, self._lastRead + MIN_READ_INTERVAL - self._clock.seconds())
            self._timer = self._clock.callLater(wait, self._read)

    def _read(self):
        self._timer = None
        self._reading = True
        self._lastRead = now = self._clock.seconds()
        keys = list(self._listeners)
        d = self._registry.queueStatus(keys, now)
        d.addCallback(self._tell, keys)
        d.addErrback(lambda f: log.warn("reading queue places: {error}",
                                        error=f.getErrorMessage()))
        d.addBoth(self._readDone)

    def _readDone(self, _):
        self._reading = False
        if self._readAgain:
            self._readAgain = False
            self.changed()

    def _tell(self, status, keys):
        for key, place in zip(keys, status.places):
            told = self._status(place, status)
            for listener in list(self._listeners.get(key, ())):
                try:
                    listener(told)
                except Exception:
                    log.failure("queue status listener {listener!r}", listener=listener)

    def _status(self, place, status):
        if isinstance(place, QueuePlace):
            return {"queued": True, "position": place.position, "length": status.length,
                    "eta_seconds": etaSeconds(place.position, status.pace, self._perWorker,
                                              self._startTimeout)}
        return READY if isinstance(place, Session) else NOT_QUEUED
