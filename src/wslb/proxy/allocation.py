"""
Allocation before connect (``POST /api/v1/sessions``): an application binds
a worker to a session key before its user arrives, so it can tell that
worker to prepare; the user's handshake with the key then finds the session
bound.

An allocation is a connection without a user: its assign is counted and
released at once, so the session waits for its user under ``[session]
reconnect_grace``. When no worker has room it queues like a handshake, held
by this instance until it is served or ``[queue] timeout`` passes (a user's
handshake with the key meanwhile takes up the same ticket and place).
Repeated calls for a key wait on the same allocation, or find the bound
session: the same binding.
"""

from __future__ import annotations

import uuid

from twisted.internet import defer

from wslb.logs import Logger
from wslb.proxy.errors import HandshakeRefused
from wslb.registry import Assigned, Queued, QueuePlace, Session

log = Logger()


class _Pending:
    """An allocation waiting in the queue; ``assigned`` once it is bound."""

    def __init__(self):
        self.assigned = None
        self.over = False
        self._watchers = []

    def settle(self, assigned):
        self.assigned, self.over = assigned, True
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            watcher.callback(None)

    def whenOver(self):
        if self.over:
            return defer.succeed(None)
        watcher = defer.Deferred(lambda d: self._watchers.remove(d))
        self._watchers.append(watcher)
        return watcher


class Allocator:
    """
    ``allocate(key, cost, wait)`` for the admin API; ``defaultCost`` and
    ``largestCapacity()`` for checking what it is asked.
    """

    def __init__(self, router, sessions, registry, clock, largestCapacity, defaultCost,
                 queueTimeout):
        self._router = router
        self._sessions = sessions
        self._registry = registry
        self._clock = clock
        self.largestCapacity = largestCapacity
        self.defaultCost = defaultCost
        self._queueTimeout = queueTimeout
        self._pending = {}  # session key -> _Pending

    async def allocate(self, key, cost, wait):
        """
        Bind ``key`` (costing ``cost``) to a worker, waiting up to ``wait``
        seconds (at most ``[queue] timeout``) in the queue when none has
        room: fire with the L{Assigned}, or the L{Queued} place it holds now,
        or L{QueueFull}; or None when, queued before, it is neither bound nor
        queued any more (its wait ran out). Fails when the registry does not
        answer.
        """
        pending = self._pending.get(key)
        if pending is None:
            request = self._router.request(key, cost, uuid.uuid4().hex)
            result = await self._router.assign(request)
            if isinstance(result, Assigned):
                self._sessions.release(key, request.request_id)
            if not isinstance(result, Queued):
                return result
            pending = self._pending[key] = _Pending()
            d = self._router.wait(request, result)
            d.addBoth(self._served, key, request.request_id, pending)
        if wait > 0:
            over = pending.whenOver()
            over.addTimeout(min(wait, self._queueTimeout), self._clock)
            await over.addErrback(lambda f: f.trap(defer.TimeoutError))
        if pending.assigned is not None:
            return pending.assigned
        return await self._place(key)

    def _served(self, result, key, requestId, pending):
        """The queued allocation was bound (released at once), or its wait is over."""
        if self._pending.get(key) is pending:
            del self._pending[key]
        if isinstance(result, Assigned):
            self._sessions.release(key, requestId)
            pending.settle(result)
            return None
        pending.settle(None)
        if result.check(HandshakeRefused):
            log.info("allocation of {key} left the queue: {why}", key=key,
                     why=result.value.reason)
        else:
            log.failure("allocating {key}", result, key=key)
        return None

    async def _place(self, key):
        """The key's place now, or its session when it was bound meanwhile (elsewhere)."""
        status = await self._registry.queueStatus([key], self._clock.seconds())
        place = status.places[0]
        if isinstance(place, QueuePlace):
            return Queued(place.ticket, place.position)
        if isinstance(place, Session):
            worker = await self._registry.getWorker(place.worker, sessions=False)
            if worker is not None:
                return Assigned(worker, fresh=False)
        return None
