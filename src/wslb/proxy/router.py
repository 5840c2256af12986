"""
Routing a session key to a worker: look up or assign, else wait in the queue.

The registry keeps the queue's order across instances; this instance keeps
the Deferreds of its own waiters and retries them, oldest first, whenever the
registry says capacity may be free (and on a slow heartbeat, in case such a
notice was lost). With ``[queue] allow_overtake`` a smaller waiter may be
served while an older one still waits (the registry bounds how often).

A waiter that goes away (its user left, its wait ran out, wslb stops)
abandons its ticket: it keeps its place for ``[queue] rejoin_grace``, and a
handshake with the same key, through any instance, takes it up again.
"""

from __future__ import annotations

import bisect
import dataclasses
import math

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.python.failure import Failure

from wslb.logs import Logger
from wslb.registry import Assigned, AssignRequest, Queued

log = Logger()

# Queued tickets are touched this often; a ticket untouched for
# TICKET_MAX_AGE belongs to a dead instance and is dropped from the queue.
HEARTBEAT = 1.0
TICKET_MAX_AGE = 10.0


class _Waiter:
    __slots__ = ("request", "order", "deferred", "deadline", "enqueuedAt")

    def __init__(self, request, order, deferred, deadline, enqueuedAt):
        self.request = request  # its ticket is the one it holds
        self.order = order  # the ticket's arrival number: the queue's order
        self.deferred = deferred
        self.deadline = deadline
        self.enqueuedAt = enqueuedAt


class Router(Service):
    """
    Fires L{Assigned} for a key, waiting in the queue when needed; refuses
    with a L{HandshakeRefused} (503, Retry-After) when the queue is full or
    the wait is over.
    """

    def __init__(self, registry, clock, instance, placement, maxQueue,
                 queueTimeout, refuse, metrics, held, allowOvertake=False, rejoinGrace=0.0):
        self._registry = registry
        self._held = held  # a wslb.proxy.held.Held: every request id is held, then settled
        self._clock = clock
        self._instance = instance
        self._placement = placement
        self._maxQueue = maxQueue
        self._queueTimeout = queueTimeout
        self._refuse = refuse  # (reason, retryAfter) -> exception to fail with
        self._metrics = metrics
        self._allowOvertake = allowOvertake
        self._rejoinGrace = rejoinGrace
        self._waiters = []  # this instance's, in the queue's order
        self._retrying = False
        self._retryAgain = False
        self._heartbeat = task.LoopingCall(self._beat)
        self._heartbeat.clock = clock
        self.retryAfter = max(1, math.ceil(min(queueTimeout, 30)))
        registry.addCapacityListener(self.retry)

    def startService(self):
        super().startService()
        self._heartbeat.start(HEARTBEAT, now=False)

    def stopService(self):
        super().stopService()
        if self._heartbeat.running:
            self._heartbeat.stop()
        for waiter in list(self._waiters):
            self._forget(waiter)  # its user may come back through another instance
            waiter.deferred.errback(self._refuse("wslb is shutting down", self.retryAfter))

    @property
    def waiting(self):
        return len(self._waiters)

    def request(self, key, cost, requestId):
        """The L{AssignRequest} of this instance for ``key``, its assigns named ``requestId``."""
        return AssignRequest(
            key=key, cost=cost, instance=self._instance,
            placement=self._placement, max_queue=self._maxQueue,
            allow_overtake=self._allowOvertake, request_id=requestId,
        )

    def assign(self, request):
        """
        One assign for ``request``, whose request id this instance holds
        from before it is sent: fire with the L{Assigned}, L{Queued} or
        L{QueueFull}; or fail with a refusal (503) when the registry does
        not answer, the request then abandoned (an assign that timed out
        here may still run). (Callbacks: L{route}'s generator is enough of
        one per connection.)
        """
        started = self._clock.seconds()
        self._held.hold(request.key, request.request_id)
        d = self._registry.assign(request, started)
        d.addCallbacks(self._assigned, self._unanswered,
                       callbackArgs=(request, started), errbackArgs=(request,))
        return d

    def _assigned(self, result, request, started):
        self._metrics.assignSeconds.observe(self._clock.seconds() - started)
        if not isinstance(result, (Assigned, Queued)):  # QueueFull (Abandoned: not a new id)
            self._held.forget(request.key, request.request_id)  # nothing counted, nothing queued
            self._metrics.limitHits.labels("queue_length").inc()
        return result

    def _unanswered(self, failure, request):
        self._held.abandon(request.key, request.request_id, self._keepPlaceUntil())
        if failure.check(defer.CancelledError):  # the user left: no registry error
            return failure
        self._metrics.registryErrors.inc()
        log.warn("registry unavailable for {key}: {error!r}", key=request.key, error=failure.value)
        raise self._refuse("the registry is unavailable", self.retryAfter) from failure.value

    def route(self, key, cost, requestId):
        """
        Fire with the L{Assigned} for ``key``; every assign for it names
        ``requestId`` (the connection's, which its release names too).
        Cancelling the Deferred (the client went away) abandons its ticket
        (see L{wait}). Plain callbacks, not a coroutine: Twisted's
        cancellation of a coroutine's Deferred leaves its failures'
        tracebacks in reference cycles, with the connection in them.
        """
        request = self.request(key, cost, requestId)
        routing = self.assign(request).addCallback(self._routed, request)
        routed = defer.Deferred(lambda _: routing.cancel())  # fires once routed, not queued
        routing.chainDeferred(routed)
        return routed

    def _routed(self, result, request):
        if isinstance(result, Assigned):
            return result
        if not isinstance(result, Queued):
            return Failure(self._refuse("the queue is full", self.retryAfter))
        log.info("{key} queued at position {position}", event="queued", key=request.key,
                 position=result.position, cost=request.cost)
        return self.wait(request, result)

    def wait(self, request, queued):
        """
        Hold ``queued``'s ticket (``request`` got it) until it is served:
        fire with the L{Assigned}, or fail with a refusal (503) once
        ``[queue] timeout`` has passed. Cancelling the Deferred, like the
        timeout, abandons the ticket: it keeps its place for ``[queue]
        rejoin_grace``.
        """
        now = self._clock.seconds()

        def cancel(deferred):
            self._forget(waiter)

        waiter = _Waiter(dataclasses.replace(request, ticket=queued.ticket), queued.order,
                         defer.Deferred(cancel), now + self._queueTimeout, now)
        self._place(waiter)
        return waiter.deferred

    def _place(self, waiter):
        """Put ``waiter`` among this instance's waiters in the queue's order."""
        orders = [w.order for w in self._waiters]
        self._waiters.insert(bisect.bisect(orders, waiter.order), waiter)

    def _forget(self, waiter):
        """
        ``waiter`` is gone: the registry undoes an assign under way, and its
        ticket keeps its place for the rejoin grace (none: it leaves the
        queue), unless a handshake of its key took it up meanwhile.
        """
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            self._held.abandon(waiter.request.key, waiter.request.request_id,
                               self._keepPlaceUntil())

    def _keepPlaceUntil(self):
        """Until when a ticket given up now keeps its place (None: it leaves at once)."""
        if self._rejoinGrace > 0:
            return self._clock.seconds() + self._rejoinGrace
        return None

    def retry(self):
        """Try the queued waiters again, oldest first (capacity may be free)."""
        if self._retrying:
            self._retryAgain = True
            return
        self._retrying = True
        self._retryRound().addErrback(
            lambda f: log.failure("retrying queued handshakes", f)
        ).addBoth(self._retried)

    def _retried(self, _):
        self._retrying = False
        if self._retryAgain:
            self._retryAgain = False
            self.retry()

    @defer.inlineCallbacks
    def _retryRound(self):
        refused = math.inf  # the smallest cost refused this round
        for waiter in list(self._waiters):
            if waiter not in self._waiters:
                continue  # gave up meanwhile
            if waiter.request.cost >= refused:
                continue  # refused too, unless capacity freed: that starts a new round
            try:
                result = yield self._registry.assign(waiter.request, self._clock.seconds())
            except Exception:
                self._metrics.registryErrors.inc()
                # Logged by retry(); the heartbeat tries again with the same
                # request id, which the registry counts once.
                raise
            if waiter not in self._waiters:
                continue  # the client left meanwhile: its abandon undoes this assign
            if not isinstance(result, Assigned):
                if isinstance(result, Queued):
                    self._follow(waiter, result)
                if not self._allowOvertake:
                    return  # strict FIFO: nobody behind it can go first
                refused = min(refused, waiter.request.cost)
                continue
            self._waiters.remove(waiter)
            self._metrics.queueWait.observe(self._clock.seconds() - waiter.enqueuedAt)
            waiter.deferred.callback(result)

    def _follow(self, waiter, queued):
        """
        Its ticket is ``queued``'s now: the same one, or (after it was lost,
        e.g. with Redis's data) a new one at the tail.
        """
        if queued.ticket != waiter.request.ticket:
            self._waiters.remove(waiter)
            waiter.request = dataclasses.replace(waiter.request, ticket=queued.ticket)
            waiter.order = queued.order
            self._place(waiter)

    def _beat(self):
        now = self._clock.seconds()
        for waiter in [w for w in self._waiters if w.deadline <= now]:
            self._forget(waiter)
            self._metrics.limitHits.labels("queue_timeout").inc()
            waiter.deferred.errback(self._refuse(
                "no worker became free in time", self.retryAfter
            ))
        registry = self._registry
        tickets = [w.request.ticket for w in self._waiters]
        calls = [registry.expireTickets(now, TICKET_MAX_AGE)]
        if tickets:
            calls.append(registry.touchTickets(tickets, now))
        d = defer.gatherResults(calls, consumeErrors=True)
        d.addCallback(lambda _: self.retry() if self._waiters else None)
        d.addErrback(lambda f: log.failure("queue heartbeat", f))
        return None
