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
        self._retries = {}  # DelayedCall -> the Deferred it will settle
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
        for call, settled in retries.items():
            call.cancel()
            settled.callback(None)

    def _settle(self, what, key, requestId, call):
        settled = defer.Deferred()
        started = self._clock.seconds()

        def attempt(failures):
            d = call(self._clock.seconds())
            d.addCallbacks(done, failed, errbackArgs=(failures,))

        def done(session):
            self.forget(key, requestId)
            self._settled(session)
            settled.callback(None)

        def failed(failure, failures):
            if self._stopped:
                settled.callback(None)
            elif self._clock.seconds() - started >= RETRY_FOR:
                log.warn("{what} of {key} unanswered for {seconds:.0f} s ({error}): left to "
                         "the registry's reconcile", what=what, key=key, seconds=RETRY_FOR,
                         error=failure.getErrorMessage())
                self.forget(key, requestId)
                settled.callback(None)
            else:
                delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
                retry = self._clock.callLater(delay, lambda: (
                    self._retries.pop(retry, None), attempt(failures + 1)))
                self._retries[retry] = settled

        attempt(0)
        return settled
