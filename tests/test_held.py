"""
Registry calls whose outcome is unknown (issue 12, item 4), driven by a
Clock against the memory registry behind a stalling link (_registry_link):
a call made while the link is stalled fails at once for its caller (as a
Redis call does at its timeout), and runs later, in order, when the link
comes back (as Redis runs a connection's commands once it is resumed).
"""

import pytest
import pytest_twisted
from _registry_link import CALL_TIMEOUT, RegistryLink
from registry_contract import addHealthy, request
from twisted.internet import defer
from twisted.internet.task import Clock

from wslb.metrics import Metrics
from wslb.proxy.errors import HandshakeRefused, unavailable
from wslb.proxy.held import RETRY_DELAYS, RETRY_FOR
from wslb.proxy.router import Router
from wslb.proxy.sessions import LiveSessions
from wslb.registry.memory import MemoryRegistry

GRACE = 300.0


@pytest.fixture
def world():
    """(clock, the registry itself, the link to it, LiveSessions and Router over the link)."""
    clock = Clock()
    registry = MemoryRegistry(clock)
    addHealthy(registry, "w1", capacity=1)
    link = RegistryLink(registry, clock)
    sessions = LiveSessions(link, clock, "i1", GRACE, 4000)
    router = Router(link, clock, "i1", "pack", 10, 3.0, unavailable, Metrics(), sessions.held)
    sessions.startService()
    router.startService()
    yield clock, registry, link, sessions, router
    router.stopService()
    sessions.stopService()
    clock.advance(0)
    assert clock.getDelayedCalls() == []


@defer.inlineCallbacks
def refusedWhileStalled(clock, link, router, key, requestId):
    """Route ``key`` while the link is stalled: the user gets 503 at the call's timeout."""
    link.stalled = True
    routed = router.route(key, 1, requestId)
    clock.advance(CALL_TIMEOUT)
    with pytest.raises(HandshakeRefused) as refused:
        yield routed
    assert refused.value.code == 503


@pytest_twisted.inlineCallbacks
def test_an_assign_that_runs_after_its_caller_gave_up_is_undone(world):
    clock, registry, link, sessions, router = world
    yield refusedWhileStalled(clock, link, router, "a", "r1")
    link.resume()  # the assign runs now, then the abandon sent after it
    clock.advance(RETRY_DELAYS[0])
    assert (yield registry.getSession("a")) is None
    assert (yield registry.getWorker("w1")).load == 0
    assert sessions.held.byKey() == {}


@pytest_twisted.inlineCallbacks
def test_an_abandon_that_arrives_first_stops_its_assign(world):
    clock, registry, link, sessions, router = world
    yield refusedWhileStalled(clock, link, router, "a", "r1")
    link._queued.reverse()  # as if the assign came by a connection since lost
    link.resume()
    clock.advance(RETRY_DELAYS[0])
    assert (yield registry.getSession("a")) is None
    assert (yield registry.queueInfo(clock.seconds())).length == 0


@pytest_twisted.inlineCallbacks
def test_a_release_whose_answer_was_lost_counts_once(world):
    clock, registry, link, sessions, router = world
    assigned = yield router.route("a", 1, "r1")
    yield registry.assign(request("a", instance="i2"), clock.seconds())  # another user too
    assert assigned.fresh
    link.losing = True
    sessions.release("a", "r1")  # ran, answer lost
    link.losing = False
    clock.advance(RETRY_DELAYS[0])  # sent again: counts nothing more
    session = yield registry.getSession("a")
    assert (session.connections, sessions.held.byKey()) == (1, {})


def releasedWhileStalled(link, sessions, router):
    """Route "a" (request id r1), then release it while the link is stalled: its Deferred."""
    assert router.route("a", 1, "r1").called  # the link answers at once until stalled
    link.stalled = True
    return sessions.release("a", "r1")


@pytest_twisted.inlineCallbacks
def test_a_release_is_retried_until_answered_then_the_grace_starts(world):
    clock, registry, link, sessions, router = world
    released = releasedWhileStalled(link, sessions, router)
    clock.pump([CALL_TIMEOUT, *RETRY_DELAYS[:3]])
    assert sessions.held.byKey() == {"a": ["r1"]}
    link.resume()
    yield released
    assert sessions.held.byKey() == {}
    clock.advance(GRACE)  # this instance's grace timer ended it
    assert (yield registry.getSession("a")) is None


def test_a_release_unanswered_is_sent_again_ever_later(world):
    clock, registry, link, sessions, router = world
    releasedWhileStalled(link, sessions, router)
    sent = []
    for step in range(len(RETRY_DELAYS) + 2):
        sent.append(link.sent.count("release"))
        clock.advance(CALL_TIMEOUT)  # this attempt times out ...
        clock.advance(RETRY_DELAYS[min(step, len(RETRY_DELAYS) - 1)] - 0.01)
        assert link.sent.count("release") == sent[-1]  # ... and the next waits its delay
        clock.advance(0.01)
    assert sent == list(range(1, len(RETRY_DELAYS) + 3))
    link.resume()


@pytest_twisted.inlineCallbacks
def test_a_release_never_answered_is_left_to_reconcile(world):
    clock, registry, link, sessions, router = world
    releasedWhileStalled(link, sessions, router)
    clock.pump([RETRY_DELAYS[-1]] * int(RETRY_FOR / RETRY_DELAYS[-1] + 3))
    assert sessions.held.byKey() == {}  # given up: not held any more
    link.stalled = False
    clock.advance(CALL_TIMEOUT)
    link._queued.clear()  # every attempt lost for good
    assert (yield registry.getSession("a")).connections == 1
    assert (yield sessions.held.reconcile()) == ["a"]
    assert (yield registry.getSession("a")).connections == 0


@pytest_twisted.inlineCallbacks
def test_reconcile_spares_an_assign_still_under_way(world):
    clock, registry, link, sessions, router = world
    link.stalled = True
    routed = router.route("a", 1, "r1")  # held from before it is sent
    assert sessions.held.byKey() == {"a": ["r1"]}
    reconciled = sessions.held.reconcile()  # sent after the assign: runs after it
    link.resume()
    assert (yield reconciled) == []
    assigned = yield routed
    assert assigned.fresh and (yield registry.getSession("a")).connections == 1


@pytest_twisted.inlineCallbacks
def test_a_waiter_that_gives_up_has_its_ticket_and_any_assign_undone(world):
    clock, registry, link, sessions, router = world
    yield router.route("holder", 1, "r0")
    waiting = router.route("a", 1, "r1")
    assert (yield registry.queueInfo(clock.seconds())).length == 1
    link.stalled = True
    yield registry.endSession("holder")  # capacity: the retry's assign is stalled
    clock.advance(0)
    waiting.cancel()  # the user leaves meanwhile
    waiting.addErrback(lambda f: None)
    link.resume()
    clock.advance(RETRY_DELAYS[0])
    assert (yield registry.getSession("a")) is None
    assert (yield registry.queueInfo(clock.seconds())).length == 0
    assert (yield registry.getWorker("w1")).load == 0
