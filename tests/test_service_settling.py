"""
registryReady: the pool waits REGISTRY_SETTLE after Redis started empty,
asking Redis for the epoch's age on each tick only until it is that old,
and again once Redis may have lost its data (a restart, a flush).
"""

import uuid

import pytest
import pytest_twisted
from _polling import waitFor
from twisted.internet import defer
from twisted.internet.task import Clock

from wslb.registry.redis import RedisRegistry
from wslb.service import REGISTRY_SETTLE, registryReady

TICK = 1.0  # the pool's scale interval here
SETTLE_TICKS = int(REGISTRY_SETTLE / TICK)
TIMEOUT = 1.0  # the registry's, on the test's clock


class CountingRegistry(RedisRegistry):
    """The real Redis registry; it counts the epoch-age questions."""

    asked = 0

    def epochAge(self, now):
        self.asked += 1
        return super().epochAge(now)


def startedOn(url):
    """A registry on a fresh Clock (its epoch is set at the clock's 0), and the clock."""
    clock = Clock()
    registry = CountingRegistry(clock, url, uuid.uuid4().hex[:8], TIMEOUT)
    registry.startService()
    return registry, clock


@pytest_twisted.async_yield_fixture
async def started(redis_server):
    registry, clock = startedOn(redis_server.url)
    yield registry, clock
    await registry.stopService()


@defer.inlineCallbacks
def ticks(ready, clock, n):
    """What ``ready`` answered on each of ``n`` pool ticks, TICK apart."""
    answers = []
    for _ in range(n):
        answers.append((yield ready()))
        clock.advance(TICK)
    return answers


def settling(after):
    """The answers while a fresh epoch settles, then ``after`` more ticks."""
    return [False] * SETTLE_TICKS + [True] * (1 + after)


@pytest.mark.timeout(10)
@pytest_twisted.inlineCallbacks
def test_theEpochIsAskedOnlyUntilItIsOldEnough(started):
    registry, clock = started
    ready = registryReady(registry, clock)
    assert (yield ticks(ready, clock, SETTLE_TICKS + 10)) == settling(9)
    assert registry.asked == SETTLE_TICKS + 1  # none on the ten ticks after


@pytest.mark.timeout(10)
@pytest_twisted.inlineCallbacks
def test_aFlushSeenByTheUpkeepHeartbeatHoldsThePoolAgain(started, redis_server):
    registry, clock = started
    ready = registryReady(registry, clock)
    yield ticks(ready, clock, SETTLE_TICKS + 1)
    redis_server.flush()
    assert (yield registry.epochChanged())  # what the upkeep heartbeat asks each second
    asked = registry.asked
    assert (yield ticks(ready, clock, SETTLE_TICKS + 5)) == settling(4)
    assert registry.asked == asked + SETTLE_TICKS + 1


@pytest.mark.timeout(20)
@pytest_twisted.inlineCallbacks
def test_aRedisRestartHoldsThePoolAgain(own_redis_server):
    """Down: every tick asks (and fails, so the pool waits); back empty: it settles anew."""
    registry, clock = startedOn(own_redis_server.url)
    try:
        ready = registryReady(registry, clock)
        yield ticks(ready, clock, SETTLE_TICKS + 1)
        own_redis_server.stop()
        disruptions = registry.disruptions
        yield waitFor(lambda: registry.disruptions != disruptions,  # noticed at once
                      what="the dropped connection noticed")
        for _ in range(2):
            asking = ready()
            clock.advance(TIMEOUT)
            with pytest.raises(defer.TimeoutError):
                yield asking
        own_redis_server.start()
        yield registry.connection.execute("PING")  # waits for the reconnection
        asked = registry.asked
        assert (yield ticks(ready, clock, SETTLE_TICKS + 5)) == settling(4)
        assert registry.asked == asked + SETTLE_TICKS + 1
    finally:
        yield registry.stopService()
