"""
The IRegistry contract: every registry implementation passes these tests.

Reuse it by subclassing L{RegistryContract} in a test module that pytest
collects (``class TestMemoryRegistry(RegistryContract): pass``) and by
providing, in that module, a function-scoped fixture named ``harness`` (plain,
or ``pytest_twisted.async_fixture``/``async_yield_fixture``) whose value has:

  - ``make()``: a Deferred firing with a new registry over empty state. The
    property test calls it once per example, so each call starts afresh.
  - ``settle()``: a Deferred firing once every listener call caused by the
    registry calls made so far has been delivered.
  - ``audit()``: a Deferred firing once the current registry's own
    bookkeeping (the indexes a Redis registry keeps beside its records) was
    checked against its records; it fails (AssertionError) on any mismatch.

The harness cleans up whatever ``make()`` created when its fixture ends.
Times (``now``) are plain numbers: the contract never reads a clock.
"""

import dataclasses

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import gatherResults, inlineCallbacks

from wslb.registry import (
    DEAD,
    HEALTHY,
    MAX_OVERTAKES,
    PACK,
    SPREAD,
    STARTING,
    UNHEALTHY,
    WORKER_STATES,
    Abandoned,
    Assigned,
    AssignRequest,
    Queued,
    QueueFull,
    QueueInfo,
    QueuePace,
    QueuePlace,
    Session,
)


def request(key, cost=1, placement=PACK, ticket=None, max_queue=1000, instance="i1",
            allow_overtake=False):
    return AssignRequest(
        key=key, cost=cost, instance=instance, placement=placement,
        max_queue=max_queue, ticket=ticket, allow_overtake=allow_overtake,
    )


def overtaking(key, cost, ticket=None):
    return request(key, cost, ticket=ticket, allow_overtake=True)


@inlineCallbacks
def addHealthy(registry, worker_id, capacity=1, now=0):
    yield registry.addWorker(worker_id, f"ws://{worker_id}.test:9000", "static", capacity, now)
    worker = yield registry.setWorkerState(worker_id, HEALTHY, now)
    return worker


@inlineCallbacks
def countsOf(registry):
    """countSessions() of every session, the connected ones, those in their grace."""
    counts = []
    for connected in (None, True, False):
        counts.append((yield registry.countSessions(connected)))
    return tuple(counts)


def pick(workers, cost, placement):
    """The worker id ``placement`` must choose among ``workers``, or None."""
    fitting = [w for w in workers if w.fits(cost)]
    if not fitting:
        return None
    sign = -1 if placement == PACK else 1
    return min(fitting, key=lambda w: (sign * w.load, w.id)).id


class Calls:
    """A listener that records its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, *args):
        self.calls.append(args)


@inlineCallbacks
def listen(registry, harness):
    """Capacity and session-ended recorders, clear of earlier notifications."""
    capacity, ended = Calls(), Calls()
    registry.addCapacityListener(capacity)
    registry.addSessionEndedListener(ended)
    yield harness.settle()
    capacity.calls.clear()
    ended.calls.clear()
    return capacity, ended


@inlineCallbacks
def checkFleetReads(registry, harness):
    """
    What the registry answers without reading every worker (counts by
    state, the largest capacity, the totals of load and capacity) agrees
    with the workers it lists, and its own bookkeeping passes the harness's
    audit.
    """
    workers = yield registry.listWorkers(sessions=False)
    assert (yield registry.countWorkers()) == {
        state: sum(w.state == state for w in workers) for state in WORKER_STATES}
    assert (yield registry.largestCapacity()) == max(
        (w.capacity for w in workers if w.state != DEAD), default=0)
    live = [w for w in workers if w.state != DEAD]
    assert (yield registry.workerTotals()) == {
        "load": sum(w.load for w in live), "capacity": sum(w.capacity for w in live)}
    yield harness.audit()


KEYS = st.integers(0, 5).map(lambda i: f"k{i}")
WORKERS = ["w0", "w1", "w2"]
STEP_ARGS = {
    "arrive": st.tuples(KEYS, st.sampled_from([100, 300, 600, 1000])),
    "retry": st.tuples(st.integers(0, 30)),
    "leave": st.tuples(st.integers(0, 30)),
    "release": st.tuples(KEYS),
    "end": st.tuples(KEYS),
    "expire": st.tuples(),
    "drain": st.tuples(st.sampled_from(WORKERS), st.booleans()),
    "health": st.tuples(st.sampled_from(WORKERS), st.sampled_from(WORKER_STATES)),
    "replace": st.tuples(st.sampled_from(WORKERS), st.sampled_from([300, 1000])),
}
# Arrivals and retries weigh more, so that workers fill and the queue forms.
STEP_KINDS = ["arrive"] * 4 + ["retry"] * 2 + [
    "leave", "release", "end", "expire", "drain", "health", "replace"]
STEPS = st.lists(
    st.sampled_from(STEP_KINDS).flatmap(
        lambda kind: STEP_ARGS[kind].map(lambda args: (kind, *args))),
    min_size=10, max_size=40,
)
GRACE = 2


class RegistryContract:
    """IRegistry behaviour; see the module docstring for the ``harness``."""

    def __init_subclass__(cls, **kwargs):
        """
        Give each implementation its own copy of the property test:
        pytest-twisted rewrites a hypothesis test's ``inner_test`` in place
        when it runs, so a copy shared by two classes breaks the second.
        """
        super().__init_subclass__(**kwargs)
        cls.test_randomTrafficKeepsTheBooks = given(
            placement=st.sampled_from([PACK, SPREAD]), allowOvertake=st.booleans(),
            steps=STEPS,
        )(settings(
            max_examples=50, deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )(pytest_twisted.inlineCallbacks(randomTrafficKeepsTheBooks)))

    @pytest.fixture
    def registry(self, harness):
        return pytest_twisted.blockon(harness.make())

    # -- workers --------------------------------------------------------

    @pytest_twisted.inlineCallbacks
    def test_addWorkerStartsStartingAndIdle(self, registry):
        worker = yield registry.addWorker("w1", "ws://h:1", "local", 5, 10)
        assert (worker.id, worker.url, worker.provider, worker.capacity) == (
            "w1", "ws://h:1", "local", 5)
        assert (worker.state, worker.draining, worker.load, worker.sessions) == (
            STARTING, False, 0, ())
        assert (worker.started_at, worker.state_since, worker.idle_since) == (10, 10, 10)
        assert worker.last_seen is None
        assert not worker.assignable
        assert (yield registry.getWorker("w1")) == worker

    @pytest_twisted.inlineCallbacks
    def test_addWorkerIsIdempotent(self, registry):
        yield registry.addWorker("w1", "ws://h:1", "local", 5, 10)
        healthy = yield registry.setWorkerState("w1", HEALTHY, 11)
        again = yield registry.addWorker("w1", "ws://other:2", "ec2", 9, 20)
        assert again == healthy
        assert (again.url, again.capacity, again.started_at) == ("ws://h:1", 5, 10)
        assert len((yield registry.listWorkers())) == 1

    @pytest_twisted.inlineCallbacks
    def test_listWorkersOrderedById(self, registry):
        for worker_id in ["w3", "w1", "w2"]:
            yield registry.addWorker(worker_id, "ws://h:1", "local", 1, 0)
        assert [w.id for w in (yield registry.listWorkers())] == ["w1", "w2", "w3"]

    @pytest_twisted.inlineCallbacks
    def test_listWorkersWithoutTheirSessions(self, registry):
        yield addHealthy(registry, "w1", capacity=10)
        yield addHealthy(registry, "w2", capacity=10)
        yield registry.assign(request("a", cost=3), 1)
        full = yield registry.listWorkers()
        bare = yield registry.listWorkers(sessions=False)
        assert [w.sessions for w in full] == [("a",), ()]
        assert bare == [dataclasses.replace(w, sessions=None) for w in full]

    @pytest_twisted.inlineCallbacks
    def test_aWorkerWithoutItsSessions(self, registry):
        """getWorker and setWorkerState can leave the list out: it grows with the sessions."""
        yield addHealthy(registry, "w1", capacity=10)
        yield registry.assign(request("a"), 1)
        full = yield registry.getWorker("w1")
        assert full.sessions == ("a",)
        bare = dataclasses.replace(full, sessions=None)
        assert (yield registry.getWorker("w1", sessions=False)) == bare
        moved = yield registry.setWorkerState("w1", UNHEALTHY, 2, sessions=False)
        assert moved == dataclasses.replace(bare, state=UNHEALTHY, state_since=2)
        refused = yield registry.setWorkerState(
            "w1", DEAD, 3, allowedFrom=(STARTING,), sessions=False)
        assert refused == moved
        assert (yield registry.getWorker("nope", sessions=False)) is None

    @pytest_twisted.inlineCallbacks
    def test_unknownWorker(self, registry):
        assert (yield registry.getWorker("nope")) is None
        assert (yield registry.setWorkerState("nope", HEALTHY, 1)) is None
        assert (yield registry.setDraining("nope", True)) is None
        assert (yield registry.heartbeat("nope", 1)) is None
        assert (yield registry.removeWorker("nope")) == []
        assert (yield registry.claimIdleWorker("nope")) is False
        assert (yield registry.listWorkers()) == []

    @pytest_twisted.inlineCallbacks
    def test_stateSinceChangesOnlyWithTheState(self, registry):
        yield registry.addWorker("w1", "ws://h:1", "local", 1, 0)
        worker = yield registry.setWorkerState("w1", HEALTHY, 10)
        assert (worker.state, worker.state_since, worker.last_seen) == (HEALTHY, 10, 10)
        worker = yield registry.setWorkerState("w1", HEALTHY, 20)
        assert (worker.state_since, worker.last_seen) == (10, 20)
        worker = yield registry.setWorkerState("w1", UNHEALTHY, 30)
        assert (worker.state, worker.state_since, worker.last_seen) == (UNHEALTHY, 30, 20)
        assert (yield registry.getWorker("w1")) == worker

    @pytest_twisted.inlineCallbacks
    def test_unknownStateIsRefused(self, registry):
        yield registry.addWorker("w1", "ws://h:1", "local", 1, 0)
        with pytest.raises(ValueError):
            yield registry.setWorkerState("w1", "sleepy", 1)
        assert (yield registry.getWorker("w1")).state == STARTING

    @pytest_twisted.inlineCallbacks
    def test_heartbeatSetsLastSeen(self, registry):
        yield registry.addWorker("w1", "ws://h:1", "local", 1, 0)
        worker = yield registry.heartbeat("w1", 7)
        assert (worker.last_seen, worker.state, worker.state_since) == (7, STARTING, 0)

    @pytest_twisted.inlineCallbacks
    def test_deadWorkerLosesItsSessions(self, registry, harness):
        yield addHealthy(registry, "w1", capacity=10)
        yield addHealthy(registry, "w2", capacity=10)
        yield registry.assign(request("a"), 1)
        yield registry.assign(request("b"), 1)
        capacity, ended = yield listen(registry, harness)
        worker = yield registry.setWorkerState("w1", DEAD, 5)
        assert (worker.state, worker.load, worker.sessions, worker.idle_since) == (DEAD, 0, (), 5)
        assert [w.id for w in (yield registry.listWorkers())] == ["w1", "w2"]
        assert (yield registry.listSessions()) == []
        yield harness.settle()
        assert sorted(ended.calls) == [("a",), ("b",)]
        assert capacity.calls
        again = yield registry.assign(request("a"), 6)
        assert (again.worker.id, again.fresh) == ("w2", True)

    # -- guarded state changes (allowedFrom) ----------------------------

    @pytest_twisted.inlineCallbacks
    def test_allowedFromLetsTheMoveHappenFromThoseStates(self, registry):
        yield registry.addWorker("w1", "ws://h:1", "local", 1, 0)
        worker = yield registry.setWorkerState("w1", HEALTHY, 10, allowedFrom=(STARTING,))
        assert (worker.state, worker.state_since, worker.last_seen) == (HEALTHY, 10, 10)
        worker = yield registry.setWorkerState(
            "w1", UNHEALTHY, 20, allowedFrom=frozenset({HEALTHY, UNHEALTHY}))
        assert (worker.state, worker.state_since) == (UNHEALTHY, 20)
        assert (yield registry.getWorker("w1")) == worker

    @pytest_twisted.inlineCallbacks
    def test_allowedFromLeavesAWorkerInAnotherStateAsItWas(self, registry, harness):
        yield addHealthy(registry, "w1", capacity=2, now=1)
        yield registry.assign(request("a"), 2)
        before = yield registry.getWorker("w1")
        capacity, ended = yield listen(registry, harness)
        for state, allowed in ((DEAD, (STARTING, UNHEALTHY)), (HEALTHY, (DEAD,)),
                               (STARTING, ()), (UNHEALTHY, [STARTING])):
            answer = yield registry.setWorkerState("w1", state, 50, allowedFrom=allowed)
            assert answer == before, (state, allowed)
        assert (yield registry.getWorker("w1")) == before
        assert (yield registry.getSession("a")).worker == "w1"  # not ended by a refused "dead"
        yield harness.settle()
        assert (capacity.calls, ended.calls) == ([], [])

    @pytest_twisted.inlineCallbacks
    def test_deadStaysDeadWhenOnlyLiveStatesMayMove(self, registry):
        """A late "healthy" (a check in flight, an old event) cannot revive a dead worker."""
        yield addHealthy(registry, "w1")
        yield registry.setWorkerState("w1", DEAD, 5, allowedFrom=(HEALTHY,))
        worker = yield registry.setWorkerState(
            "w1", HEALTHY, 6, allowedFrom=(STARTING, HEALTHY, UNHEALTHY))
        assert (worker.state, worker.state_since, worker.last_seen) == (DEAD, 5, 0)

    @pytest_twisted.inlineCallbacks
    def test_competingGuardedMovesOneWins(self, registry):
        """Issued together, each guarded on the same state: exactly one happens."""
        yield addHealthy(registry, "w1")
        yield registry.assign(request("a"), 1)
        answers = yield gatherResults([
            registry.setWorkerState("w1", DEAD, 7, allowedFrom=(HEALTHY,)),
            registry.setWorkerState("w1", UNHEALTHY, 7, allowedFrom=(HEALTHY,)),
        ])
        final = (yield registry.getWorker("w1")).state
        assert final in (DEAD, UNHEALTHY)
        assert [answer.state for answer in answers] == [final, final]  # the loser saw the winner
        assert ((yield registry.getSession("a")) is None) == (final == DEAD)

    @pytest_twisted.inlineCallbacks
    def test_allowedFromWithAnUnknownStateIsRefused(self, registry):
        yield registry.addWorker("w1", "ws://h:1", "local", 1, 0)
        with pytest.raises(ValueError):
            yield registry.setWorkerState("w1", HEALTHY, 1, allowedFrom=(STARTING, "sleepy"))
        assert (yield registry.getWorker("w1")).state == STARTING
        assert (yield registry.setWorkerState("nope", HEALTHY, 1, allowedFrom=(STARTING,))) is None

    # -- assigning ------------------------------------------------------

    @pytest_twisted.inlineCallbacks
    def test_assignFresh(self, registry):
        yield addHealthy(registry, "w1", capacity=10)
        result = yield registry.assign(request("a", cost=3), 5)
        assert isinstance(result, Assigned) and result.fresh
        # The worker's session list is not read on the handshake path.
        assert (result.worker.id, result.worker.load, result.worker.sessions) == ("w1", 3, None)
        assert result.worker.idle_since is None
        assert (yield registry.getWorker("w1")).sessions == ("a",)
        assert (yield registry.getSession("a")) == Session(
            key="a", worker="w1", cost=3, connections=1, since=5, disconnected_at=None)

    @pytest_twisted.inlineCallbacks
    def test_assignExistingEvenWhenFullOrDraining(self, registry):
        yield addHealthy(registry, "w1", capacity=1)
        yield addHealthy(registry, "w2", capacity=1)
        yield registry.assign(request("a"), 1)
        yield registry.setDraining("w1", True)
        result = yield registry.assign(request("a", instance="i2"), 2)
        assert isinstance(result, Assigned) and not result.fresh
        assert (result.worker.id, result.worker.load, result.worker.draining) == ("w1", 1, True)
        assert result.worker.sessions is None
        session = yield registry.getSession("a")
        assert (session.connections, session.since) == (2, 1)

    @pytest_twisted.inlineCallbacks
    def test_capacityIsRespected(self, registry):
        yield addHealthy(registry, "w1", capacity=1)
        yield registry.assign(request("a"), 1)
        result = yield registry.assign(request("b"), 2)
        assert isinstance(result, Queued) and result.position == 0
        assert (yield registry.getSession("b")) is None
        assert (yield registry.getWorker("w1")).sessions == ("a",)

    @pytest_twisted.inlineCallbacks
    def test_packFillsTheFullestWorkerItFits(self, registry):
        for worker_id in ["w2", "w1"]:
            yield addHealthy(registry, worker_id, capacity=1000)
        chosen = []
        for key, cost in [("a", 100), ("b", 300), ("c", 600), ("d", 100)]:
            result = yield registry.assign(request(key, cost, PACK), 1)
            chosen.append(result.worker.id)
        assert chosen == ["w1", "w1", "w1", "w2"]
        assert (yield registry.getWorker("w1")).load == 1000

    @pytest_twisted.inlineCallbacks
    def test_spreadPicksTheEmptiestWorker(self, registry):
        for worker_id in ["w2", "w1"]:
            yield addHealthy(registry, worker_id, capacity=1000)
        chosen = []
        for key, cost in [("a", 100), ("b", 300), ("c", 600), ("d", 100)]:
            result = yield registry.assign(request(key, cost, SPREAD), 1)
            chosen.append(result.worker.id)
        assert chosen == ["w1", "w2", "w1", "w2"]

    @pytest_twisted.inlineCallbacks
    def test_onlyHealthyNonDrainingWorkersAreAssigned(self, registry):
        yield registry.addWorker("starting", "ws://h:1", "local", 10, 0)
        for worker_id, state in [("unhealthy", UNHEALTHY), ("dead", DEAD), ("draining", HEALTHY)]:
            yield registry.addWorker(worker_id, "ws://h:1", "local", 10, 0)
            yield registry.setWorkerState(worker_id, state, 0)
        yield registry.setDraining("draining", True)
        queued = yield registry.assign(request("a"), 1)
        assert isinstance(queued, Queued)
        yield registry.setDraining("draining", False)
        result = yield registry.assign(request("a", ticket=queued.ticket), 2)
        assert (result.worker.id, result.fresh) == ("draining", True)

    # -- the queue ------------------------------------------------------

    @pytest_twisted.inlineCallbacks
    def test_queueIsFirstComeFirstServed(self, registry):
        yield addHealthy(registry, "w1", capacity=1)
        yield registry.assign(request("a"), 1)
        b = yield registry.assign(request("b"), 2)
        c = yield registry.assign(request("c"), 3)
        assert (b.position, c.position) == (0, 1)
        yield registry.endSession("a")
        assert (yield registry.assign(request("c", ticket=c.ticket), 4)) == Queued(c.ticket, 1)
        result = yield registry.assign(request("b", ticket=b.ticket), 5)
        assert (result.worker.id, result.fresh) == ("w1", True)
        assert (yield registry.queueInfo(5)).length == 1
        yield registry.endSession("b")
        assert isinstance((yield registry.assign(request("c", ticket=c.ticket), 6)), Assigned)
        assert (yield registry.queueInfo(6)).length == 0

    @pytest_twisted.inlineCallbacks
    def test_newKeyQueuesBehindTheQueueEvenWithRoom(self, registry):
        yield addHealthy(registry, "w1", capacity=1000)
        yield registry.assign(request("a", 600), 1)
        head = yield registry.assign(request("b", 600), 2)
        small = yield registry.assign(request("c", 100), 3)
        assert isinstance(head, Queued) and small == Queued(small.ticket, 1)
        assert (yield registry.getWorker("w1")).load == 600

    @pytest_twisted.inlineCallbacks
    def test_queueFull(self, registry):
        yield addHealthy(registry, "w1", capacity=1)
        yield registry.assign(request("a"), 1)
        b = yield registry.assign(request("b", max_queue=1), 2)
        assert isinstance(b, Queued)
        assert (yield registry.assign(request("c", max_queue=1), 3)) == QueueFull()
        assert (yield registry.queueInfo(3)).length == 1
        assert (yield registry.assign(request("b", ticket=b.ticket, max_queue=1), 4)) == b

    @pytest_twisted.inlineCallbacks
    def test_leaveQueue(self, registry):
        yield addHealthy(registry, "w1", capacity=1)
        yield registry.assign(request("a"), 1)
        b = yield registry.assign(request("b"), 2)
        c = yield registry.assign(request("c"), 3)
        yield registry.leaveQueue(b.ticket)
        yield registry.leaveQueue(b.ticket)
        assert (yield registry.queueInfo(3)).length == 1
        assert (yield registry.assign(request("c", ticket=c.ticket), 4)) == Queued(c.ticket, 0)

    @pytest_twisted.inlineCallbacks
    def test_unknownTicketJoinsTheTail(self, registry):
        yield addHealthy(registry, "w1", capacity=1)
        yield registry.assign(request("a"), 1)
        b = yield registry.assign(request("b"), 2)
        yield registry.leaveQueue(b.ticket)
        c = yield registry.assign(request("c"), 3)
        again = yield registry.assign(request("b", ticket=b.ticket), 4)
        assert isinstance(again, Queued) and again.position == 1
        assert again.ticket != c.ticket
        assert (yield registry.queueInfo(4)).length == 2

    @pytest_twisted.inlineCallbacks
    def test_ticketOfAKeyAssignedMeanwhileIsDequeued(self, registry):
        yield addHealthy(registry, "w1", capacity=1)
        yield registry.assign(request("a"), 1)
        first = yield registry.assign(request("b"), 2)
        second = yield registry.assign(request("b"), 3)
        yield registry.endSession("a")
        assert (yield registry.assign(request("b", ticket=first.ticket), 4)).fresh
        result = yield registry.assign(request("b", ticket=second.ticket), 5)
        assert isinstance(result, Assigned) and not result.fresh
        assert (yield registry.queueInfo(5)).length == 0
        assert (yield registry.getSession("b")).connections == 2

    @pytest_twisted.inlineCallbacks
    def test_queueInfo(self, registry):
        assert (yield registry.queueInfo(7)) == QueueInfo(length=0, oldest_wait=0, demand=0)
        yield addHealthy(registry, "w1", capacity=100)
        yield registry.assign(request("a", 100), 1)
        yield registry.assign(request("b", 100), 10)
        yield registry.assign(request("c", 30), 15)
        assert (yield registry.queueInfo(25)) == QueueInfo(length=2, oldest_wait=15, demand=130)

    @pytest_twisted.inlineCallbacks
    def test_touchAndExpireTickets(self, registry):
        yield addHealthy(registry, "w1", capacity=1)
        yield registry.assign(request("a"), 0)
        yield registry.assign(request("b"), 0)
        c = yield registry.assign(request("c"), 0)
        yield registry.touchTickets([c.ticket, "unknown"], 50)
        assert (yield registry.expireTickets(70, 30)) == 1
        assert (yield registry.expireTickets(80, 30)) == 0
        # Its holder asking again is a heartbeat too.
        assert (yield registry.assign(request("c", ticket=c.ticket), 71)) == Queued(c.ticket, 0)
        assert (yield registry.expireTickets(101, 30)) == 0
        assert (yield registry.expireTickets(102, 30)) == 1
        assert (yield registry.queueInfo(102)).length == 0

    # -- keeping one's place: a key's ticket, abandoned tickets ----------

    @pytest_twisted.inlineCallbacks
    def test_aKeyTakesUpItsQueuedTicket(self, registry):
        """A handshake with a queued key, without the ticket, gets that ticket and place."""
        yield addHealthy(registry, "w1")
        yield registry.assign(request("x"), 0)
        a = yield registry.assign(request("a"), 1)
        b = yield registry.assign(request("b"), 2)
        yield registry.assign(request("c"), 3)
        assert (yield registry.assign(request("b", instance="i2"), 4)) == Queued(b.ticket, 1)
        assert (yield registry.assign(request("a"), 5)).order == a.order < b.order
        assert (yield registry.queueInfo(5)).length == 3

    @pytest_twisted.inlineCallbacks
    def test_anAbandonedTicketKeepsItsPlaceAndIsPassedOver(self, registry, harness):
        yield addHealthy(registry, "w1")
        yield registry.assign(request("x"), 0)
        a = yield registry.assign(request("a"), 1)
        b = yield registry.assign(request("b"), 2)
        c = yield registry.assign(request("c"), 3)
        capacity, _ = yield listen(registry, harness)
        yield registry.abandon("a", a.ticket, 3, keep_place_until=30)
        yield harness.settle()
        assert capacity.calls  # b heads the held tickets now: it may be served
        status = yield registry.queueStatus(["a", "b", "c"], 4)
        assert status.places == (QueuePlace(a.ticket, 0, False), QueuePlace(b.ticket, 1, True),
                                 QueuePlace(c.ticket, 2, True))
        yield registry.endSession("x")
        assert (yield registry.assign(request("b", ticket=b.ticket), 5)).fresh
        assert (yield registry.assign(request("c", ticket=c.ticket), 6)) == Queued(c.ticket, 1)
        # a comes back (through another instance): its place, held again, served first.
        assert (yield registry.assign(request("a", instance="i2"), 7)) == Queued(a.ticket, 0)
        yield registry.endSession("b")
        assert (yield registry.assign(request("c", ticket=c.ticket), 8)) == Queued(c.ticket, 1)
        assert (yield registry.assign(request("a"), 9)).fresh

    @pytest_twisted.inlineCallbacks
    def test_anAbandonedTicketIsDroppedAfterItsGrace(self, registry):
        yield addHealthy(registry, "w1")
        yield registry.assign(request("x"), 0)
        a = yield registry.assign(request("a"), 1)
        b = yield registry.assign(request("b"), 2)
        yield registry.abandon("a", a.ticket, 3, keep_place_until=20)
        yield registry.abandon("a", a.ticket, 3, keep_place_until=15)  # the later one holds
        yield registry.abandon("b", "not-b's", 3, keep_place_until=15)  # not its holder
        yield registry.touchTickets([b.ticket], 20)
        assert (yield registry.expireTickets(20, 60)) == 0
        assert (yield registry.expireTickets(20.5, 60)) == 1
        assert (yield registry.queueStatus(["a"], 21)).places == (None,)
        again = yield registry.assign(request("a"), 21)
        assert again.ticket != a.ticket and again == Queued(again.ticket, 1)

    @pytest_twisted.inlineCallbacks
    def test_onlyTheTicketsHolderLetsItGo(self, registry):
        """
        A key back within its grace takes its ticket up with a new request;
        the old request's abandon, retried late, leaves it alone.
        """
        yield addHealthy(registry, "w1")
        yield registry.assign(request("x"), 0)
        a = yield registry.assign(request("a"), 1)
        yield registry.abandon("a", a.ticket, 2, keep_place_until=20)
        back = request("a")
        assert (yield registry.assign(back, 3)) == Queued(a.ticket, 0)
        yield registry.abandon("a", a.ticket, 4, keep_place_until=20)
        assert (yield registry.queueStatus(["a"], 4)).places == (QueuePlace(a.ticket, 0, True),)
        yield registry.abandon("a", back.request_id, 5)  # no grace: it leaves at once
        assert (yield registry.queueStatus(["a"], 5)).places == (None,)

    @pytest_twisted.inlineCallbacks
    def test_touchHoldsAnAbandonedTicketAgain(self, registry):
        """Two handshakes held one key's ticket; one dropped: the other still holds it."""
        yield addHealthy(registry, "w1")
        yield registry.assign(request("x"), 0)
        a = yield registry.assign(request("a"), 1)
        yield registry.abandon("a", a.ticket, 1, keep_place_until=5)
        yield registry.touchTickets([a.ticket], 2)
        assert (yield registry.queueStatus(["a"], 2)).places == (QueuePlace(a.ticket, 0, True),)
        assert (yield registry.expireTickets(6, 60)) == 0

    @pytest_twisted.inlineCallbacks
    def test_queueStatus(self, registry):
        yield addHealthy(registry, "w1")
        yield registry.assign(request("x"), 0)
        a = yield registry.assign(request("a"), 1)
        b = yield registry.assign(request("b"), 2)
        status = yield registry.queueStatus(["b", "x", "nobody", "a"], 3)
        x = yield registry.getSession("x")
        assert status.length == 2
        assert status.places == (QueuePlace(b.ticket, 1, True), x, None,
                                 QueuePlace(a.ticket, 0, True))
        assert status.pace == QueuePace(served=0, over=0, starting=0, start_seconds=0)
        assert (yield registry.queueStatus([], 3)).places == ()

    @pytest_twisted.inlineCallbacks
    def test_queuePace(self, registry):
        """Queued sessions served, by 10 s buckets over 5 minutes; workers' start times."""
        yield registry.addWorker("w1", "ws://w1:1", "static", 3, 0)
        yield registry.addWorker("w2", "ws://w2:1", "static", 1, 4)
        yield registry.addWorker("w3", "ws://w3:1", "static", 1, 4)
        yield registry.setWorkerState("w1", HEALTHY, 3)
        yield registry.setWorkerState("w2", UNHEALTHY, 5)  # not from starting to healthy
        yield registry.setWorkerState("w2", HEALTHY, 6)
        status = yield registry.queueStatus([], 7)
        assert status.pace == QueuePace(served=0, over=0, starting=1, start_seconds=3)
        yield registry.setWorkerState("w3", HEALTHY, 13)
        assert (yield registry.queueStatus([], 14)).pace.start_seconds == 6
        for worker in ("w2", "w3"):
            yield registry.setWorkerState(worker, DEAD, 15)
        yield registry.assign(request("x", 3), 100)
        for now, key in [(101, "a"), (102, "b"), (103, "c"), (104, "d")]:
            yield registry.assign(request(key), now)
        yield registry.endSession("x")
        for now, key in [(105, "a"), (105, "b"), (107, "c")]:
            assert (yield registry.assign(request(key), now)).fresh
        yield registry.endSession("a")
        assert (yield registry.assign(request("d"), 118)).fresh
        status = yield registry.queueStatus([], 121)
        assert (status.pace.served, status.pace.over) == (4, 21)
        assert (yield registry.queueStatus([], 399)).pace.served == 4
        assert (yield registry.queueStatus([], 400)).pace.served == 1  # the 110 s bucket
        assert (yield registry.queueStatus([], 410)).pace == QueuePace(0, 0, 0, 6)

    @pytest_twisted.inlineCallbacks
    def test_queueListenersHearOfTicketsLeaving(self, registry, harness):
        yield addHealthy(registry, "w1")
        yield registry.assign(request("x"), 0)
        queue = Calls()
        registry.addQueueListener(queue)
        a = yield registry.assign(request("a"), 1)
        b = yield registry.assign(request("b"), 2)
        yield registry.abandon("b", b.ticket, 3, keep_place_until=9)
        yield harness.settle()
        assert queue.calls == []  # joining at the tail, or leaving for a while, moves no one
        yield registry.leaveQueue(a.ticket)
        yield harness.settle()
        assert queue.calls == [()]
        yield registry.expireTickets(10, 60)
        yield harness.settle()
        assert queue.calls == [(), ()]

    # -- overtaking (allow_overtake) ------------------------------------

    @pytest_twisted.inlineCallbacks
    def test_overtakePassesAHeadThatFitsNowhere(self, registry):
        yield addHealthy(registry, "w1", capacity=1000)
        yield registry.assign(request("a", 600), 1)
        head = yield registry.assign(request("b", 600), 2)
        behind = yield registry.assign(overtaking("c", 100), 3)
        assert (behind.worker.id, behind.fresh) == ("w1", True)
        strict = yield registry.assign(request("d", 100), 4)
        assert strict == Queued(strict.ticket, 1)  # without allow_overtake: FIFO
        passing = yield registry.assign(overtaking("d", 200, strict.ticket), 5)
        assert (passing.worker.id, passing.fresh) == ("w1", True)
        assert (yield registry.getWorker("w1")).load == 900
        assert (yield registry.queueInfo(5)) == QueueInfo(length=1, oldest_wait=3, demand=600)
        assert (yield registry.assign(request("b", 600, ticket=head.ticket), 6)) == head
        tooBig = yield registry.assign(overtaking("e", 200), 7)
        assert tooBig == Queued(tooBig.ticket, 1)

    @pytest_twisted.inlineCallbacks
    def test_noOvertakingAHeadThatFits(self, registry):
        yield addHealthy(registry, "w1", capacity=1000)
        yield registry.assign(request("a", 600), 1)
        head = yield registry.assign(request("b", 600), 2)
        yield registry.endSession("a")  # the head fits now, before it retried
        small = yield registry.assign(overtaking("c", 100), 3)
        assert small == Queued(small.ticket, 1)
        assert (yield registry.assign(request("b", 600, ticket=head.ticket), 4)).fresh
        assert (yield registry.assign(overtaking("c", 100, small.ticket), 5)).fresh

    @pytest_twisted.inlineCallbacks
    def test_overtakeWaitsForATicketAheadThatFits(self, registry):
        yield addHealthy(registry, "w1", capacity=1000)
        yield registry.assign(request("x", 600), 1)
        yield registry.assign(request("y", 300), 1)
        yield registry.assign(request("head", 1000), 2)
        ahead = yield registry.assign(overtaking("ahead", 200), 3)  # room 100: fits nowhere
        assert ahead == Queued(ahead.ticket, 1)
        yield registry.endSession("y")  # room 400: "ahead" fits
        late = yield registry.assign(overtaking("late", 100), 4)
        assert late == Queued(late.ticket, 2)
        assert (yield registry.assign(overtaking("ahead", 200, ahead.ticket), 5)).fresh
        assert (yield registry.assign(overtaking("late", 100, late.ticket), 6)).fresh
        assert (yield registry.getWorker("w1")).load == 900

    @pytest_twisted.inlineCallbacks
    def test_overtakesAreBoundedUntilTheHeadIsServed(self, registry):
        yield addHealthy(registry, "w1", capacity=1000)
        yield registry.assign(request("a", 500), 1)
        head = yield registry.assign(request("big", 1000), 2)
        for i in range(MAX_OVERTAKES):
            assert (yield registry.assign(overtaking(f"s{i}", 10), 3)).fresh
        late = yield registry.assign(overtaking("late", 10), 4)
        assert late == Queued(late.ticket, 1)  # fits, but the head was passed enough
        yield registry.endSession("a")
        assert (yield registry.assign(overtaking("late", 10, late.ticket), 5)) == late
        for i in range(MAX_OVERTAKES):
            yield registry.endSession(f"s{i}")
        assert (yield registry.assign(request("big", 1000, ticket=head.ticket), 6)).fresh
        # "late" heads the queue now and fits nowhere; it may be passed afresh.
        yield addHealthy(registry, "w2", capacity=5)
        newcomer = yield registry.assign(overtaking("newcomer", 5), 7)
        assert (newcomer.worker.id, newcomer.fresh) == ("w2", True)
        assert (yield registry.assign(overtaking("late", 10, late.ticket), 8)) == Queued(
            late.ticket, 0)

    # -- the fleet without reading it (indexes) --------------------------

    @pytest_twisted.inlineCallbacks
    def test_placementAmongMixedCapacities(self, registry, harness):
        """Pack: the highest load the cost fits in, whatever the capacity; spread: the lowest."""
        for worker_id, capacity in [("a", 100), ("b", 1000), ("c", 1000), ("d", 300)]:
            yield addHealthy(registry, worker_id, capacity)
        yield registry.assign(request("x", 90), 1)  # pack: all empty, lowest id: a
        yield registry.assign(request("y", 250, SPREAD), 1)  # spread: empty b
        assert [(w.id, w.load) for w in (yield registry.listWorkers())] == [
            ("a", 90), ("b", 250), ("c", 0), ("d", 0)]
        assert (yield registry.assign(request("p1", 10), 2)).worker.id == "b"  # 250 > 90
        assert (yield registry.assign(request("p2", 20), 2)).worker.id == "b"  # a has no room
        yield registry.assign(request("z", 280, SPREAD), 2)  # spread: c and d empty, c first
        assert (yield registry.assign(request("s1", 300, SPREAD), 3)).worker.id == "d"
        assert (yield registry.assign(request("s2", 700, PACK), 3)).worker.id == "b"
        assert (yield registry.assign(request("big", 720), 4)).worker.id == "c"  # only fit
        assert isinstance((yield registry.assign(request("huge", 800), 4)), Queued)
        yield checkFleetReads(registry, harness)

    @pytest_twisted.inlineCallbacks
    def test_packBreaksTiesByIdAcrossCapacities(self, registry, harness):
        for worker_id, capacity in [("w3", 10), ("w1", 20), ("w2", 10)]:
            yield addHealthy(registry, worker_id, capacity)
        picks = []
        for i in range(3):
            picks.append((yield registry.assign(request(f"k{i}", 5, SPREAD), 1)).worker.id)
        assert picks == ["w1", "w2", "w3"]  # equal loads: by id, capacities mixed
        assert (yield registry.assign(request("k3", 5), 1)).worker.id == "w1"
        yield checkFleetReads(registry, harness)

    @pytest_twisted.inlineCallbacks
    def test_placementFollowsEveryKindOfTransition(self, registry, harness):
        """
        Each change of a worker's state, draining flag, load or capacity
        moves it in or out of what assign chooses from, at once.
        """
        yield addHealthy(registry, "w1", capacity=10)
        yield addHealthy(registry, "w2", capacity=10)
        yield registry.assign(request("a", 5), 1)  # pack: w1 at 5

        @inlineCallbacks
        def nextPick(cost=1, placement=PACK):
            yield checkFleetReads(registry, harness)
            key = f"probe{len((yield registry.listSessions()))}-{cost}"
            result = yield registry.assign(request(key, cost, placement, max_queue=1), 2)
            if isinstance(result, Assigned):
                yield registry.endSession(key)  # leave the loads as they were
                return result.worker.id
            if isinstance(result, Queued):
                yield registry.leaveQueue(result.ticket)
            return None

        assert (yield nextPick()) == "w1"
        yield registry.setWorkerState("w1", UNHEALTHY, 3)  # health change
        assert (yield nextPick()) == "w2"
        yield registry.setWorkerState("w1", HEALTHY, 4)
        assert (yield nextPick()) == "w1"
        yield registry.setDraining("w1", True)  # drain
        assert (yield nextPick()) == "w2"
        yield registry.setDraining("w1", False)
        assert (yield nextPick(6)) == "w2"  # load: w1 has 5 room
        yield registry.endSession("a")  # session end
        assert (yield nextPick(10)) == "w1"
        yield registry.assign(request("b", 8), 5)
        yield registry.setWorkerState("w1", DEAD, 6)  # dead: its sessions go
        assert (yield nextPick(placement=SPREAD)) == "w2"
        yield registry.removeWorker("w1")  # removal
        yield registry.addWorker("w1", "ws://w1.test:9000", "static", 50, 7)  # capacity change
        assert (yield nextPick(20)) is None  # starting: not yet
        yield registry.setWorkerState("w1", HEALTHY, 8)
        assert (yield nextPick(20)) == "w1"
        assert (yield registry.claimIdleWorker("w1")) is True  # claimed for termination
        assert (yield nextPick(20)) is None
        yield registry.setWorkerState("w2", STARTING, 9)
        assert (yield nextPick()) is None
        yield checkFleetReads(registry, harness)

    @pytest_twisted.inlineCallbacks
    def test_countWorkersAndLargestCapacity(self, registry, harness):
        assert (yield registry.countWorkers()) == dict.fromkeys(WORKER_STATES, 0)
        assert (yield registry.largestCapacity()) == 0
        yield registry.addWorker("small", "ws://s:1", "static", 5, 0)
        yield registry.addWorker("large", "ws://l:1", "registered", 40, 0)
        yield registry.setWorkerState("small", HEALTHY, 1)
        assert (yield registry.countWorkers()) == {
            STARTING: 1, HEALTHY: 1, UNHEALTHY: 0, DEAD: 0}
        assert (yield registry.largestCapacity()) == 40
        yield registry.setWorkerState("large", DEAD, 2)  # a dead worker takes no cost
        assert (yield registry.largestCapacity()) == 5
        assert (yield registry.countWorkers())[DEAD] == 1
        yield registry.removeWorker("large")
        yield registry.removeWorker("small")
        assert (yield registry.largestCapacity()) == 0
        yield checkFleetReads(registry, harness)

    @pytest_twisted.inlineCallbacks
    def test_listWorkersInPages(self, registry):
        ids = [f"w{i:03}" for i in range(120)]
        for worker_id in reversed(ids):
            yield registry.addWorker(worker_id, "ws://h:1", "local", 1, 0)
        for worker_id in ids[::3]:
            yield registry.setWorkerState(worker_id, HEALTHY, 1)
        assert [w.id for w in (yield registry.listWorkers())] == ids
        page = yield registry.listWorkers(after="w009", limit=70)
        assert [w.id for w in page] == ids[10:80]
        assert (yield registry.listWorkers(after="w119")) == []
        assert [w.id for w in (yield registry.listWorkers(after="w05", limit=2))] == [
            "w050", "w051"]  # any string: the ids that sort after it
        healthy = yield registry.listWorkers(sessions=False, state=HEALTHY, after="w030")
        assert [w.id for w in healthy] == ids[33::3]
        assert all(w.sessions is None for w in healthy)

    @pytest_twisted.inlineCallbacks
    def test_listSessionsInPages(self, registry):
        yield addHealthy(registry, "w1", capacity=200)
        keys = [f"k{i:03}" for i in range(110)]
        for key in keys:
            yield registry.assign(request(key), 1)
        assert [s.key for s in (yield registry.listSessions())] == keys
        assert [s.key for s in (yield registry.listSessions(after="k049", limit=60))] == keys[50:]
        assert [s.key for s in (yield registry.listSessions(limit=3))] == keys[:3]

    # -- sessions -------------------------------------------------------

    @pytest_twisted.inlineCallbacks
    def test_releaseCountsConnectionsDown(self, registry):
        yield addHealthy(registry, "w1", capacity=1)
        yield registry.assign(request("a", instance="i1"), 1)
        yield registry.assign(request("a", instance="i2"), 2)
        session = yield registry.release("a", "i1", 3)
        assert (session.connections, session.disconnected_at) == (1, None)
        session = yield registry.release("a", "i2", 4)
        assert (session.connections, session.disconnected_at, session.connected) == (0, 4, False)
        again = yield registry.assign(request("a"), 5)
        assert (again.fresh, again.worker.id) == (False, "w1")
        assert (yield registry.getSession("a")).disconnected_at is None
        assert (yield registry.release("nope", "i1", 5)) is None

    @pytest_twisted.inlineCallbacks
    def test_releaseIgnoresAnInstanceWithoutConnections(self, registry):
        yield addHealthy(registry, "w1", capacity=1)
        yield registry.assign(request("a", instance="i1"), 1)
        session = yield registry.release("a", "i2", 2)
        assert (session.connections, session.disconnected_at) == (1, None)

    # -- request ids: what keeps a registry call with an unknown outcome safe to repeat

    @pytest_twisted.inlineCallbacks
    def test_aRequestIdIsCountedOnce(self, registry):
        yield addHealthy(registry, "w1", capacity=1)
        first = request("a")
        assigned = yield registry.assign(first, 1)
        again = yield registry.assign(first, 2)  # a retry after an answer that was lost
        assert (assigned.fresh, again.fresh, again.worker.id) == (True, True, "w1")
        assert (yield registry.getSession("a")).connections == 1
        other = yield registry.assign(request("a"), 3)
        assert other.fresh is False
        assert (yield registry.getSession("a")).connections == 2

    @pytest_twisted.inlineCallbacks
    def test_aReleaseByRequestIdCountsOnce(self, registry):
        yield addHealthy(registry, "w1", capacity=1)
        one, two = request("a"), request("a", instance="i2")
        yield registry.assign(one, 1)
        yield registry.assign(two, 1)
        for _ in range(2):  # retried after an unknown outcome
            session = yield registry.release("a", "i1", 2, one.request_id)
            assert (session.connections, session.disconnected_at) == (1, None)
        yield registry.release("a", "i2", 3, one.request_id)  # released already: nothing
        assert (yield registry.getSession("a")).connections == 1
        session = yield registry.release("a", "i2", 4, two.request_id)
        assert (session.connections, session.disconnected_at) == (0, 4)

    @pytest_twisted.inlineCallbacks
    def test_abandonEndsTheSessionItsAssignBoundForNobody(self, registry, harness):
        yield addHealthy(registry, "w1", capacity=1)
        lost = request("a")
        yield registry.assign(lost, 1)
        capacity, ended = yield listen(registry, harness)
        assert (yield registry.abandon("a", lost.request_id, 2)) is None
        assert (yield registry.getSession("a")) is None  # ended, not in its grace
        worker = yield registry.getWorker("w1")
        assert (worker.load, worker.sessions, worker.idle_since) == (0, (), 2)
        yield harness.settle()
        assert ended.calls == [("a",)] and capacity.calls
        assert (yield registry.abandon("a", lost.request_id, 3)) is None  # idempotent
        assert isinstance((yield registry.assign(lost, 4)), Abandoned)
        assert (yield registry.countSessions()) == 0
        yield harness.audit()

    @pytest_twisted.inlineCallbacks
    def test_anAssignThatRunsAfterItsAbandonDoesNothing(self, registry):
        yield addHealthy(registry, "w1", capacity=1)
        late = request("a")
        assert (yield registry.abandon("a", late.request_id, 1)) is None
        assert isinstance((yield registry.assign(late, 2)), Abandoned)
        assert (yield registry.getSession("a")) is None
        assert (yield registry.queueInfo(2)).length == 0
        assert (yield registry.assign(request("a"), 3)).fresh is True  # another request

    @pytest_twisted.inlineCallbacks
    def test_abandonLeavesASessionSomeoneHolds(self, registry):
        yield addHealthy(registry, "w1", capacity=1)
        lost, kept = request("a"), request("a", instance="i2")
        yield registry.assign(lost, 1)
        yield registry.assign(kept, 2)
        session = yield registry.abandon("a", lost.request_id, 3)
        assert (session.connections, session.disconnected_at) == (1, None)
        assert (yield registry.getSession("a")) == session

    @pytest_twisted.inlineCallbacks
    def test_abandonOfAConnectionToAnOlderSessionStartsItsGrace(self, registry):
        yield addHealthy(registry, "w1", capacity=1)
        first = request("a")
        yield registry.assign(first, 1)
        yield registry.release("a", "i1", 2, first.request_id)
        lost = request("a")
        assert (yield registry.assign(lost, 3)).fresh is False
        session = yield registry.abandon("a", lost.request_id, 4)
        assert (session.connections, session.disconnected_at) == (0, 4)  # its user may come back
        assert (yield registry.getSession("a")) == session

    @pytest_twisted.inlineCallbacks
    def test_abandonTakesTheTicketItsAssignQueued(self, registry, harness):
        yield addHealthy(registry, "w1", capacity=1)
        yield registry.assign(request("holder"), 1)
        lost, behind = request("a"), request("b")
        queued = yield registry.assign(lost, 2)
        assert queued.ticket == lost.request_id
        yield registry.assign(behind, 3)
        yield registry.abandon("a", lost.request_id, 4)
        info = yield registry.queueInfo(5)
        assert (info.length, info.demand) == (1, 1)
        yield registry.endSession("holder")
        served = yield registry.assign(
            dataclasses.replace(behind, ticket=behind.request_id), 6)
        assert isinstance(served, Assigned)
        yield harness.audit()

    @pytest_twisted.inlineCallbacks
    def test_reconcileCountsOutWhatTheInstanceNoLongerHolds(self, registry):
        yield addHealthy(registry, "w1", capacity=10)
        relayed, lostRelease, otherInstance = request("a"), request("a"), request("a", instance="i2")
        for r in (relayed, lostRelease, otherInstance):
            yield registry.assign(r, 1)
        gone = request("b")
        yield registry.assign(gone, 1)
        held = {"a": [relayed.request_id], "c": ["not-counted"]}
        assert (yield registry.reconcile("i1", held, 5)) == ["a", "b"]
        a = yield registry.getSession("a")
        b = yield registry.getSession("b")
        assert (a.connections, b.connections, b.disconnected_at) == (2, 0, 5)
        assert (yield registry.reconcile("i1", held, 6)) == []
        assert (yield registry.getSession("c")) is None  # held but unknown: not made up
        yield registry.release("a", "i1", 7, lostRelease.request_id)  # the lost one, late
        assert (yield registry.getSession("a")).connections == 2

    @pytest_twisted.inlineCallbacks
    def test_reconcileOverManySessions(self, registry, harness):
        """More sessions than a page of any listing: every one is reconciled."""
        yield addHealthy(registry, "w1", capacity=200)
        requests = [request(f"k{i:03}") for i in range(130)]
        for r in requests:
            yield registry.assign(r, 1)
        lost = {r.key for r in requests[::9]}
        held = {r.key: [r.request_id] for r in requests if r.key not in lost}
        assert (yield registry.reconcile("i1", held, 5)) == sorted(lost)
        sessions = yield registry.listSessions()
        assert {s.key for s in sessions if not s.connected} == lost
        assert (yield registry.reconcile("i1", held, 6)) == []
        yield harness.audit()

    @pytest_twisted.inlineCallbacks
    def test_expireSessionsEndsOnlyDisconnectedPastGrace(self, registry, harness):
        yield addHealthy(registry, "w1", capacity=10)
        for key in ["old", "recent", "twice", "live"]:
            yield registry.assign(request(key), 1)
        yield registry.assign(request("twice"), 1)
        yield registry.release("old", "i1", 100)
        yield registry.release("recent", "i1", 150)
        yield registry.release("twice", "i1", 100)
        capacity, ended = yield listen(registry, harness)
        assert (yield registry.expireSessions(160, 60)) == ["old"]
        assert [s.key for s in (yield registry.listSessions())] == ["live", "recent", "twice"]
        worker = yield registry.getWorker("w1")
        assert (worker.load, worker.sessions) == (3, ("live", "recent", "twice"))
        yield harness.settle()
        assert ended.calls == [("old",)]
        assert capacity.calls
        assert (yield registry.expireSessions(209, 60)) == []
        assert (yield registry.expireSessions(210, 60)) == ["recent"]

    @pytest_twisted.inlineCallbacks
    def test_endSessionFreesCapacity(self, registry, harness):
        yield addHealthy(registry, "w1", capacity=1)
        yield registry.assign(request("a"), 1)
        b = yield registry.assign(request("b"), 2)
        capacity, ended = yield listen(registry, harness)
        session = yield registry.endSession("a")
        assert (session.key, session.worker, session.cost) == ("a", "w1", 1)
        assert (yield registry.getSession("a")) is None
        worker = yield registry.getWorker("w1")
        assert (worker.load, worker.sessions) == (0, ())
        assert worker.idle_since is not None
        yield harness.settle()
        assert capacity.calls and ended.calls == [("a",)]
        assert (yield registry.assign(request("b", ticket=b.ticket), 3)).fresh
        assert (yield registry.endSession("a")) is None

    @pytest_twisted.inlineCallbacks
    def test_listSessionsOrderedByKey(self, registry):
        yield addHealthy(registry, "w1", capacity=10)
        for key in ["c", "a", "b"]:
            yield registry.assign(request(key), 1)
        assert [s.key for s in (yield registry.listSessions())] == ["a", "b", "c"]

    @pytest_twisted.inlineCallbacks
    def test_countSessionsCountsWhatListSessionsLists(self, registry):
        assert (yield registry.countSessions()) == 0
        yield addHealthy(registry, "w1", capacity=2)
        yield addHealthy(registry, "w2", capacity=10)
        for key in ["a", "b", "c"]:  # c finds w1 full: w2
            yield registry.assign(request(key), 1)
        yield registry.assign(request("c"), 2)  # a second connection: still one session
        assert (yield registry.countSessions()) == 3
        yield registry.endSession("a")
        yield registry.setWorkerState("w2", DEAD, 3)
        assert (yield registry.countSessions()) == len((yield registry.listSessions())) == 1

    @pytest_twisted.inlineCallbacks
    def test_countSessionsConnectedOrInTheirGrace(self, registry):
        yield addHealthy(registry, "w1", capacity=10)
        for key in ["a", "b", "c"]:
            yield registry.assign(request(key), 1)
        yield registry.assign(request("c", instance="i2"), 1)  # c: one connection each via two
        yield registry.release("a", "i1", 2)
        yield registry.release("c", "i1", 2)  # c keeps its connection via i2
        assert (yield countsOf(registry)) == (3, 2, 1)  # all, connected, in their grace
        listed = yield registry.listSessions()
        assert sorted(s.key for s in listed if not s.connected) == ["a"]
        yield registry.assign(request("a"), 3)  # back from its grace
        yield registry.release("b", "i1", 3)
        yield registry.release("c", "i2", 3)
        assert (yield countsOf(registry)) == (3, 1, 2)

    @pytest_twisted.inlineCallbacks
    def test_claimIdleWorkerOnlyWhenEmpty(self, registry):
        yield addHealthy(registry, "w1", capacity=2)
        yield registry.assign(request("a"), 1)
        assert (yield registry.claimIdleWorker("w1")) is False
        assert (yield registry.getWorker("w1")).sessions == ("a",)
        yield registry.endSession("a")
        assert (yield registry.claimIdleWorker("w1")) is True
        assert (yield registry.getWorker("w1")) is None
        assert isinstance((yield registry.assign(request("b"), 2)), Queued)

    @pytest_twisted.inlineCallbacks
    def test_removeWorkerDropsItsSessions(self, registry, harness):
        yield addHealthy(registry, "w1", capacity=10)
        yield registry.assign(request("b"), 1)
        yield registry.assign(request("a"), 1)
        _, ended = yield listen(registry, harness)
        assert (yield registry.removeWorker("w1")) == ["a", "b"]
        assert (yield registry.getWorker("w1")) is None
        assert (yield registry.listSessions()) == []
        yield harness.settle()
        assert sorted(ended.calls) == [("a",), ("b",)]

    # -- listeners ------------------------------------------------------

    @pytest_twisted.inlineCallbacks
    def test_listenersAreToldAfterTheCallNotDuringIt(self, registry, harness):
        yield addHealthy(registry, "w1", capacity=1)
        yield registry.assign(request("a"), 1)
        capacity, ended = yield listen(registry, harness)
        d = registry.endSession("a")
        assert (capacity.calls, ended.calls) == ([], [])
        yield d
        yield harness.settle()
        assert capacity.calls and ended.calls == [("a",)]

    @pytest_twisted.inlineCallbacks
    def test_capacityListenersToldWhenCapacityMayBeUsable(self, registry, harness):
        capacity, _ = yield listen(registry, harness)

        @inlineCallbacks
        def tells(call):
            capacity.calls.clear()
            yield call
            yield harness.settle()
            return bool(capacity.calls)

        assert (yield tells(registry.addWorker("w1", "ws://h:1", "local", 1, 0)))
        assert (yield tells(registry.setWorkerState("w1", HEALTHY, 1)))
        yield registry.setDraining("w1", True)
        assert (yield tells(registry.setDraining("w1", False)))

    @pytest_twisted.inlineCallbacks
    def test_aNewQueueHeadIsToldToRetry(self, registry, harness):
        yield addHealthy(registry, "w1", capacity=1000)
        yield registry.assign(request("a", 900), 1)
        b = yield registry.assign(request("b", 500), 2)
        c = yield registry.assign(request("c", 100), 3)
        d = yield registry.assign(request("d", 100), 4)
        capacity, _ = yield listen(registry, harness)
        yield registry.leaveQueue(b.ticket)
        yield harness.settle()
        assert capacity.calls
        capacity.calls.clear()
        assert (yield registry.assign(request("c", 100, ticket=c.ticket), 5)).fresh
        yield harness.settle()
        assert capacity.calls
        assert (yield registry.assign(request("d", 100, ticket=d.ticket), 6)) == Queued(d.ticket, 0)

    @pytest_twisted.inlineCallbacks
    def test_aFailingListenerSparesTheOthers(self, registry, harness):
        def broken():
            raise RuntimeError("listener bug")

        registry.addCapacityListener(broken)
        capacity, _ = yield listen(registry, harness)
        yield registry.addWorker("w1", "ws://h:1", "local", 1, 0)
        yield harness.settle()
        assert capacity.calls


def randomTrafficKeepsTheBooks(self, harness, placement, allowOvertake, steps):
    """
    Arrivals, retries, departures, drains, health changes and workers
    replaced by ones of another capacity agree with a simple model: no
    worker over capacity, loads are the sum of live sessions, placement
    picks as specified, a key that fits somewhere with an empty queue is
    never queued, and (with ``allowOvertake``) a key passes the queue
    exactly when no ticket ahead of it fits and the head was passed fewer
    than MAX_OVERTAKES times. After every step the fleet's counts, largest
    capacity and the registry's own bookkeeping (harness.audit) agree.
    """
    registry = yield harness.make()
    for worker_id in WORKERS:
        yield addHealthy(registry, worker_id, capacity=1000)
    tickets = []  # [ticket, key, cost, times passed] in arrival order
    sessions = {}  # key -> {"worker", "cost", "connections", "disconnected_at"}

    @inlineCallbacks
    def assignAndCheck(key, cost, now, ticket=None, position=None):
        workers = yield registry.listWorkers()
        result = yield registry.assign(
            request(key, cost, placement, ticket, allow_overtake=allowOvertake), now)
        if ticket is None:  # a key with a ticket queued takes it up
            position = next((i for i, t in enumerate(tickets) if t[1] == key), None)
            ticket = None if position is None else tickets[position][0]
        model = sessions.get(key)
        atHead = not tickets or position == 0
        ahead = tickets if position is None else tickets[:position]
        overtakes = (
            allowOvertake and not atHead and tickets[0][3] < MAX_OVERTAKES
            and all(pick(workers, t[2], placement) is None for t in ahead)
        )
        choice = pick(workers, cost, placement) if atHead or overtakes else None
        if model is not None:
            assert result == Assigned(result.worker, False)
            assert result.worker.id == model["worker"]
        elif choice is not None:
            assert result == Assigned(result.worker, True)
            assert result.worker.id == choice
            model = sessions[key] = {"worker": choice, "cost": cost, "connections": 0}
            if overtakes:
                tickets[0][3] += 1
        elif ticket is None:
            assert isinstance(result, Queued) and result.position == len(tickets)
            tickets.append([result.ticket, key, cost, 0])
            return
        else:
            assert result == Queued(ticket, position)
            return
        model["connections"] += 1
        model["disconnected_at"] = None
        if position is not None:
            del tickets[position]

    for now, (kind, *args) in enumerate(steps, start=1):
        if kind == "arrive":
            yield assignAndCheck(*args, now)
        elif kind == "retry" and tickets:
            position = args[0] % len(tickets)
            ticket, key, cost, _ = tickets[position]
            yield assignAndCheck(key, cost, now, ticket, position)
        elif kind == "leave" and tickets:
            yield registry.leaveQueue(tickets.pop(args[0] % len(tickets))[0])
        elif kind == "release":
            yield registry.release(args[0], "i1", now)
            model = sessions.get(args[0])
            if model and model["connections"]:
                model["connections"] -= 1
                if not model["connections"]:
                    model["disconnected_at"] = now
        elif kind == "end":
            ended = yield registry.endSession(args[0])
            model = sessions.pop(args[0], None)
            assert (ended is None) == (model is None)
        elif kind == "expire":
            due = sorted(
                key for key, m in sessions.items()
                if not m["connections"] and now - m["disconnected_at"] >= GRACE
            )
            assert (yield registry.expireSessions(now, GRACE)) == due
            for key in due:
                del sessions[key]
        elif kind == "drain":
            yield registry.setDraining(*args)
        elif kind == "health":
            worker_id, state = args
            yield registry.setWorkerState(worker_id, state, now)
            if state == DEAD:
                forgetSessionsOf(sessions, [worker_id])
        elif kind == "replace":
            worker_id, capacity = args
            yield registry.removeWorker(worker_id)
            forgetSessionsOf(sessions, [worker_id])
            yield addHealthy(registry, worker_id, capacity, now)
        yield checkBooks(registry, sessions, tickets, now)
        yield checkFleetReads(registry, harness)


def forgetSessionsOf(sessions, worker_ids):
    for key in [key for key, m in sessions.items() if m["worker"] in worker_ids]:
        del sessions[key]


@inlineCallbacks
def checkBooks(registry, sessions, tickets, now):
    """The registry's sessions, loads and queue agree with the model."""
    actual = yield registry.listSessions()
    assert (yield registry.countSessions()) == len(actual)
    assert {s.key: (s.worker, s.cost, s.connections) for s in actual} == {
        key: (m["worker"], m["cost"], m["connections"]) for key, m in sessions.items()
    }
    for worker in (yield registry.listWorkers()):
        mine = [s for s in actual if s.worker == worker.id]
        assert worker.load <= worker.capacity
        assert worker.load == sum(s.cost for s in mine)
        assert worker.sessions == tuple(s.key for s in mine)
        assert (worker.idle_since is None) == (worker.load > 0)
    info = yield registry.queueInfo(now)
    assert (info.length, info.demand) == (len(tickets), sum(t[2] for t in tickets))
