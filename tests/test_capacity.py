"""LargestCapacity: the cost bound handshakes are checked against, refreshed on a timer."""

import pytest
import pytest_twisted
from _polling import waitFor
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater

from wslb.proxy.capacity import REFRESH_INTERVAL, LargestCapacity
from wslb.registry import DEAD, HEALTHY
from wslb.registry.memory import MemoryRegistry
from wslb.registry.redis import RedisRegistry


def test_follows_the_registered_workers_on_the_timer():
    clock = Clock()
    registry = MemoryRegistry(clock)
    largest = LargestCapacity(registry, clock, 1000)
    largest.startService()
    try:
        assert largest() == 1000
        registry.addWorker("big", "ws://big:9000", "registered", 4000, 0)
        registry.addWorker("small", "ws://small:9000", "registered", 10, 0)
        assert largest() == 1000  # no round trip per question: known at the next tick
        clock.advance(REFRESH_INTERVAL)
        assert largest() == 4000  # a starting worker counts: it is about to serve
        registry.setWorkerState("big", DEAD, 1)
        clock.advance(REFRESH_INTERVAL)
        assert largest() == 1000  # never below the configured capacity
    finally:
        largest.stopService()


@pytest.mark.timeout(20)
@pytest_twisted.ensureDeferred
async def test_keeps_the_last_value_while_the_registry_is_away(own_redis_server):
    registry = RedisRegistry(reactor, own_redis_server.url, "capacity", timeout=0.3)
    registry.startService()
    largest = LargestCapacity(registry, reactor, 1000, interval=0.2)
    try:
        await registry.addWorker("big", "ws://big:9000", "registered", 4000, 0)
        await registry.setWorkerState("big", HEALTHY, 0)
        largest.startService()
        await waitFor(largest, lambda value: value == 4000, what="4000 read")
        own_redis_server.stop()
        await deferLater(reactor, 1.0)  # the thing tested: refreshes fail meanwhile
        assert largest() == 4000
        own_redis_server.start()  # back, and empty: a failed refresh did not stop the timer
        await waitFor(largest, lambda value: value == 1000, timeout=15, what="1000 read anew")
    finally:
        largest.stopService()
        await registry.stopService()


@pytest_twisted.inlineCallbacks
def test_a_refresh_reads_no_worker():
    """The registry keeps the largest capacity: a refresh costs the same for any fleet."""
    clock = Clock()
    registry = MemoryRegistry(clock)
    asked = []
    largestCapacity = registry.largestCapacity
    registry.listWorkers = lambda *a, **kw: asked.append("listWorkers")
    registry.largestCapacity = lambda: asked.append("largestCapacity") or largestCapacity()
    for i in range(20):
        yield registry.addWorker(f"w{i}", f"ws://w{i}:9000", "registered", 10 + i, 0)
    largest = LargestCapacity(registry, clock, 1)
    yield largest.refresh()
    assert (asked, largest()) == (["largestCapacity"], 29)
