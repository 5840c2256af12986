"""
The timer wheel under keep-alive and idle timeouts, on a task.Clock: every
relay visited once per period, the relays spread over the period instead of
all in one reactor turn, joiners and leavers handled, none starved.
"""

import math
from collections import defaultdict

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from wslb.metrics import Traffic
from wslb.proxy.frames import CLOSE_POLICY, PING_TO_USER
from wslb.proxy.idle import IdleSweeper
from wslb.proxy.keepalive import KeepAlive
from wslb.proxy.sessions import LiveSessions
from wslb.proxy.splice import CLOSE_TIMEOUT, Splice
from wslb.proxy.wheel import TURN, TimerWheel
from wslb.registry.memory import MemoryRegistry
from wslb.timeouts import Timeouts


class Visits:
    """A wheel's visits: member -> the times it was visited, and how many each turn."""

    def __init__(self, clock):
        self.clock = clock
        self.times = defaultdict(list)
        self.perTurn = defaultdict(int)

    def __call__(self, member):
        now = self.clock.seconds()
        self.times[member].append(now)
        self.perTurn[now] += 1


@pytest.fixture
def clock():
    clock = Clock()
    yield clock
    assert clock.getDelayedCalls() == []  # every wheel below is stopped


def startedWheel(clock, period, visit):
    wheel = TimerWheel(clock, period, visit)
    wheel.startService()
    return wheel


def turnBy(clock, seconds, step=TURN):
    """Advance the clock as a reactor would: a turn at a time."""
    for _ in range(round(seconds / step)):
        clock.advance(step)


def test_each_member_is_visited_once_a_period_a_slot_at_a_time(clock):
    visits = Visits(clock)
    wheel = startedWheel(clock, 10.0, visits)
    slots = round(10.0 / TURN)
    members = [object() for _ in range(8000)]
    for turn in range(slots):  # users arriving over a period, 50 a turn
        for member in members[turn * 50:(turn + 1) * 50]:
            wheel.add(member)
        clock.advance(TURN)
    joined = clock.seconds()
    visits.perTurn.clear()
    turnBy(clock, 30.0)
    wheel.stopService()

    for member in members:
        times = [t for t in visits.times[member] if t > joined]
        assert len(times) == 3
        assert [round(b - a, 6) for a, b in zip(times, times[1:])] == [10.0, 10.0]
    assert len(visits.perTurn) == 3 * slots  # every turn visits some
    assert max(visits.perTurn.values()) == math.ceil(8000 / slots)  # 50, not 8,000


def test_members_joining_at_once_share_half_the_wheel(clock):
    visits = Visits(clock)
    wheel = startedWheel(clock, 10.0, visits)
    for _ in range(8000):
        wheel.add(object())
    turnBy(clock, 10.0)
    wheel.stopService()
    slots = round(10.0 / TURN)
    assert max(visits.perTurn.values()) == math.ceil(8000 / (slots / 2))  # 100
    assert min(visits.perTurn) > 5.0  # none visited within half a period of joining


def test_a_member_that_joins_is_visited_within_a_period_then_every_period(clock):
    visits = Visits(clock)
    wheel = startedWheel(clock, 2.0, visits)
    early = [object() for _ in range(100)]
    for member in early:
        wheel.add(member)
    turnBy(clock, 1.3)
    late = [object() for _ in range(100)]
    joined = clock.seconds()
    for member in late:
        wheel.add(member)
    turnBy(clock, 6.0)
    wheel.stopService()

    for member in late:
        first, *rest = visits.times[member]
        assert joined + 1.0 < first <= joined + 2.0  # not pinged just after opening
        assert [round(t - first, 6) for t in rest] == [2.0, 4.0][: len(rest)]
        assert len(rest) >= 2
    # Joiners take the far half's slots in turn: the wheel stays even.
    assert max(visits.perTurn.values()) <= 2 * math.ceil(200 / round(2.0 / TURN))


def test_a_member_that_leaves_is_visited_no_more(clock):
    visits = Visits(clock)
    wheel = startedWheel(clock, 1.0, visits)
    staying, leaving = object(), object()
    wheel.add(staying)
    wheel.add(leaving)
    turnBy(clock, 1.0)
    wheel.discard(leaving)
    wheel.discard(leaving)  # twice is harmless
    assert len(wheel) == 1
    turnBy(clock, 3.0)
    wheel.stopService()
    assert len(visits.times[leaving]) == 1
    assert len(visits.times[staying]) == 4


def test_a_visit_that_ends_another_member_of_its_slot_skips_it(clock):
    wheel = TimerWheel(clock, TURN, lambda member: None)  # one slot: all visited together
    visited = []

    def visit(member):
        visited.append(member)
        wheel.discard("second")  # as closing one relay may close another

    wheel._visit = visit
    wheel.startService()
    for member in ("first", "second", "third"):
        wheel.add(member)
    clock.advance(TURN)
    wheel.stopService()
    assert visited == ["first", "third"]


def test_after_a_late_reactor_each_member_is_visited_once_not_once_per_missed_turn(clock):
    visits = Visits(clock)
    wheel = startedWheel(clock, 1.0, visits)
    members = [object() for _ in range(40)]
    for member in members:
        wheel.add(member)
    clock.advance(2.55)  # the reactor was stuck for two and a half periods
    assert all(len(visits.times[m]) == 1 for m in members)
    turnBy(clock, 2.0)  # and the wheel goes on in step: each once per period
    wheel.stopService()
    for member in members:
        times = visits.times[member]
        assert len(times) == 3
        assert all(round(b - a, 6) <= 1.0 for a, b in zip(times[1:], times[2:]))


def test_churn_starves_no_member(clock):
    """Members joining and leaving all the time: each one present is visited every period."""
    visits = Visits(clock)
    wheel = startedWheel(clock, 1.0, visits)
    resident = [("resident", i) for i in range(50)]
    for member in resident:
        wheel.add(member)
    passing = []
    for turn in range(round(10.0 / TURN)):  # one joins and one leaves every turn
        passing.append(("passing", turn))
        wheel.add(passing[-1])
        if len(passing) > 30:
            wheel.discard(passing.pop(0))
        clock.advance(TURN)
    wheel.stopService()
    for member in resident:
        times = visits.times[member]
        assert len(times) == 10
        assert {round(b - a, 6) for a, b in zip(times, times[1:])} == {1.0}


def test_a_visit_that_fails_does_not_stop_the_others(clock):
    def visit(member):
        if member == "bad":
            raise RuntimeError("broken relay")
        visited.append(member)

    visited = []
    wheel = startedWheel(clock, TURN, visit)
    for member in ("bad", "good"):
        wheel.add(member)
    clock.advance(TURN)
    clock.advance(TURN)
    wheel.stopService()
    assert visited == ["good", "good"]


def test_a_stopped_wheel_leaves_no_timer(clock):
    wheel = startedWheel(clock, 1.0, lambda member: None)
    wheel.add("member")
    clock.advance(0.5)
    wheel.stopService()
    # (the clock fixture checks that no delayed call is left)


# The wheels of makeProxy.


class FakeGate:
    def __init__(self):
        self.hits = []

    def limitHit(self, limit):
        self.hits.append(limit)


class Leg:
    """What a Splice takes from a finished handshake."""

    def __init__(self, key):
        self.key = key
        self.cost = 1
        self.placement = None
        self.requestId = f"r-{key}"
        self.counted = None
        self.transport = StringTransport()


class Context:
    def __init__(self, clock):
        self.clock = clock
        self.closeTimers = Timeouts(clock, CLOSE_TIMEOUT)
        self.gate = FakeGate()
        self.traffic = Traffic()
        self.maxMessageSize = 1 << 20
        self.endCloseCode = 4000


def splices(clock, count):
    context = Context(clock)
    return context, [Splice(Leg(f"k{i}"), Leg(f"w{i}"), context) for i in range(count)]


def pings(splice):
    return splice.toWorker.transport.value().count(PING_TO_USER)


def test_keep_alive_pings_each_relay_once_an_interval_spread_over_it(clock):
    _, relays = splices(clock, 2000)
    keepAlive = KeepAlive(clock, 10.0)
    keepAlive.startService()
    for relay in relays:
        keepAlive.add(relay)
    pingedAt = defaultdict(int)
    seen = {relay: 0 for relay in relays}
    for _ in range(round(10.0 / TURN)):
        clock.advance(TURN)
        for relay in relays:
            if pings(relay) != seen[relay]:
                seen[relay] = pings(relay)
                pingedAt[clock.seconds()] += 1
    keepAlive.stopService()
    assert set(seen.values()) == {1}  # each user pinged once in the interval
    # All opened at once: they share the far half of the wheel, 25 at a time.
    assert max(pingedAt.values()) == math.ceil(2000 / (round(10.0 / TURN) / 2))


def test_keep_alive_still_drops_a_side_that_did_not_answer_the_previous_ping(clock):
    context, (silent, polite) = splices(clock, 2)
    keepAlive = KeepAlive(clock, 1.0)
    keepAlive.startService()
    for relay in (silent, polite):
        keepAlive.add(relay)
    turnBy(clock, 1.0)
    assert pings(silent) == pings(polite) == 1
    polite.toWorker.dataReceived(b"\x8a\x80abcd")  # the user's (masked, empty) pong
    polite.toUser.dataReceived(b"\x8a\x00")  # the worker's
    turnBy(clock, 1.0)
    keepAlive.stopService()
    assert silent.toWorker.transport.disconnecting  # aborted: both sides were silent
    assert silent.toUser.transport.disconnecting
    assert not polite.toWorker.transport.disconnecting
    assert pings(polite) == 2
    assert context.gate.hits == ["auto_ping", "auto_ping"]
    context.closeTimers.cancelAll()


class IdleRelay:
    def __init__(self, sweeper):
        self.activity = 0
        self.closed = []
        self._sweeper = sweeper

    def closeWith(self, code, reason):
        self.closed.append((code, reason))
        self._sweeper.discard(self)  # as LiveSessions.closed does once it is closed


def test_idle_sweep_closes_the_silent_within_a_look_of_the_timeout_spread_over_it(clock):
    hits = []
    sweeper = IdleSweeper(clock, 8.0, hits.append)  # looks every 2 s, 32 slots
    sweeper.startService()
    silent = [IdleRelay(sweeper) for _ in range(400)]
    chatty = [IdleRelay(sweeper) for _ in range(400)]
    for relay in silent + chatty:
        sweeper.add(relay)
    closedAt = {}
    for _ in range(round(12.0 / TURN)):
        clock.advance(TURN)
        for relay in chatty:
            relay.activity += 1
        for relay in silent:
            if len(relay.closed) == 1 and relay not in closedAt:
                closedAt[relay] = clock.seconds()
    sweeper.stopService()
    assert all(relay.closed == [(CLOSE_POLICY, "idle timeout")] for relay in silent)
    assert all(9.0 < when <= 10.0 for when in closedAt.values())  # first look after 1-2 s
    perTurn = defaultdict(int)
    for when in closedAt.values():
        perTurn[when] += 1
    assert max(perTurn.values()) == math.ceil(400 / (round(2.0 / TURN) / 2))  # 25 at a time
    assert not any(relay.closed for relay in chatty)
    assert hits == ["idle_timeout"] * 400


def test_idle_sweep_forgets_relays_that_closed(clock):
    sweeper = IdleSweeper(clock, 4.0, lambda limit: None)
    sweeper.startService()
    relay = IdleRelay(sweeper)
    sweeper.add(relay)
    turnBy(clock, 1.0)
    sweeper.discard(relay)
    sweeper.stopService()
    assert len(sweeper) == 0 and sweeper._seen == {}


def test_live_sessions_hand_each_relay_to_the_wheels_while_it_is_open(clock):
    sessions = LiveSessions(MemoryRegistry(clock), clock, "i1", 60.0, 4000)
    before = object()
    sessions.opened("k0", before)
    wheel = TimerWheel(clock, 1.0, lambda relay: None)
    sessions.visitEach(wheel)
    assert len(wheel) == 1  # the relays already open too
    relay = object()
    sessions.opened("k1", relay)
    assert len(wheel) == 2
    sessions.closed("k1", relay)
    sessions.closed("k0", before)
    assert len(wheel) == 0
