"""
What this instance holds in the registry: the request id (IRegistry.assign)
of each of its connections the registry counts, or may count, from before
the connection's first ``assign`` is sent until the registry confirmed it
counts it no more.

A registry call is bounded on this side only: one that timed out may still
run. So whatever ends a connection's count goes through here and is safe to
send again: ``release`` and ``abandon`` name the request id, which makes
them idempotent, and one whose outcome is unknown is sent again until it is
answered (or ``RETRY_FOR`` is over). What is still lost is found by
``reconcile``: the registry counts out every connection of this instance
that is not held any more. What is held, a reconcile never touches, so one
cannot undo an assign still on its way.
"""

from __future__ import annotations

from twisted.internet import defer

from wslb.logs import Logger
from wslb.proxy.grouped import Grouped

log = Logger()

# Seconds between the attempts of a release or abandon whose outcome is
# unknown; the last one repeats.
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)
# How long they are retried before being left to reconcile.
RETRY_FOR = 300.0


class Held:
    """
    ``settled(session)`` hears the L{Session} after every release or abandon
    answered (None: it ended, or is unknown), to start a reconnect grace.
    """

    def __init__(self, registry, clock, instance, settled):
        self._registry = registry
        self._settled = settled
        self._clock = clock
        self._instance = instance
        self._byKey = Grouped()  # session key -> request ids held
        self._retries = {}  # _Settling -> the DelayedCall of its next attempt
        self._stopped = False

    def hold(self, key, requestId):
        """A connection's assign is about to be sent: the registry may count it from now."""
        self._byKey.add(key, requestId)

    def forget(self, key, requestId):
        """The registry counts the connection no more (or never did)."""
        self._byKey.discard(key, requestId)

    def byKey(self):
        """Session key -> the request ids held, sorted."""
        return {key: sorted(ids) for key, ids in self._byKey.items()}

    def release(self, key, requestId):
        """Count the connection out; fires when done (or given up)."""
        return self._settle(
            "release", key, requestId,
            lambda now: self._registry.release(key, self._instance, now, requestId))

    def abandon(self, key, requestId, keepPlaceUntil=None):
        """
        Undo its assign, whatever it did (IRegistry.abandon; its ticket keeps
        its place until ``keepPlaceUntil``, if given); fires when done.
        """
        return self._settle(
            "abandon", key, requestId,
            lambda now: self._registry.abandon(key, requestId, now, keepPlaceUntil))

    def reconcile(self):
        """
        Let the registry count out what this instance no longer holds
        (IRegistry.reconcile). It is given the live mapping, read as each
        page is sent: an assign sent meanwhile is held already.
        """
        return self._registry.reconcile(self._instance, self._byKey, self._clock.seconds())

    def stop(self):
        """No more retries: wslb is stopping."""
        self._stopped = True
        retries, self._retries = self._retries, {}
        for settling, call in retries.items():
            call.cancel()
            settling.settled.callback(None)

    def _settle(self, what, key, requestId, call):
        settling = _Settling(self, what, key, requestId, call)
        settling.attempt(0)
        return settling.settled

    def _retryLater(self, delay, settling, failures):
        self._retries[settling] = self._clock.callLater(delay, self._retry, settling, failures)

    def _retry(self, settling, failures):
        del self._retries[settling]
        settling.attempt(failures + 1)


class _Settling:
    """
    One release or abandon until it is answered or given up. Plain
    attributes and bound methods, not closures that name each other: those
    would make every connection's end a reference cycle, which only the
    garbage collector frees (and which stays forever once the collector
    froze it, see wslb.collector).
    """

    __slots__ = ("_held", "_what", "_key", "_requestId", "_call", "_started", "settled")

    def __init__(self, held, what, key, requestId, call):
        self._held = held
        self._what = what
        self._key = key
        self._requestId = requestId
        self._call = call
        self._started = held._clock.seconds()
        self.settled = defer.Deferred()

    def attempt(self, failures):
        d = self._call(self._held._clock.seconds())
        d.addCallbacks(self._done, self._failed, errbackArgs=(failures,))

    def _done(self, session):
        held = self._held
        held.forget(self._key, self._requestId)
        held._settled(session)
        self.settled.callback(None)

    def _failed(self, failure, failures):
        held = self._held
        if held._stopped:
            self.settled.callback(None)
        elif held._clock.seconds() - self._started >= RETRY_FOR:
            log.warn("{what} of {key} unanswered for {seconds:.0f} s ({error}): left to "
                     "the registry's reconcile", what=self._what, key=self._key,
                     seconds=RETRY_FOR, error=failure.getErrorMessage())
            held.forget(self._key, self._requestId)
            self.settled.callback(None)
        else:
            held._retryLater(RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)], self, failures)
