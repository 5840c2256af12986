"""
Timeouts of one length on one timer (wslb.timeouts), on a task.Clock: each
expires at its deadline unless cancelled, a thousand running ones cost one
DelayedCall, and ``bound`` fails a Deferred as ``addTimeout`` does.
"""

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from wslb.timeouts import Timeouts


@pytest.fixture
def clock():
    clock = Clock()
    yield clock
    assert clock.getDelayedCalls() == []


def test_each_timeout_expires_at_its_deadline_on_one_timer(clock):
    timeouts = Timeouts(clock, 2.0)
    expired = []
    for i in range(1000):
        timeouts.start(lambda i=i: expired.append((i, clock.seconds())))
        clock.advance(0.001)
    assert len(clock.getDelayedCalls()) == 1  # not one per timeout
    clock.advance(1.9995 - clock.seconds())
    assert expired == []  # just before the first deadline
    clock.advance(0.001)
    assert [i for i, _ in expired] == [0]
    for _ in range(1000):
        clock.advance(0.001)
    assert [i for i, _ in expired] == list(range(1000))
    assert all(abs(when - (2.0 + i * 0.001)) < 0.0006 for i, when in expired)


def test_a_cancelled_timeout_never_expires_and_the_timer_skips_it(clock):
    timeouts = Timeouts(clock, 1.0)
    expired = []
    first = timeouts.start(lambda: expired.append("first"))
    clock.advance(0.5)
    second = timeouts.start(lambda: expired.append("second"))
    first.cancel()
    assert not first.active() and second.active()
    clock.advance(0.5)  # first's deadline: nothing to do but wait for second's
    assert expired == []
    assert [round(c.getTime(), 6) for c in clock.getDelayedCalls()] == [1.5]
    clock.advance(0.5)
    assert expired == ["second"]
    assert not second.active()


def test_cancelled_timeouts_wake_the_timer_only_for_one_still_running(clock):
    """Connections whose timeouts are all cancelled in time: about one wake-up per length."""
    timeouts = Timeouts(clock, 1.0)
    wakeUps = 0
    due = timeouts._due

    def counted():
        nonlocal wakeUps
        wakeUps += 1
        due()

    timeouts._due = counted
    for _ in range(100):  # 10 s of connections, each done 50 ms after its timeout started
        timeout = timeouts.start(lambda: pytest.fail("expired"))
        clock.advance(0.05)
        timeout.cancel()
        clock.advance(0.05)
    clock.advance(1.0)
    assert wakeUps <= 11
    assert len(timeouts) == 0


def test_an_expiry_may_start_another_timeout(clock):
    timeouts = Timeouts(clock, 1.0)
    expired = []

    def again():
        expired.append(clock.seconds())
        if clock.seconds() < 3.0:
            timeouts.start(again)

    timeouts.start(again)
    timeouts.start(lambda: expired.append("other"))
    clock.advance(1.0)
    assert expired == [1.0, "other"]
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(1.0)
    clock.advance(1.0)
    assert expired == [1.0, "other", 2.0, 3.0]


def test_bound_fails_a_late_deferred_with_TimeoutError_as_addTimeout_does(clock):
    timeouts = Timeouts(clock, 1.0)
    cancelled = []
    late = defer.Deferred(lambda d: cancelled.append(True))
    timeouts.bound(late)
    failures = []
    late.addErrback(failures.append)
    clock.advance(1.0)
    assert cancelled == [True]
    assert failures[0].check(defer.TimeoutError)


def test_bound_passes_on_a_result_or_failure_in_time_and_stops_its_timeout(clock):
    timeouts = Timeouts(clock, 1.0)
    onTime = timeouts.bound(defer.Deferred())
    results = []
    onTime.addCallback(results.append)
    onTime.callback("answer")
    broken = timeouts.bound(defer.Deferred())
    broken.addErrback(lambda f: results.append(f.type))
    broken.errback(ValueError("broken"))
    cancelledByCaller = timeouts.bound(defer.Deferred())
    cancelledByCaller.addErrback(lambda f: results.append(f.type))
    cancelledByCaller.cancel()  # not a timeout: stays a CancelledError
    assert results == ["answer", ValueError, defer.CancelledError]
    clock.advance(1.0)  # the timer wakes once and finds nothing running
    assert len(timeouts) == 0


def test_cancel_all_leaves_no_timer(clock):
    timeouts = Timeouts(clock, 5.0)
    timeouts.start(lambda: pytest.fail("expired"))
    timeouts.cancelAll()
    clock.advance(10.0)


def test_cancelled_timeouts_are_forgotten_as_the_next_one_starts(clock):
    """A held connection's timeouts, all cancelled, do not wait for the timer to be dropped."""
    timeouts = Timeouts(clock, 10.0)
    for _ in range(1000):
        timeouts.start(lambda: pytest.fail("expired")).cancel()
    running = timeouts.start(lambda: None)
    assert len(timeouts) == 1
    late = timeouts.start(lambda: None)
    running.cancel()
    assert len(timeouts) == 2  # behind one still running: kept until it is done
    late.cancel()
    clock.advance(10.0)
    assert len(timeouts) == 0
