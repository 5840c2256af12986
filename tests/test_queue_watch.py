"""
The places of the keys an instance's status streams follow (QueueWatch), on a
Clock over the memory registry, and the estimate of the wait.
"""

import pytest
import pytest_twisted
from registry_contract import addHealthy, request
from twisted.internet.task import Clock

from wslb.proxy.queue_watch import (
    MIN_READ_INTERVAL,
    NOT_QUEUED,
    READY,
    REREAD_INTERVAL,
    QueueWatch,
    etaSeconds,
)
from wslb.registry import QueuePace
from wslb.registry.memory import MemoryRegistry


@pytest.mark.parametrize("position, pace, expected", [
    (3, QueuePace(served=0, over=0, starting=0, start_seconds=None), None),  # no data
    (2, QueuePace(served=6, over=60, starting=0, start_seconds=None), 30),  # 0.1/s: 3 in 30 s
    (0, QueuePace(served=1, over=2, starting=0, start_seconds=None), 10),  # one bucket at least
    (0, QueuePace(served=0, over=0, starting=2, start_seconds=20), 20),  # a starting worker
    (1, QueuePace(served=0, over=0, starting=2, start_seconds=None), 180),  # none measured yet
    (0, QueuePace(served=0, over=0, starting=1, start_seconds=900), 180),  # start_timeout bounds
    (2, QueuePace(served=0, over=0, starting=2, start_seconds=20), None),  # 2 starting serve 2
    (5, QueuePace(served=6, over=60, starting=2, start_seconds=20), 40),  # 2 at 20 s, 4 at 0.1/s
    (1, QueuePace(served=60, over=60, starting=2, start_seconds=20), 2),  # the pace is sooner
])
def test_eta(position, pace, expected):
    assert etaSeconds(position, pace, perWorker=1, startTimeout=180) == expected


class CountingRegistry(MemoryRegistry):
    """Counts queueStatus calls and the keys they name."""

    def __init__(self, clock):
        super().__init__(clock)
        self.asked = []

    def queueStatus(self, keys, now):
        self.asked.append(list(keys))
        return super().queueStatus(keys, now)


@pytest_twisted.ensureDeferred
async def test_followed_keys_hear_their_places_as_tickets_leave():
    clock = Clock()
    registry = CountingRegistry(clock)
    watch = QueueWatch(registry, clock, perWorker=1, startTimeout=180)
    watch.startService()
    try:
        await addHealthy(registry, "w1")
        await registry.assign(request("holder"), 0)
        tickets = {key: (await registry.assign(request(key), 1)).ticket for key in "abcd"}
        heard = {"c": [], "d": []}
        watch.follow("c", heard["c"].append)
        unfollow = watch.follow("d", heard["d"].append)
        clock.advance(0)
        assert registry.asked == [["c", "d"]]  # one read for both
        assert [h["position"] for h in heard["c"]] == [2]
        assert heard["c"][0] == {"queued": True, "position": 2, "length": 4,
                                 "eta_seconds": None}

        # Three leave at once: the notices come together, and one read follows.
        await registry.leaveQueue(tickets["a"])
        await registry.leaveQueue(tickets["b"])
        unfollow()
        clock.advance(0)
        clock.advance(MIN_READ_INTERVAL)
        assert registry.asked[1:] == [["c"]]
        assert [h["position"] for h in heard["c"]] == [2, 0]
        assert len(heard["d"]) == 1  # it follows no more

        # Served: READY.
        await registry.endSession("holder")
        assert (await registry.assign(request("c", ticket=tickets["c"]), 2)).fresh
        clock.advance(MIN_READ_INTERVAL)
        assert heard["c"][-1] == READY
        assert await watch.statusOf("c") == READY
        assert await watch.statusOf("nobody") == NOT_QUEUED
    finally:
        watch.stopService()


@pytest_twisted.ensureDeferred
async def test_nothing_is_read_for_nobody_and_a_lost_notice_is_made_up_for():
    clock = Clock()
    registry = CountingRegistry(clock)
    watch = QueueWatch(registry, clock, perWorker=1, startTimeout=180)
    watch.startService()
    try:
        await addHealthy(registry, "w1")
        await registry.assign(request("holder"), 0)
        a = await registry.assign(request("a"), 1)
        await registry.assign(request("b"), 1)
        clock.advance(REREAD_INTERVAL * 3)
        assert registry.asked == []  # no stream follows a key: no read
        heard = []
        watch.follow("b", heard.append)
        clock.advance(0)
        # The queue changes without a notice (as if the subscriber had lost it).
        registry._queueListeners.remove(watch.changed)
        await registry.leaveQueue(a.ticket)
        clock.advance(REREAD_INTERVAL)
        assert [h["position"] for h in heard] == [1, 0]
    finally:
        watch.stopService()
