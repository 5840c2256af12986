"""
The waiting room across real twistd instances on one real Redis: places
kept by users who drop and come back, places told to waiting users, and
sessions allocated before their users connect.
"""

import pytest
import pytest_twisted
import redis as redis_py
from _cluster_helpers import POLL, cluster, fleet, healthyWorkers
from _polling import waitFor
from _raw_ws import TEXT, connectRaw, frame, upgradeRequest
from _sse import openEvents
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater


class Queue:
    """The shared queue as Redis itself has it (namespace "wslb")."""

    prefix = "{wslb}:"

    def __init__(self, redis):
        self.client = redis_py.Redis(port=redis.port, decode_responses=True)

    def order(self):
        """The keys queued, head first."""
        tickets = self.client.zrange(self.prefix + "queue", 0, -1)
        return [self.client.hget(self.prefix + "ticket:" + t, "key") for t in tickets]

    def ticketOf(self, key):
        return self.client.hget(self.prefix + "queue-keys", key)

    def rank(self, key):
        ticket = self.ticketOf(key)
        return None if ticket is None else self.client.zrank(self.prefix + "queue", ticket)

    async def becomes(self, expected, timeout=10):
        await waitFor(lambda: self.order() == expected, timeout=timeout)


async def hold(raws, instance, key):
    """A handshake with ``key`` through ``instance``, sent and held (not answered yet)."""
    raw = await connectRaw(instance.port)
    raws.append(raw)
    raw.transport.write(upgradeRequest(instance.port, f"/?session={key}"))
    return raw


def answered(raw):
    """Fire with the status of ``raw``'s handshake once it is answered."""
    d = raw.untilReceived(lambda data: b"\r\n\r\n" in data, timeout=15)
    return d.addCallback(lambda data: int(data.split(b" ", 2)[1]))


def isWaiting(raw):
    return raw.transport.connected and not raw.received


async def healthy(instance, n):
    await waitFor(lambda: _atLeast(instance, n), timeout=30, interval=POLL)


async def _atLeast(instance, n):
    return (await healthyWorkers(instance)) >= n


@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_a_user_back_within_the_rejoin_grace_keeps_its_place(
        own_redis_server, tmp_path, stop_after, raws):
    workers = fleet(stop_after, 1)
    a, b = cluster(stop_after, tmp_path, own_redis_server, workers, 2, "queue.rejoin_grace=3s")
    await healthy(a, 1)
    queue = Queue(own_redis_server)
    holder = await hold(raws, a, "holder")
    assert await answered(holder) == 101
    waiting = {"A": await hold(raws, a, "A")}
    await queue.becomes(["A"])
    waiting["B"] = await hold(raws, b, "B")
    await queue.becomes(["A", "B"])
    waiting["C"] = await hold(raws, a, "C")
    await queue.becomes(["A", "B", "C"])
    ticket = queue.ticketOf("B")

    # B drops (through b) and comes back through a within the grace: same place.
    waiting.pop("B").transport.abortConnection()
    await deferLater(reactor, 1.2)  # the thing tested: a queue heartbeat passes, B keeps its place
    assert queue.order() == ["A", "B", "C"]
    waiting["B"] = await hold(raws, a, "B")
    await deferLater(reactor, 0.5)  # the thing tested: nothing moves meanwhile
    assert queue.order() == ["A", "B", "C"] and queue.ticketOf("B") == ticket
    assert queue.rank("A") < queue.rank("B") < queue.rank("C")

    # B drops again and stays away past the grace: back, it joins the tail.
    waiting.pop("B").transport.abortConnection()
    await queue.becomes(["A", "C"], timeout=3 + 3)
    waiting["B"] = await hold(raws, b, "B")
    await queue.becomes(["A", "C", "B"])

    # A head that is away does not stall the others: A drops, the worker
    # frees, C is served; A, back within its grace, is still first.
    waiting.pop("A").transport.abortConnection()
    await deferLater(reactor, 0.5)  # A's drop noticed (nothing to poll: it keeps its place)
    holder.transport.write(frame(TEXT, b"end"))  # the session ends: its worker is free
    assert await answered(waiting["C"]) == 101
    assert queue.order() == ["A", "B"]
    waiting["A"] = await hold(raws, b, "A")
    await deferLater(reactor, 0.5)  # the thing tested: nothing moves meanwhile
    assert queue.order() == ["A", "B"] and isWaiting(waiting["A"]) and isWaiting(waiting["B"])


class Watcher:
    """One waiting user's status stream, through another instance than its handshake."""

    def __init__(self, key, stream):
        self.key = key
        self.stream = stream
        self.seen = []  # every event's data, in order

    async def collect(self):
        while True:
            event, _ = await self.stream.next(timeout=120)
            self.seen.append(event)
            if "queued" in event and not event["queued"]:
                return

    def positions(self):
        return [event["position"] for event in self.seen if event.get("queued")]


@pytest.mark.timeout(300)
@pytest_twisted.ensureDeferred
async def test_forty_users_see_their_exact_place_fall_to_zero_and_are_served_in_order(
        own_redis_server, tmp_path, stop_after, raws):
    workers = fleet(stop_after, 2)
    instances = cluster(stop_after, tmp_path, own_redis_server, workers, 3,
                        "queue.status_path=/wslb/queue")
    await healthy(instances[0], 2)
    queue = Queue(own_redis_server)
    users = [f"u{i:02}" for i in range(40)]
    held, served = {}, []
    for i, key in enumerate(users):  # one at a time, so the arrival order is known
        held[key] = await hold(raws, instances[i % 3], key)
        if i < 2:
            assert await answered(held[key]) == 101
            served.append(key)
        else:
            await queue.becomes(users[2:i + 1])
    assert queue.order() == users[2:]

    watchers = {}
    for i, key in enumerate(users[2:], start=2):
        instance = instances[(i + 1) % 3]  # not the one holding its handshake
        code, stream = await openEvents(
            f"http://127.0.0.1:{instance.port}/wslb/queue/events?session={key}")
        assert code == 200
        watchers[key] = Watcher(key, stream)
    collecting = {key: defer.ensureDeferred(w.collect()) for key, w in watchers.items()}

    async def allTold():
        """Every waiting user was told its place as Redis has it now (and nothing else)."""
        order = queue.order()
        return all(w.positions()[-1:] == [order.index(key)]
                   for key, w in watchers.items() if key in order)

    await waitFor(allTold, timeout=30, interval=0.1)
    while len(served) < len(users):
        leaving = served[len(served) - 2]  # the earlier of the two relayed now
        expected = queue.order()[0]
        held[leaving].transport.write(frame(TEXT, b"end"))
        assert await answered(held[expected]) == 101  # the head, whichever instance holds it
        served.append(expected)
        await collecting[expected]  # its stream ended: ready
        await waitFor(allTold, timeout=30, interval=0.1)

    assert served == users  # first come, first served, across the three instances
    for i, key in enumerate(users[2:], start=2):
        watcher = watchers[key]
        # Every place it was told was its rank in Redis when told: they fall one by one.
        assert watcher.positions() == list(range(i - 2, -1, -1)), (key, watcher.seen)
        assert watcher.seen[-1] == {"queued": False, "ready": True}
        assert all(e["length"] >= e["position"] + 1 for e in watcher.seen[:-1])
    # Once sessions were served from the queue, the pace gives an estimate of the wait.
    assert watchers[users[-1]].seen[-2]["eta_seconds"] is not None
