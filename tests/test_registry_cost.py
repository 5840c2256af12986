"""
No registry script's cost grows with the fleet, the sessions or the queue.

Timing Redis would be flaky on a shared box, so this counts instead: how
many Redis commands a script runs inside Redis (``INFO commandstats``, which
counts the commands scripts call) per call, in a small registry and in one
200 times larger. A script that scans the workers, sessions or tickets runs
commands in proportion to them; one that reads indexes runs the same few.
(bench/scale.py measures the time.)
"""

import uuid

import pytest
import redis

from wslb.registry import HEALTHY, PACK, SPREAD, AssignRequest, redis_ops
from wslb.registry.keys import Keys

SMALL, LARGE = 10, 2000


class Registry:
    """The registry's scripts run with redis-py, as the Lambda handlers run them."""

    def __init__(self, client, namespace):
        self.client = client
        self.keys = Keys(namespace).scriptKeys()

    def run(self, op):
        return op.decode(self.client.eval(op.source, len(self.keys), *self.keys, *op.args))

    def runMany(self, ops):
        pipe = self.client.pipeline(transaction=False)
        for op in ops:
            pipe.eval(op.source, len(self.keys), *self.keys, *op.args)
        pipe.execute()


def assign(key, cost=1, placement=PACK, ticket=None, allow_overtake=False, instance="i1"):
    return redis_ops.assign(AssignRequest(
        key=key, cost=cost, instance=instance, placement=placement, max_queue=10**6,
        ticket=ticket, allow_overtake=allow_overtake, request_id=f"t-{key}"), 1.0)


def fleet(client, size):
    """
    ``size`` healthy workers of capacity 2 with one session each (in their
    grace: released), an empty queue; and, apart, one full worker with
    ``size`` tickets queued behind it.
    """
    workers = Registry(client, uuid.uuid4().hex[:8])
    ids = [f"w{i:05}" for i in range(size)]
    workers.runMany([redis_ops.addWorker(i, f"ws://{i}:1", "static", 2, 0) for i in ids])
    workers.runMany([redis_ops.setWorkerState(i, HEALTHY, 0) for i in ids])
    workers.runMany([assign(f"s{i:05}", placement=SPREAD) for i in range(size)])
    workers.runMany([redis_ops.release(f"s{i:05}", "i1", 2.0) for i in range(size)])
    # Instance i3 relays three of them, whatever the size; i4 every one.
    workers.runMany([assign(f"s{i:05}", instance="i3") for i in range(3)])
    workers.runMany([assign(f"s{i:05}", instance="i4") for i in range(size)])
    queue = Registry(client, uuid.uuid4().hex[:8])
    queue.run(redis_ops.addWorker("full", "ws://full:1", "static", 1, 0))
    queue.run(redis_ops.setWorkerState("full", HEALTHY, 0))
    queue.run(assign("holder"))
    queue.runMany([assign(f"q{i:05}", allow_overtake=True) for i in range(size)])
    return workers, queue


def calls(client):
    """Commands run so far, by name, scripts themselves left out."""
    stats = client.info("commandstats")
    return {name: s["calls"] for name, s in stats.items()
            if name not in ("cmdstat_eval", "cmdstat_evalsha", "cmdstat_info",
                            "cmdstat_config")}


def commandsRun(client, registry, op):
    """How many Redis commands running ``op`` once ran inside Redis."""
    before = calls(client)
    registry.run(op)
    after = calls(client)
    return sum(after.values()) - sum(before.values())


# Every call an instance makes per handshake or periodically, and the
# leader's page reads: (name, which registry, a fresh Op for it).
CALLS = [
    ("assign: fresh, pack", "workers", lambda: assign(uuid.uuid4().hex)),
    ("assign: fresh, spread", "workers", lambda: assign(uuid.uuid4().hex, placement=SPREAD)),
    ("assign: reconnect", "workers", lambda: assign("s00003", instance="i2")),
    ("assign: queued behind the queue", "queue",
     lambda: assign(uuid.uuid4().hex, allow_overtake=True)),
    ("release", "workers", lambda: redis_ops.release("s00003", "i2", 3.0)),
    ("end session", "workers", lambda: redis_ops.endSession("s00004", 3.0)),
    ("expire sessions (none due)", "workers", lambda: redis_ops.expireSessions(3.0, 60)),
    ("queue info", "queue", lambda: redis_ops.queueInfo(3.0)),
    ("count workers", "workers", redis_ops.countWorkers),
    ("count sessions", "workers", redis_ops.countSessions),
    ("count sessions in their grace", "workers", lambda: redis_ops.countSessions(False)),
    ("count connected sessions", "workers", lambda: redis_ops.countSessions(True)),
    ("largest capacity", "workers", redis_ops.largestCapacity),
    ("worker totals", "workers", redis_ops.workerTotals),
    ("list workers: a page", "workers",
     lambda: redis_ops.listWorkers(False, after="w00002", limit=5)),
    ("list sessions: a page", "workers", lambda: redis_ops.listSessions("s00002", 5)),
    ("health check passed", "workers",
     lambda: redis_ops.setWorkerState("w00001", HEALTHY, 3.0, {HEALTHY}, sessions=False)),
    ("get worker", "workers", lambda: redis_ops.getWorker("w00001", sessions=False)),
    ("touch tickets", "queue", lambda: redis_ops.touchTickets(["t1", "t2"], 3.0)),
    ("expire tickets (none due)", "queue", lambda: redis_ops.expireTickets(3.0, 60)),
    ("leave queue", "queue", lambda: redis_ops.leaveQueue("no-such-ticket")),
    ("abandon", "workers", lambda: redis_ops.abandon("s00005", uuid.uuid4().hex, 3.0)),
    ("abandon, keeping a queued key's place", "queue",
     lambda: redis_ops.abandon("q00005", "t-q00005", 3.0, keep_place_until=9.0)),
    ("assign: a queued key without its ticket", "queue", lambda: assign("q00007")),
    ("queue status: three keys", "queue",
     lambda: redis_ops.queueStatus(["q00003", "holder", "nobody"], 3.0)),
    ("sessions an instance counts: a page", "workers",
     lambda: redis_ops.countedSessions("i4", "0", 5)),
    ("reconcile: a page of an instance's sessions", "workers",
     lambda: redis_ops.reconcile("i4", {"s00000": [], "s00001": ["gone"], "s00002": []}, 3.0)),
    ("instance heartbeat", "workers", lambda: redis_ops.instanceHeartbeat("i1", 5)),
    ("epoch", "workers", lambda: redis_ops.epoch(3.0)),
]


@pytest.fixture(scope="module")
def registries(tmp_path_factory):
    from conftest import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis-cost"))
    server.start()
    client = redis.Redis(port=server.port, socket_timeout=10)
    try:
        yield client, {size: dict(zip(("workers", "queue"), fleet(client, size)))
                       for size in (SMALL, LARGE)}
    finally:
        client.close()
        server.stop()


@pytest.mark.parametrize("name,which,make", CALLS, ids=[c[0] for c in CALLS])
def test_commandsPerCallDoNotGrow(registries, name, which, make):
    client, bySize = registries
    small = commandsRun(client, bySize[SMALL][which], make())
    large = commandsRun(client, bySize[LARGE][which], make())
    assert small > 0
    assert large <= small, f"{name}: {small} commands at {SMALL}, {large} at {LARGE}"
