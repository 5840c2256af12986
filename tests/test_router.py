"""
The Router on a task.Clock, over the real memory registry reached through
a RegistryLink (answers at once, or a round trip later): who is served
when capacity frees, in which order, and what a handshake that leaves
gives back. One worker, "w1"; every handshake costs 1 unless it says.
"""

import itertools

import pytest
from _registry_link import RegistryLink
from registry_contract import addHealthy
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from wslb.metrics import Metrics
from wslb.proxy.errors import HandshakeRefused, unavailable
from wslb.proxy.held import Held
from wslb.proxy.router import HEARTBEAT, Router
from wslb.registry import PACK, Assigned, AssignRequest
from wslb.registry.memory import MemoryRegistry

INSTANCE = "i1"
QUEUE_TIMEOUT = 3.0
LATENCY = 0.01  # a registry round trip, where the test needs one


class Queue:
    """A started Router over a MemoryRegistry with one healthy worker of ``capacity``."""

    def __init__(self, capacity, allowOvertake=False, rejoinGrace=0.0, maxQueue=10):
        self.clock = Clock()
        self.registry = MemoryRegistry(self.clock)
        addHealthy(self.registry, "w1", capacity)
        self.link = RegistryLink(self.registry, self.clock)
        self.metrics = Metrics()
        self.held = Held(self.link, self.clock, INSTANCE, lambda session: None)
        self.router = Router(self.link, self.clock, INSTANCE, PACK, maxQueue, QUEUE_TIMEOUT,
                             unavailable, self.metrics, self.held, allowOvertake, rejoinGrace)
        self.router.startService()
        self.routed = []
        self._ids = itertools.count(1)

    def route(self, key, cost=1):
        """A handshake of ``key`` (a new request id): the Deferred of its L{Assigned}."""
        self.routed.append(self.router.route(key, cost, f"r{next(self._ids)}"))
        return self.routed[-1]

    def occupy(self, key, cost=1):
        """A session of another instance's user on w1 (it never queues here)."""
        assigned = outcome(self.registry.assign(
            AssignRequest(key, cost, "i2", request_id=f"{key}@i2"), self.clock.seconds()))
        assert isinstance(assigned, Assigned)

    def end(self, key):
        """End ``key``'s session, and deliver the capacity notice it gives."""
        outcome(self.registry.endSession(key))
        self.clock.advance(0)

    def load(self):
        return outcome(self.registry.getWorker("w1")).load

    def queued(self):
        return outcome(self.registry.queueInfo(self.clock.seconds())).length

    def stop(self):
        self.router.stopService()
        for routed in self.routed:
            routed.addErrback(lambda f: f.trap(HandshakeRefused, CancelledError))
        self.clock.advance(HEARTBEAT)
        assert self.clock.getDelayedCalls() == []


@pytest.fixture
def queue():
    """queue(capacity, **Router options) -> a L{Queue}, stopped after the test."""
    made = []

    def make(capacity, **options):
        made.append(Queue(capacity, **options))
        return made[-1]

    yield make
    for q in made:
        q.stop()


def outcome(d):
    """What ``d`` fired with (raised, for a failure); it must have fired."""
    fired = []
    d.addBoth(fired.append)
    assert fired, "not fired yet"
    if isinstance(fired[0], Failure):
        fired[0].raiseException()
    return fired[0]


def workerOf(d):
    """The worker the handshake ``d`` was routed to."""
    return outcome(d).worker.id


# --- the queue's order -----------------------------------------------------------


def test_waiters_are_served_oldest_first_as_capacity_frees(queue):
    q = queue(1)
    q.occupy("other")
    a, b, c = q.route("a"), q.route("b"), q.route("c")
    assert (q.router.waiting, q.queued()) == (3, 3)
    q.end("other")
    assert workerOf(a) == "w1" and not b.called and not c.called
    q.end("a")
    assert b.called and not c.called
    q.end("b")
    assert c.called and q.router.waiting == 0 and q.queued() == 0


def test_capacity_notices_during_a_round_make_one_more_round(queue):
    """A round under way is not run twice at once; the notices it missed make one more."""
    q = queue(1)
    q.occupy("other")
    q.link.latency = LATENCY
    a = q.route("a")
    q.clock.advance(LATENCY)
    assert q.router.waiting == 1
    sent = q.link.sent.count("assign")
    q.router.retry()  # a round: its assign finds w1 still full, its answer on the way
    q.registry.endSession("other")  # capacity, while that answer is on the way
    q.clock.advance(0)  # the notice
    q.router.retry()
    q.router.retry()
    assert q.link.sent.count("assign") == sent + 1  # no second round at once
    q.clock.advance(LATENCY)  # Queued: the round ends, and one more starts
    assert q.link.sent.count("assign") == sent + 2 and not a.called
    q.clock.advance(LATENCY)
    assert workerOf(a) == "w1"
    q.clock.pump([LATENCY] * 10)
    assert q.link.sent.count("assign") == sent + 2  # and no more


def test_handshakes_of_one_key_share_its_ticket_and_then_its_session(queue):
    """A user's retry while its first handshake still waits: one ticket, one session."""
    q = queue(1)
    q.occupy("other")
    first, retried, b = q.route("a"), q.route("a"), q.route("b")
    assert q.queued() == 2 and q.router.waiting == 3
    q.end("other")
    assert (outcome(first).fresh, outcome(retried).fresh) == (True, False)
    assert outcome(q.registry.getSession("a")).connections == 2
    assert q.load() == 1 and not b.called  # counted once on w1: b still waits
    assert q.held.byKey() == {"a": ["r1", "r2"], "b": ["r3"]}


def test_a_user_back_within_the_rejoin_grace_keeps_its_place(queue):
    q = queue(1, rejoinGrace=30.0)
    q.occupy("other")
    a, b = q.route("a"), q.route("b")
    a.cancel()  # the user left
    assert q.queued() == 2  # a's ticket keeps its place
    q.clock.advance(2)  # within the grace (and b's queue timeout)
    back = q.route("a")
    q.end("other")
    assert workerOf(back) == "w1" and not b.called


# --- overtaking -------------------------------------------------------------------


def test_without_overtaking_a_later_handshake_waits_behind_a_head_that_fits_nowhere(queue):
    q = queue(2)
    q.occupy("other")  # w1 has room for 1
    big = q.route("big", cost=2)
    small = q.route("small")
    assert not small.called and q.queued() == 2  # it would fit, but the head goes first
    q.router.retry()
    q.clock.advance(0)
    assert not small.called and not big.called
    q.end("other")
    assert workerOf(big) == "w1" and not small.called


def test_with_overtaking_a_smaller_handshake_goes_where_the_head_does_not_fit(queue):
    q = queue(2, allowOvertake=True)
    q.occupy("other")  # w1 has room for 1
    big = q.route("big", cost=2)
    assert workerOf(q.route("small")) == "w1"  # a new handshake passes the head
    late = q.route("late")  # w1 full: it queues behind big
    assert not late.called and q.queued() == 2
    q.end("small")  # room for 1 again: the round passes big over, and serves late
    assert workerOf(late) == "w1" and not big.called
    q.end("late")
    q.end("other")
    assert workerOf(big) == "w1"


def test_with_overtaking_nobody_passes_a_head_that_fits(queue):
    q = queue(1, allowOvertake=True)
    q.occupy("other")
    a = q.route("a")
    q.registry.endSession("other")  # the notice not delivered yet
    b = q.route("b")  # arrives first: a fits, so b may not pass it
    assert not b.called
    q.clock.advance(0)
    assert workerOf(a) == "w1" and not b.called


# --- leaving, timing out, stopping ---------------------------------------------------


def test_a_handshake_that_leaves_while_its_assign_is_answered_frees_the_slot(queue):
    q = queue(1)
    q.link.latency = LATENCY
    a = q.route("a")
    assert q.load() == 1  # assigned in the registry, the answer on its way
    a.cancel()  # the user leaves
    q.clock.advance(LATENCY)
    assert a.called and q.load() == 0
    assert outcome(q.registry.getSession("a")) is None and q.held.byKey() == {}
    assert q.metrics.registryErrors._value.get() == 0  # a user leaving is no registry error
    b = q.route("b")
    q.clock.advance(LATENCY)
    assert workerOf(b) == "w1"


def test_a_waiter_that_leaves_while_its_turn_is_assigned_frees_the_slot_for_the_next(queue):
    q = queue(1)
    q.occupy("other")
    q.link.latency = LATENCY
    a, b = q.route("a"), q.route("b")
    q.clock.advance(LATENCY)
    q.end("other")  # a's turn: its assign runs, the answer on its way
    assert q.load() == 1 and outcome(q.registry.getSession("a")).worker == "w1"
    a.cancel()
    assert q.router.waiting == 1 and q.load() == 0  # its abandon undid the assign
    q.clock.pump([LATENCY] * 2)  # a's answer comes, and is dropped: b's turn
    assert workerOf(b) == "w1"
    assert outcome(q.registry.getSession("a")) is None
    assert q.held.byKey() == {"b": ["r2"]}


def test_a_wait_past_the_queue_timeout_is_refused_and_leaves_the_queue(queue):
    q = queue(1)
    q.occupy("other")
    a = q.route("a")
    q.clock.pump([HEARTBEAT] * int(QUEUE_TIMEOUT / HEARTBEAT - 1))
    assert not a.called
    q.clock.advance(HEARTBEAT)
    with pytest.raises(HandshakeRefused) as refused:
        outcome(a)
    assert refused.value.code == 503 and ("Retry-After", "3") in refused.value.headers
    assert q.queued() == 0 and q.held.byKey() == {}
    assert q.metrics.limitHits.labels("queue_timeout")._value.get() == 1


def test_a_full_queue_refuses_at_once(queue):
    q = queue(1, maxQueue=1)
    q.occupy("other")
    q.route("a")
    with pytest.raises(HandshakeRefused) as refused:
        outcome(q.route("b"))
    assert refused.value.code == 503 and q.held.byKey() == {"a": ["r1"]}


def test_stopping_refuses_the_waiters_and_gives_their_tickets_up(queue):
    q = queue(1)
    q.occupy("other")
    a = q.route("a")
    q.router.stopService()
    with pytest.raises(HandshakeRefused) as refused:
        outcome(a)
    assert "shutting down" in refused.value.reason
    assert q.queued() == 0 and q.held.byKey() == {}
