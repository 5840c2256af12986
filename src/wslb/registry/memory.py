"""
The in-memory registry, for a single wslb instance.

Every method does its whole job before returning, so each one is atomic for
free; it still answers with a Deferred so that callers cannot tell it from
the Redis registry. Listeners are called later through the clock, never from
inside a registry call, so a listener may call the registry again.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import Counter, deque
from dataclasses import dataclass, field
from functools import wraps
from itertools import islice, takewhile

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from wslb.registry._interfaces import (
    ABANDONED_FOR,
    DEAD,
    HEALTHY,
    MAX_OVERTAKES,
    PACK,
    SERVED_BUCKET,
    SERVED_SLOTS,
    SPREAD,
    START_SAMPLES,
    STARTING,
    WORKER_STATES,
    Abandoned,
    Assigned,
    IRegistry,
    Queued,
    QueueFull,
    QueueInfo,
    QueuePace,
    QueuePlace,
    QueueStatus,
    Session,
    Worker,
)

log = Logger()

_PICK = {
    PACK: lambda worker: (-worker.load, worker.id),
    SPREAD: lambda worker: (worker.load, worker.id),
}


def _deferred(method):
    """Answer with a Deferred, as IRegistry promises, errors included."""

    @wraps(method)
    def answer(*args, **kwargs):
        return defer.maybeDeferred(method, *args, **kwargs)

    return answer


@dataclass
class _WorkerRecord:
    id: str
    url: str
    provider: str
    capacity: int
    started_at: float
    state_since: float
    idle_since: float | None
    state: str = STARTING
    draining: bool = False
    last_seen: float | None = None
    sessions: set[str] = field(default_factory=set)
    load: int = 0  # sum of its sessions' costs, kept as they come and go
    ordered: list[str] = field(default_factory=list)  # the sessions, kept sorted

    def listed(self):
        return tuple(self.ordered)

    def bind(self, key, cost):
        self.sessions.add(key)
        insort(self.ordered, key)
        self.load += cost

    def unbind(self, key, cost):
        self.sessions.discard(key)
        del self.ordered[bisect_left(self.ordered, key)]
        self.load -= cost

    def fits(self, cost):
        return (self.state == HEALTHY and not self.draining
                and self.capacity - self.load >= cost)


@dataclass(slots=True)
class _SessionRecord:
    key: str
    worker: str
    cost: int
    since: float
    disconnected_at: float | None = None
    # The request id that counted each live connection -> (instance, whether
    # that request bound the session): the connections each instance holds,
    # and what keeps assign, release and abandon idempotent (IRegistry.assign).
    requests: dict = field(default_factory=dict)


@dataclass
class _Ticket:
    key: str
    cost: int
    instance: str
    enqueued_at: float
    heartbeat: float
    order: int  # its arrival number
    holder: str  # the request id that holds it, or held it last
    passed: int = 0  # sessions that went ahead of it while it was the head
    until: float | None = None  # nobody holds it: it keeps its place until then

    @property
    def held(self):
        return self.until is None


class _ServedRing:
    """Queued sessions served, counted in SERVED_SLOTS buckets of SERVED_BUCKET seconds."""

    def __init__(self):
        self._slots = {}  # slot -> (bucket, count)

    def count(self, now):
        bucket = math.floor(now / SERVED_BUCKET)
        stored, count = self._slots.get(bucket % SERVED_SLOTS, (None, 0))
        self._slots[bucket % SERVED_SLOTS] = (bucket, count + 1 if stored == bucket else 1)

    def served(self, now):
        """(how many were served in the window, seconds since its oldest bucket began)."""
        bucket = math.floor(now / SERVED_BUCKET)
        counted = [(b, n) for b, n in self._slots.values() if bucket - SERVED_SLOTS < b <= bucket]
        if not counted:
            return 0, 0.0
        return sum(n for _, n in counted), now - min(b for b, _ in counted) * SERVED_BUCKET


@implementer(IRegistry)
class MemoryRegistry:
    """IRegistry over plain dicts; ``clock`` only schedules listener calls."""

    def __init__(self, clock):
        self._clock = clock
        self._workers: dict[str, _WorkerRecord] = {}
        self._sessions: dict[str, _SessionRecord] = {}
        self._queue: dict[str, _Ticket] = {}  # insertion order is arrival order
        self._abandoned: dict[str, float] = {}  # request id -> until when it is remembered
        self._abandonedOrder = deque()  # (until, request id), earliest first
        self._queueKeys: dict[str, str] = {}  # session key -> its queued ticket
        self._arrivals = 0
        self._served = _ServedRing()
        self._starts = deque(maxlen=START_SAMPLES)  # the last workers' start times
        self._capacityListeners = []
        self._sessionEndedListeners = []
        self._queueListeners = []

    # -- workers --------------------------------------------------------

    @_deferred
    def addWorker(self, worker_id, url, provider, capacity, now):
        if worker_id not in self._workers:
            self._workers[worker_id] = _WorkerRecord(
                id=worker_id, url=url, provider=provider, capacity=capacity,
                started_at=now, state_since=now, idle_since=now,
            )
            self._tellCapacity()
        return self._worker(self._workers[worker_id])

    @_deferred
    def getWorker(self, worker_id, sessions=True):
        record = self._workers.get(worker_id)
        return None if record is None else self._worker(record, listed=sessions)

    @_deferred
    def listWorkers(self, sessions=True, state=None, after=None, limit=None):
        ids = _page(self._workers, after, limit,
                    lambda i: state is None or self._workers[i].state == state)
        return [self._worker(self._workers[i], listed=sessions) for i in ids]

    @_deferred
    def countWorkers(self):
        counts = dict.fromkeys(WORKER_STATES, 0)
        counts.update(Counter(worker.state for worker in self._workers.values()))
        return counts

    @_deferred
    def largestCapacity(self):
        return max((w.capacity for w in self._workers.values() if w.state != DEAD), default=0)

    @_deferred
    def workerTotals(self):
        live = [w for w in self._workers.values() if w.state != DEAD]
        return {"load": sum(w.load for w in live), "capacity": sum(w.capacity for w in live)}

    @_deferred
    def setWorkerState(self, worker_id, state, now, allowedFrom=None, sessions=True):
        for named in (state, *(allowedFrom or ())):
            if named not in WORKER_STATES:
                raise ValueError(f"unknown worker state {named!r}")
        record = self._workers.get(worker_id)
        if record is None:
            return None
        if allowedFrom is not None and record.state not in allowedFrom:
            return self._worker(record, listed=sessions)
        if record.state == STARTING and state == HEALTHY:
            self._starts.append(now - record.started_at)
        changed = record.state != state
        if changed:
            record.state = state
            record.state_since = now
        if state == HEALTHY:
            record.last_seen = now
        if state == DEAD:
            self._end(sorted(record.sessions), now)
        if changed and state in (HEALTHY, DEAD):
            self._tellCapacity()
        return self._worker(record, listed=sessions)

    @_deferred
    def setDraining(self, worker_id, draining):
        record = self._workers.get(worker_id)
        if record is None:
            return None
        if record.draining and not draining:
            self._tellCapacity()
        record.draining = draining
        return self._worker(record)

    @_deferred
    def heartbeat(self, worker_id, now):
        record = self._workers.get(worker_id)
        if record is None:
            return None
        record.last_seen = now
        return self._worker(record)

    @_deferred
    def removeWorker(self, worker_id):
        record = self._workers.get(worker_id)
        if record is None:
            return []
        dropped = sorted(record.sessions)
        self._end(dropped, self._clock.seconds())
        del self._workers[worker_id]
        return dropped

    @_deferred
    def claimIdleWorker(self, worker_id):
        record = self._workers.get(worker_id)
        if record is None or record.sessions:
            return False
        del self._workers[worker_id]
        return True

    # -- sessions -------------------------------------------------------

    @_deferred
    def assign(self, request, now):
        if request.placement not in _PICK:
            raise ValueError(f"unknown placement {request.placement!r}")
        if self._abandoned.get(request.request_id, now) > now:
            return Abandoned()
        ticket = request.ticket
        if ticket not in self._queue:
            ticket = self._queueKeys.get(request.key)
        session = self._sessions.get(request.key)
        if session is not None:
            self._dropTickets([ticket])
            return self._connect(session, request, fresh=False, now=now)
        if ticket is not None:
            self._hold(ticket, now, request)
        head = self._head()
        overtaking = head not in (None, ticket) and self._mayOvertake(request, ticket)
        if head is None or head == ticket or overtaking:
            worker = self._choose(request.cost, request.placement)
            if worker is not None:
                if overtaking:
                    self._queue[head].passed += 1
                if ticket is not None:
                    self._dropTickets([ticket])
                    self._served.count(now)
                session = self._bind(request.key, request.cost, worker, now)
                return self._connect(session, request, fresh=True, now=now)
        if ticket is not None:
            return Queued(ticket, list(self._queue).index(ticket), self._queue[ticket].order)
        if len(self._queue) >= request.max_queue:
            return QueueFull()
        ticket = request.request_id
        self._arrivals += 1
        self._queue[ticket] = _Ticket(
            key=request.key, cost=request.cost, instance=request.instance,
            enqueued_at=now, heartbeat=now, order=self._arrivals, holder=ticket,
        )
        self._queueKeys[request.key] = ticket
        return Queued(ticket, len(self._queue) - 1, self._arrivals)

    @_deferred
    def release(self, key, instance, now, request_id=None):
        session = self._sessions.get(key)
        if session is None:
            return None
        if request_id is None:
            request_id = next(
                (r for r, (held, _) in session.requests.items() if held == instance), None)
        self._disconnect(session, request_id, now)
        return self._session(session)

    @_deferred
    def abandon(self, key, request_id, now, keep_place_until=None):
        while self._abandonedOrder and self._abandonedOrder[0][0] <= now:
            until, forgotten = self._abandonedOrder.popleft()
            if self._abandoned.get(forgotten) == until:
                del self._abandoned[forgotten]
        until = now + ABANDONED_FOR
        self._abandoned[request_id] = until
        self._abandonedOrder.append((until, request_id))
        ticket = self._queueKeys.get(key)
        if ticket is not None and self._queue[ticket].holder == request_id:
            if keep_place_until is None:
                self._dropTickets([ticket])
            else:
                self._letGo(ticket, keep_place_until)
        session = self._sessions.get(key)
        if session is None:
            return None
        held = self._disconnect(session, request_id, now)
        if held and held[1] and not session.requests:
            self._end([key], now)
            self._tellCapacity()
            return None
        return self._session(session)

    @_deferred
    def reconcile(self, instance, held, now):
        # The memory registry serves one instance: its sessions are all there are.
        changed = []
        for key, session in sorted(self._sessions.items()):
            mine = set(held.get(key, ()))
            stale = [r for r, (holder, _) in session.requests.items()
                     if holder == instance and r not in mine]
            for request_id in stale:
                self._disconnect(session, request_id, now)
            if stale:
                changed.append(key)
        return changed

    @_deferred
    def endSession(self, key):
        session = self._sessions.get(key)
        if session is None:
            return None
        ended = self._session(session)
        # IRegistry.endSession carries no ``now``: the clock dates idle_since.
        self._end([key], self._clock.seconds())
        self._tellCapacity()
        return ended

    @_deferred
    def expireSessions(self, now, grace):
        expired = sorted(
            key for key, session in self._sessions.items()
            if not session.requests
            and session.disconnected_at is not None
            and now - session.disconnected_at >= grace
        )
        if expired:
            self._end(expired, now)
            self._tellCapacity()
        return expired

    @_deferred
    def getSession(self, key):
        session = self._sessions.get(key)
        return None if session is None else self._session(session)

    @_deferred
    def listSessions(self, after=None, limit=None):
        return [self._session(self._sessions[k]) for k in _page(self._sessions, after, limit)]

    @_deferred
    def countSessions(self, connected=None):
        if connected is None:
            return len(self._sessions)
        return sum(bool(s.requests) == connected for s in self._sessions.values())

    # -- queue ----------------------------------------------------------

    @_deferred
    def leaveQueue(self, ticket):
        self._dropTickets([ticket])

    @_deferred
    def touchTickets(self, tickets, now):
        for ticket in tickets:
            if ticket in self._queue:
                self._hold(ticket, now)

    @_deferred
    def expireTickets(self, now, max_age):
        stale = [t for t, v in self._queue.items()
                 if (now - v.heartbeat > max_age if v.held else v.until < now)]
        self._dropTickets(stale)
        return len(stale)

    @_deferred
    def queueInfo(self, now):
        if not self._queue:
            return QueueInfo(length=0, oldest_wait=0.0, demand=0)
        first = next(iter(self._queue.values()))
        return QueueInfo(
            length=len(self._queue),
            oldest_wait=max(0.0, now - first.enqueued_at),
            demand=sum(t.cost for t in self._queue.values()),
        )

    @_deferred
    def queueStatus(self, keys, now):
        ranks = {ticket: rank for rank, ticket in enumerate(self._queue)}
        places = []
        for key in keys:
            ticket = self._queueKeys.get(key)
            session = self._sessions.get(key)
            if ticket is not None:
                places.append(QueuePlace(ticket, ranks[ticket], self._queue[ticket].held))
            else:
                places.append(None if session is None else self._session(session))
        served, over = self._served.served(now)
        starts = list(self._starts)
        return QueueStatus(length=len(self._queue), places=tuple(places), pace=QueuePace(
            served=served, over=over,
            starting=sum(w.state == STARTING for w in self._workers.values()),
            start_seconds=sum(starts) / len(starts) if starts else None,
        ))

    # -- notification ---------------------------------------------------

    def addCapacityListener(self, listener):
        self._capacityListeners.append(listener)

    def addSessionEndedListener(self, listener):
        self._sessionEndedListeners.append(listener)

    def addQueueListener(self, listener):
        self._queueListeners.append(listener)

    # -- internals ------------------------------------------------------

    def _worker(self, record, listed=True):
        """A snapshot of ``record``; its sessions only when ``listed``."""
        return Worker(
            id=record.id, url=record.url, provider=record.provider,
            state=record.state, draining=record.draining,
            capacity=record.capacity,
            load=record.load,
            sessions=record.listed() if listed else None,
            started_at=record.started_at, state_since=record.state_since,
            idle_since=record.idle_since, last_seen=record.last_seen,
        )

    def _session(self, record):
        return Session(
            key=record.key, worker=record.worker, cost=record.cost,
            connections=len(record.requests), since=record.since,
            disconnected_at=record.disconnected_at,
        )

    def _head(self):
        """The first ticket somebody holds: the one served next."""
        return next((ticket for ticket, queued in self._queue.items() if queued.held), None)

    def _hold(self, ticket, now, request=None):
        """Somebody holds ``ticket`` (again), as of ``now``: ``request``'s caller, if named."""
        queued = self._queue[ticket]
        if not queued.held:
            head = self._head()
            queued.until = None
            self._tellIfNewHead(head)
        queued.heartbeat = now
        if request is not None:
            queued.instance, queued.holder = request.instance, request.request_id

    def _letGo(self, ticket, until):
        """Nobody holds ``ticket``: it keeps its place until ``until``."""
        queued = self._queue[ticket]
        if queued.held:
            head = self._head()
            queued.until = until
            self._tellIfNewHead(head)
        else:
            queued.until = max(queued.until, until)

    def _mayOvertake(self, request, ticket):
        """
        Whether ``request``, holding ``ticket`` (or None), may go ahead of
        the queue (IRegistry.assign): it allows it, the head was passed
        fewer than MAX_OVERTAKES times, and no held ticket ahead of it fits
        the most room any worker has.
        """
        if not request.allow_overtake or self._queue[self._head()].passed >= MAX_OVERTAKES:
            return False
        room = max(
            (w.capacity - w.load for w in self._workers.values()
             if w.state == HEALTHY and not w.draining),
            default=-1,
        )
        ahead = takewhile(lambda t: t != ticket, self._queue)
        return all(self._queue[t].cost > room for t in ahead if self._queue[t].held)

    def _choose(self, cost, placement):
        fitting = [worker for worker in self._workers.values() if worker.fits(cost)]
        if not fitting:
            return None
        return min(fitting, key=_PICK[placement])

    def _bind(self, key, cost, worker, now):
        session = _SessionRecord(key=key, worker=worker.id, cost=cost, since=now)
        self._sessions[key] = session
        worker.bind(key, cost)
        worker.idle_since = None
        return session

    def _connect(self, session, request, fresh, now):
        """Count the connection of ``request``, once (IRegistry.assign)."""
        held = session.requests.get(request.request_id)  # reactor-safe: a dict
        if held is None:
            held = session.requests[request.request_id] = (request.instance, fresh)
            session.disconnected_at = None
        return Assigned(self._worker(self._workers[session.worker], listed=False), held[1])

    def _disconnect(self, session, request_id, now):
        """Count out the connection of ``request_id``; its (instance, fresh), or None."""
        held = session.requests.pop(request_id, None)
        if held is not None and not session.requests:
            session.disconnected_at = now
        return held

    def _end(self, keys, now):
        """Delete sessions; a worker left empty becomes idle at ``now``."""
        for key in keys:
            session = self._sessions.pop(key)
            worker = self._workers[session.worker]
            worker.unbind(key, session.cost)
            if not worker.sessions:
                worker.idle_since = now
            self._tell(self._sessionEndedListeners, key)

    def _dropTickets(self, tickets):
        """Remove tickets; the queue's watchers are told when any was queued."""
        head = self._head()
        dropped = False
        for ticket in tickets:
            queued = self._queue.pop(ticket, None)
            if queued is not None:
                dropped = True
                if self._queueKeys.get(queued.key) == ticket:
                    del self._queueKeys[queued.key]
        if dropped:
            self._tell(self._queueListeners)
        self._tellIfNewHead(head)

    def _tellIfNewHead(self, head):
        """
        A new head may fit where the old one did not, and it retries only
        when told, so a changed head counts as new capacity.
        """
        newHead = self._head()
        if newHead is not None and newHead != head:
            self._tellCapacity()

    def _tellCapacity(self):
        self._tell(self._capacityListeners)

    def _tell(self, listeners, *args):
        for listener in listeners:
            self._clock.callLater(0, _deliver, listener, *args)


def _page(records, after, limit, wanted=lambda name: True):
    """The sorted names of ``records`` after ``after`` that are ``wanted``, at most ``limit``."""
    names = (name for name in sorted(records) if (after is None or name > after) and wanted(name))
    return list(islice(names, limit))


def _deliver(listener, *args):
    """Call one listener; its failure is logged and spares the others."""
    try:
        listener(*args)
    except Exception:
        log.failure("registry listener {listener!r} failed", listener=listener)
