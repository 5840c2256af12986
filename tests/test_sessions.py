"""
LiveSessions' reconnect graces, driven by a task.Clock against the memory
registry: one timer for every grace, sessions ended when theirs runs out,
kept when their user came back.
"""

import pytest
import pytest_twisted
from registry_contract import addHealthy, request
from twisted.internet.task import Clock

from wslb.proxy.sessions import LiveSessions
from wslb.registry.memory import MemoryRegistry

GRACE = 300.0


@pytest_twisted.inlineCallbacks
def assignAndRelease(registry, sessions, key, now):
    assigned = request(key)
    yield registry.assign(assigned, now)
    yield sessions.release(key, assigned.request_id)


@pytest.fixture
def graces():
    """(clock, registry with one large worker, running LiveSessions)."""
    clock = Clock()
    registry = MemoryRegistry(clock)
    addHealthy(registry, "w1", capacity=1000)  # the memory registry answers at once
    sessions = LiveSessions(registry, clock, "i1", GRACE, 4000)
    sessions.startService()
    yield clock, registry, sessions
    sessions.stopService()
    assert clock.getDelayedCalls() == []


@pytest_twisted.inlineCallbacks
def test_one_timer_ends_every_grace_in_turn_and_spares_returning_users(graces):
    clock, registry, sessions = graces
    for i in range(100):  # released one second apart
        yield assignAndRelease(registry, sessions, f"k{i}", clock.seconds())
        clock.advance(1)
    assert len(clock.getDelayedCalls()) == 1  # not one per session

    yield registry.assign(request("k70"), clock.seconds())  # k70's user is back
    sessions.opened("k70", object())
    clock.advance(GRACE - 100 + 9.5)  # the first ten graces ran out
    left = {s.key for s in (yield registry.listSessions())}
    assert left == {f"k{i}" for i in range(10, 100)}

    clock.advance(100)  # all of them
    assert {s.key for s in (yield registry.listSessions())} == {"k70"}
    assert clock.getDelayedCalls() == []


@pytest_twisted.inlineCallbacks
def test_a_session_released_again_gets_a_fresh_grace(graces):
    clock, registry, sessions = graces
    yield assignAndRelease(registry, sessions, "k", clock.seconds())
    clock.advance(GRACE / 2)
    sessions.opened("k", object())  # back, then gone again
    yield assignAndRelease(registry, sessions, "k", clock.seconds())
    clock.advance(GRACE / 2 + 1)  # the first grace's deadline: not this one's
    assert [s.key for s in (yield registry.listSessions())] == ["k"]
    clock.advance(GRACE / 2)
    assert (yield registry.listSessions()) == []
