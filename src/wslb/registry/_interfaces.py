"""
The registry: the only state wslb instances share.

Every method returns a Deferred, so that a Redis-backed implementation can
stand in for the in-memory one; both pass ``tests/registry_contract.py``.
Every state change that must be atomic is one call here (and one Lua script
in the Redis implementation). Times are seconds from the injected clock
(``reactor.seconds()``), passed in by the caller as ``now``.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

from zope.interface import Interface

STARTING = "starting"
HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
DEAD = "dead"
WORKER_STATES = (STARTING, HEALTHY, UNHEALTHY, DEAD)

PACK = "pack"
SPREAD = "spread"

# A session key: 1-128 characters of A-Za-z0-9._~- (DESIGN §5).
SESSION_KEY = re.compile(r"[A-Za-z0-9._~-]{1,128}\Z")

# With ``allow_overtake``, at most this many sessions may go ahead of one
# queue head that fits nowhere; then the queue is strict FIFO until that head
# is served. Bounded, so a large session is never starved by small ones.
MAX_OVERTAKES = 10

# The pace of the queue, for estimates of the wait: queued sessions served
# are counted in SERVED_SLOTS buckets of SERVED_BUCKET seconds each (a ring:
# the last five minutes, whatever the traffic), and the last START_SAMPLES
# workers' start times (starting -> healthy) are kept.
SERVED_BUCKET = 10
SERVED_SLOTS = 30
START_SAMPLES = 20


# How long an abandoned request id is remembered (IRegistry.abandon): longer
# than an assign sent before the abandon may take to arrive.
ABANDONED_FOR = 600.0


@dataclass(frozen=True)
class Worker:
    """A snapshot of one worker's record."""

    id: str
    url: str  # ws://host:port
    provider: str  # "local", "static", "ec2", "registered"
    state: str  # one of WORKER_STATES
    draining: bool
    capacity: int
    load: int  # sum of the costs of its sessions
    sessions: tuple[str, ...] | None  # sorted; None: not read (see Assigned)
    started_at: float
    state_since: float  # when ``state`` was last changed
    idle_since: float | None  # when load last dropped to 0 (None while loaded)
    last_seen: float | None  # last passed health check or heartbeat

    @property
    def assignable(self) -> bool:
        return self.state == HEALTHY and not self.draining

    def fits(self, cost: int) -> bool:
        return self.assignable and self.capacity - self.load >= cost


@dataclass(frozen=True)
class Session:
    """A snapshot of one session: a key bound to a worker."""

    key: str
    worker: str  # worker id
    cost: int
    connections: int  # live user connections across all instances
    since: float  # when it was assigned
    disconnected_at: float | None  # when connections last dropped to 0

    @property
    def connected(self) -> bool:
        return self.connections > 0


@dataclass(frozen=True)
class Assigned:
    """
    ``assign`` found the key's worker (``fresh``: it was just bound). The
    worker's ``sessions`` is None: the list grows with the sessions and
    reading it on every handshake would cost as much; ask getWorker for it.
    """

    worker: Worker
    fresh: bool


@dataclass(frozen=True)
class Queued:
    """``assign`` put (or kept) the caller in the queue."""

    ticket: str
    position: int  # 0 is the head
    # The ticket's arrival number: tickets are served in its order, so an
    # instance keeps its own waiters sorted by it.
    order: int = field(default=0, compare=False)


@dataclass(frozen=True)
class QueueFull:
    """``assign`` found no room and the queue at its maximum length."""


@dataclass(frozen=True)
class QueueInfo:
    length: int
    oldest_wait: float  # seconds the head has waited; 0 when empty
    demand: int  # sum of the costs of queued tickets


@dataclass(frozen=True)
class QueuePlace:
    """Where a key's ticket stands in the queue."""

    ticket: str
    position: int  # 0 is the head; tickets nobody holds count too
    held: bool  # a waiting handshake holds it (False: in its rejoin grace)


@dataclass(frozen=True)
class QueuePace:
    """What an estimate of the wait needs, read without reading the queue."""

    served: int  # queued sessions served over the last ``over`` seconds
    over: float  # seconds since the oldest counted bucket began (0: none served lately)
    starting: int  # workers starting now
    start_seconds: float | None  # the mean start time of the last workers (None: none seen)


@dataclass(frozen=True)
class QueueStatus:
    """L{IRegistry.queueStatus}: the queue's length, each key's place, the pace."""

    length: int
    places: tuple  # per key asked, in order: a QueuePlace, a Session (bound), or None
    pace: QueuePace


@dataclass(frozen=True)
class AssignRequest:
    """Everything ``assign`` needs to decide, in one round trip."""

    key: str
    cost: int
    instance: str  # the wslb instance holding the connection
    placement: str = PACK  # PACK | SPREAD
    max_queue: int = 1000
    ticket: str | None = None  # set when a queued caller retries
    allow_overtake: bool = False  # may pass a head that fits nowhere (see assign)
    # One connection's assigns, its retries included, share it: the connection
    # is counted once, a ticket it queues has this id, and release/abandon name it.
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Abandoned:
    """``assign`` ran for a request id that was abandoned first: it did nothing."""


class IRegistry(Interface):
    """Workers, sessions and the waiting queue, shared by all instances."""

    # -- workers --------------------------------------------------------

    def addWorker(worker_id, url, provider, capacity, now):
        """
        Register a worker in state ``starting``. Idempotent: an existing
        record is returned unchanged. Fires with the L{Worker}.
        """

    def getWorker(worker_id, sessions=True):
        """
        Fire with the L{Worker}, or None. With ``sessions`` False its
        ``sessions`` is None (not read: the list grows with the sessions).
        """

    def listWorkers(sessions=True, state=None, after=None, limit=None):
        """
        Fire with a list of L{Worker}s ordered by id: every one, or with
        ``state`` only those in that state; with ``after`` only those whose
        id sorts after it; at most ``limit`` of them (None: all). A caller
        pages through a large fleet by passing the last id it got as
        ``after``. With ``sessions`` False their ``sessions`` is None: for
        periodic callers that need none, since the lists grow with the
        sessions.
        """

    def countWorkers():
        """
        Fire with a dict: each of WORKER_STATES -> how many workers are in
        it, without reading them (the metrics scrape).
        """

    def largestCapacity():
        """
        Fire with the largest capacity of any worker that is not dead (0
        when there is none), without reading the workers: a cost above it
        fits nowhere.
        """

    def workerTotals():
        """
        Fire with ``{"load": n, "capacity": n}``, the sums over the workers
        that are not dead, without reading them (the metrics scrape, the
        status page's history).
        """

    def setWorkerState(worker_id, state, now, allowedFrom=None, sessions=True):
        """
        Move a worker to ``state`` (any of WORKER_STATES); ``state_since``
        changes only when the state does. A worker moved to ``dead`` loses
        its sessions (they are deleted, and their users get a fresh worker on
        reconnect) and capacity listeners are told. A passing health check
        (``healthy``) also sets ``last_seen``.

        ``allowedFrom`` (a collection of WORKER_STATES; None: any) guards
        the move: it happens only when the worker is in one of those states
        at that moment, checked and done in one atomic step, so that racing
        callers (a health check, a provider's death notice, a late event)
        cannot undo each other. A worker in another state is left exactly as
        it was. See L{wslb.registry.lifecycle} for the table that picks them.

        Fires with the L{Worker} as it is afterwards (unchanged when the
        guard refused), or None when unknown; with ``sessions`` False its
        ``sessions`` is None.
        """

    def setDraining(worker_id, draining):
        """Set the draining flag. Fires with the L{Worker}, or None."""

    def heartbeat(worker_id, now):
        """Set ``last_seen``. Fires with the L{Worker}, or None."""

    def removeWorker(worker_id):
        """
        Delete a worker and its sessions. Fires with the list of session keys
        that were dropped (empty when unknown).
        """

    def claimIdleWorker(worker_id):
        """
        Atomically delete the worker only if it has no sessions, so that it
        can be terminated without racing an assignment. Fires with True when
        claimed, False otherwise (loaded or unknown).
        """

    # -- sessions -------------------------------------------------------

    def assign(request, now):
        """
        Look up or assign ``request.key`` in one atomic step and count one
        more live connection for it:

          - the key has a session on a live worker: L{Assigned} (fresh False),
            even if that worker is full or draining;
          - otherwise, when the queue is empty (or ``request.ticket`` is its
            head) and a worker fits ``request.cost``: bind the key to the one
            ``request.placement`` picks (PACK: the highest load it fits in;
            SPREAD: the lowest; ties by worker id), dequeue the ticket, and
            fire L{Assigned} (fresh True);
          - otherwise, with ``request.allow_overtake``, the key may go ahead
            of the queue: when no ticket ahead of it (the whole queue, for a
            caller without a ticket in it) fits any worker now, the head has
            been passed fewer than L{MAX_OVERTAKES} times, and a worker fits
            ``request.cost``: bind it as above, dequeue its ticket, count one
            more pass on the head, and fire L{Assigned} (fresh True). A head
            passed L{MAX_OVERTAKES} times makes the queue strict FIFO until
            it is served: small sessions use capacity a large head cannot,
            but never starve it;
          - otherwise keep ``request.ticket`` queued, or enqueue a new ticket
            (whose id is ``request.request_id``)
            at the tail: L{Queued}; or L{QueueFull} when a new ticket would
            make the queue longer than ``request.max_queue``.

        The caller's ticket is ``request.ticket`` while that is queued, else
        the ticket the key has queued, if any (a handshake back within its
        rejoin grace, see L{abandon}, or an allocation taken up): the
        caller holds it from now on, and keeps its place. A key has at most
        one ticket. "The head" above is the first ticket somebody holds:
        tickets nobody holds keep their place (their position counts them)
        but are passed over, so an absent user does not stall the queue.

        On L{Queued} and L{QueueFull} no connection is counted.

        A connection is counted once per ``request.request_id``: an assign
        for an id already counted (a retry after a lost answer) counts
        nothing more and fires L{Assigned} with ``fresh`` as the first one
        had it. An assign for an abandoned id does nothing: L{Abandoned}.
        """

    def release(key, instance, now, request_id=None):
        """
        Count one live connection less for ``key``: the one ``assign``
        counted for ``request_id`` (nothing when it counts none: released
        already, so a release retried after an unknown outcome counts once),
        or without an id any one ``instance`` counts. At zero set
        ``disconnected_at`` (its reconnect grace starts). Fires with the
        L{Session} or None.
        """

    def abandon(key, request_id, now, keep_place_until=None):
        """
        The caller of ``assign`` for ``request_id`` gave up on its answer (it
        timed out, or its user left), so its outcome is unknown: undo it,
        whether that assign ran already or is still to run. The connection
        it counted is counted out; a session it bound that no connection
        holds now is ended (its user never had it: no reconnect grace), and
        capacity listeners are told; the key's ticket, when ``request_id``
        holds it (it queued it or took it up last), leaves the queue, or
        with ``keep_place_until`` nobody holds it from now on: it keeps its
        place until then (the rejoin grace), passed over by assignment
        meanwhile, and a handshake with its key takes it up again
        (L{assign}; a ticket nobody holds keeps the later of two such
        deadlines); and an ``assign`` for ``request_id`` that runs later (a
        call still on its way) does nothing and fires L{Abandoned}.
        Idempotent, so it can be retried until it is answered. Fires with
        the L{Session} as it is afterwards, or None (ended, or none).
        """

    def reconcile(instance, held, now):
        """
        Make the connections ``instance`` counts match what it holds:
        ``held`` maps session keys to the request ids of its connections
        (those relayed, and those whose assign, release or abandon is still
        under way). Every connection it counts for another request id (its
        release or abandon was lost) is counted out, as ``release`` would.
        Costs in proportion to the instance's own sessions, in calls that
        each read a page of them; ``held`` is read as each page is sent, so
        pass the live mapping: a connection held before its assign is sent
        is then never counted out by a page sent after it. Fires with the
        keys whose counts changed, sorted.
        """

    def endSession(key):
        """
        End a session: delete it and free its cost on its worker. Capacity
        listeners are told. Fires with the ended L{Session}, or None.
        """

    def expireSessions(now, grace):
        """
        End every session with no live connection whose ``disconnected_at``
        is ``grace`` seconds or more before ``now``. Fires with the list of
        ended keys.
        """

    def getSession(key):
        """Fire with the L{Session}, or None."""

    def listSessions(after=None, limit=None):
        """
        Fire with a list of L{Session}s ordered by key: every one, or with
        ``after`` only those whose key sorts after it; at most ``limit``
        (None: all).
        """

    def countSessions(connected=None):
        """
        Fire with the number of sessions, without reading them: for
        periodic callers (the metrics scrape) that need only how many. With
        ``connected`` False only those without a live connection (in their
        reconnect grace) count; True, only those with one.
        """

    # -- queue ----------------------------------------------------------

    def leaveQueue(ticket):
        """Remove a ticket from the queue (the client gave up). Idempotent."""

    def touchTickets(tickets, now):
        """
        Refresh the heartbeat of tickets this instance still holds; one that
        was abandoned meanwhile (by another holder of its key) is held again.
        """

    def expireTickets(now, max_age):
        """
        Drop held tickets whose heartbeat is older than ``max_age`` (their
        instance died) and those nobody holds whose ``keep_place_until``
        (L{abandon}) is before ``now``.
        Fires with the number dropped.
        """

    def queueInfo(now):
        """Fire with a L{QueueInfo}."""

    def queueStatus(keys, now):
        """
        Fire with a L{QueueStatus}: for each of ``keys``, its ticket's place
        (its rank: O(log n) in the queue's length), or its L{Session} when it
        is bound, or None; and the pace of the last minutes as of ``now``
        (queued sessions served, in SERVED_SLOTS buckets of SERVED_BUCKET
        seconds; workers starting; the mean of the last START_SAMPLES start
        times, starting -> healthy), all without reading the queue.
        """

    # -- notification ---------------------------------------------------

    def addCapacityListener(listener):
        """
        Call ``listener()`` (no arguments, on the reactor) whenever capacity
        may have become free anywhere: a session ended, a worker became
        healthy or stopped draining, a worker was added. Queued callers retry
        then, so freed capacity serves the queue at once.
        """

    def addSessionEndedListener(listener):
        """
        Call ``listener(key)`` when a session was ended by any instance (its
        live connections, wherever they are, must be closed).
        """

    def addQueueListener(listener):
        """
        Call ``listener()`` whenever tickets left the queue anywhere (served,
        gave up, expired): the positions of those behind them changed.
        """

