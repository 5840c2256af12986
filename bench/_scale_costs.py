"""
What each registry script costs Redis, and its round trip, as the fleet,
the sessions and the queue grow.

The scripts run as wslb runs them (``wslb.registry.redis_ops``), through
redis-py against a private redis-server. Redis CPU per call is the growth of
``INFO commandstats``' EVALSHA time over a batch of calls of one kind,
divided by the batch; the round trip is the client's wall time per call
(one at a time, so no call waits for another).

Fleets: N healthy workers (10, 1,000, 10,000) sharing 10,000 sessions
(capacity 2 * 10,000 / N each, placed by spread), half of the sessions in
their reconnect grace. Queues: one worker with 5 units of room, a head that
fits nowhere and Q tickets (100, 10,000) behind it, none of which fits.
"""

import statistics
import time
import uuid

import redis

from wslb.registry import HEALTHY, PACK, SPREAD, UNHEALTHY, AssignRequest, redis_ops
from wslb.registry.keys import Keys
from wslb.registry.redis_ops import PAGE

FLEETS = (10, 1000, 10000)
QUEUES = (100, 10000)
SESSIONS = 10000
BATCH = 200  # calls per measured batch
LOAD_CHUNK = 1000  # calls per pipeline while filling


class Scripts:
    """The registry's scripts over one redis-py client, in one namespace."""

    def __init__(self, client, namespace):
        self.client = client
        self.namespace = namespace
        self.keys = Keys(namespace).scriptKeys()
        self._shas = {}

    def _sha(self, op):
        sha = self._shas.get(op.script)
        if sha is None:
            sha = self._shas[op.script] = self.client.script_load(op.source)
        return sha

    def run(self, op):
        return op.decode(self.client.evalsha(self._sha(op), len(self.keys), *self.keys, *op.args))

    def fill(self, ops):
        """Run many ops, pipelined (setting up, not measured)."""
        ops = list(ops)
        for i in range(0, len(ops), LOAD_CHUNK):
            pipe = self.client.pipeline(transaction=False)
            for op in ops[i:i + LOAD_CHUNK]:
                pipe.evalsha(self._sha(op), len(self.keys), *self.keys, *op.args)
            pipe.execute()


def _evalsha(client):
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return stats.get("calls", 0), stats.get("usec", 0)


def measure(scripts, ops):
    """(Redis µs per call, client round trip p50 µs, p99 µs) over ``ops``, run one by one."""
    client = scripts.client
    for op in ops[:1]:
        scripts._sha(op)  # loading the script is not the call's cost
    calls0, usec0 = _evalsha(client)
    trips = []
    for op in ops:
        began = time.perf_counter()
        scripts.run(op)
        trips.append((time.perf_counter() - began) * 1e6)
    calls1, usec1 = _evalsha(client)
    trips.sort()
    assert calls1 - calls0 == len(ops), "another client ran scripts meanwhile"
    return ((usec1 - usec0) / len(ops), statistics.median(trips),
            trips[min(len(trips) - 1, int(0.99 * len(trips)))])


def assignOp(key, cost=1, placement=PACK, ticket=None, overtake=False, instance="i1", now=10.0,
             request=None):
    """An assign; its request id ``request``, or one made from the key and instance."""
    return redis_ops.assign(AssignRequest(
        key=key, cost=cost, instance=instance, placement=placement, max_queue=10**6,
        ticket=ticket, allow_overtake=overtake, request_id=request or f"{instance}-{key}"), now)


def _fresh(prefix):
    """BATCH names never used before (rounds measure afresh)."""
    return [f"{prefix}-{uuid.uuid4().hex[:12]}" for _ in range(BATCH)]


class Fleet:
    """N workers sharing SESSIONS sessions, in their own namespace."""

    def __init__(self, client, size):
        self.size = size
        self.s = s = Scripts(client, f"fleet{size}")
        self.capacity = max(2, 2 * SESSIONS // size)
        self.ids = ids = [f"w{i:05}" for i in range(size)]
        s.fill(redis_ops.addWorker(i, f"ws://{i}.bench:9000", "static", self.capacity, 0)
               for i in ids)
        s.fill(redis_ops.setWorkerState(i, HEALTHY, 1) for i in ids)
        self.sessions = keys = [f"s{i:05}" for i in range(SESSIONS)]
        s.fill(assignOp(k, placement=SPREAD, now=2.0) for k in keys)
        s.fill(redis_ops.release(k, "i1", 3.0, f"i1-{k}") for k in keys[::2])  # in their grace
        self.held = {k: [f"i1-{k}"] for k in keys[1::2]}  # what instance i1 holds
        s.run(redis_ops.instanceHeartbeat("i1", 3600))
        s.run(redis_ops.epoch(0.0))

    def measure(self):
        """{call name: (redis µs, p50 µs, p99 µs)}; leaves the fleet as it found it."""
        s, size, ids, keys = self.s, self.size, self.ids, self.sessions
        some = keys[1::2][:BATCH]  # connected ones
        costs = {}

        def m(name, ops):
            costs[name] = measure(s, list(ops))

        fresh = _fresh("p")
        m("assign: fresh key, pack", (assignOp(k) for k in fresh))
        m("end_session", (redis_ops.endSession(k, 11.0) for k in fresh))
        fresh = _fresh("a")
        s.fill(assignOp(k) for k in fresh)
        m("abandon (an assign given up)", (redis_ops.abandon(k, f"i1-{k}", 11.0) for k in fresh))
        fresh = _fresh("s")
        m("assign: fresh key, spread", (assignOp(k, placement=SPREAD) for k in fresh))
        s.fill(redis_ops.endSession(k, 11.0) for k in fresh)
        again = uuid.uuid4().hex[:8]  # request ids never used before
        m("assign: reconnect", (assignOp(k, instance="i2", request=f"{again}-{k}") for k in some))
        m("release", (redis_ops.release(k, "i2", 12.0, f"{again}-{k}") for k in some))
        m("get_session", (redis_ops.getSession(k) for k in some))
        m("reassert_session (already there)", (
            redis_ops.reassertSession(k, ids[i % size], f"ws://{ids[i % size]}.bench:9000",
                                      "static", self.capacity, 1, "i1", [f"i1-{k}"], 13.0)
            for i, k in enumerate(some)))
        workers = [ids[i % size] for i in range(BATCH)]
        m("get_worker", (redis_ops.getWorker(w) for w in workers))
        m("get_worker, without sessions", (redis_ops.getWorker(w, False) for w in workers))
        m("worker_heartbeat", (redis_ops.heartbeat(w, 14.0) for w in workers))
        m("set_worker_state: health check passed", (
            redis_ops.setWorkerState(w, HEALTHY, 15.0, {HEALTHY}, sessions=False)
            for w in workers))
        m("set_worker_state: healthy <-> unhealthy", (
            redis_ops.setWorkerState(workers[i // 2], UNHEALTHY if i % 2 == 0 else HEALTHY,
                                     16.0) for i in range(BATCH)))
        m("set_draining: on and off", (
            redis_ops.setDraining(workers[i // 2], i % 2 == 0) for i in range(BATCH)))
        spare = _fresh("x")
        m("add_worker", (redis_ops.addWorker(w, f"ws://{w}:1", "static", self.capacity, 17.0)
                         for w in spare))
        m("claim_idle_worker", (redis_ops.claimIdleWorker(w) for w in spare[::2]))
        m("remove_worker", (redis_ops.removeWorker(w) for w in spare[1::2]))
        m("count_workers", (redis_ops.countWorkers() for _ in range(BATCH)))
        m("count_sessions", (redis_ops.countSessions() for _ in range(BATCH)))
        m("largest_capacity", (redis_ops.largestCapacity() for _ in range(BATCH)))
        m("worker_totals", (redis_ops.workerTotals() for _ in range(BATCH)))
        starts = [ids[(i * 7) % max(1, size - PAGE)] for i in range(BATCH)]
        m(f"list_workers: a page ({PAGE}), without sessions", (
            redis_ops.listWorkers(False, after=w, limit=PAGE) for w in starts))
        m(f"list_workers: a page ({PAGE}), with sessions", (
            redis_ops.listWorkers(True, after=w, limit=PAGE) for w in starts))
        m(f"list_sessions: a page ({PAGE})", (
            redis_ops.listSessions(after=keys[(i * 37) % (SESSIONS - PAGE)], limit=PAGE)
            for i in range(BATCH)))
        m("expire_sessions (none due)", (redis_ops.expireSessions(20.0, 3600)
                                         for _ in range(BATCH)))
        m("instance_heartbeat", (redis_ops.instanceHeartbeat("i1", 3600)
                                 for _ in range(BATCH)))
        m("epoch", (redis_ops.epoch(20.0) for _ in range(BATCH)))
        m("sweep_instances (none gone)", (redis_ops.sweepInstances(21.0)
                                          for _ in range(BATCH)))
        m("drop_instance (one holding no session)", (
            redis_ops.dropInstance(f"gone-{i}", 21.0) for i in range(BATCH)))
        m(f"counted_sessions: a page ({PAGE}) of an instance's", (
            redis_ops.countedSessions("i1") for _ in range(BATCH)))
        pages = [dict(list(self.held.items())[i:i + PAGE])
                 for i in range(0, len(self.held), PAGE)]
        m(f"reconcile: a page ({PAGE})", (
            redis_ops.reconcile("i1", pages[i % len(pages)], 22.0) for i in range(BATCH)))
        return costs


class Queue:
    """One worker with 5 units of room, a head that fits nowhere and ``length`` tickets."""

    def __init__(self, client, length):
        self.length = length
        self.s = s = Scripts(client, f"queue{length}")
        s.run(redis_ops.addWorker("w", "ws://w.bench:9000", "static", 100, 0))
        s.run(redis_ops.setWorkerState("w", HEALTHY, 0))
        s.run(assignOp("holder", cost=95))  # 5 units of room left
        self.head = s.run(assignOp("head", cost=50, overtake=True))
        s.fill(assignOp(f"q{i:05}", cost=10 + i % 7, overtake=True) for i in range(length - 1))
        self.middleKey = f"q{length // 2:05}"
        self.middleTicket = f"i1-{self.middleKey}"  # its request id: assignOp's default
        self.tickets = [t.decode() for t in client.zrange(f"{{{s.namespace}}}:queue", 0, -1)]

    def measure(self):
        s, length, tickets = self.s, self.length, self.tickets
        costs = {}

        def m(name, ops):
            costs[name] = measure(s, list(ops))

        m("queue_info", (redis_ops.queueInfo(30.0) for _ in range(BATCH)))
        m("queue_status: one key's place", (
            redis_ops.queueStatus([self.middleKey], 30.0) for _ in range(BATCH)))
        watched = [f"q{(i * 37) % (length - 1):05}" for i in range(PAGE)]
        m(f"queue_status: a slice of places ({PAGE})", (
            redis_ops.queueStatus(watched, 30.0) for _ in range(BATCH)))
        m("assign: queue retry, not the head", (
            assignOp(self.middleKey, cost=10 + (length // 2) % 7, ticket=self.middleTicket)
            for _ in range(BATCH)))
        m("assign: queue retry, the head", (
            assignOp("head", cost=50, ticket=self.head.ticket) for _ in range(BATCH)))
        fresh = _fresh("n")
        m("assign: new key, joins the queue", (
            redis_ops.assign(AssignRequest(key=k, cost=20, instance="i1", max_queue=10**6,
                                           request_id=k), 31.0) for k in fresh))
        m("abandon: a queued key, keeping its place", (
            redis_ops.abandon(k, k, 31.2, keep_place_until=60.0) for k in fresh))
        m("assign: a key back within its rejoin grace", (
            redis_ops.assign(AssignRequest(key=k, cost=20, instance="i2", max_queue=10**6),
                             31.5) for k in fresh))
        m("leave_queue", (redis_ops.leaveQueue(k) for k in fresh))
        fresh = _fresh("o")
        m("assign: new key, allow_overtake (checks the queue ahead)", (
            redis_ops.assign(AssignRequest(key=k, cost=6, instance="i1", max_queue=10**6,
                                           allow_overtake=True, request_id=k), 32.0)
            for k in fresh))
        s.fill(redis_ops.leaveQueue(k) for k in fresh)
        m(f"touch_tickets: a slice ({PAGE})", (
            redis_ops.touchTickets(tickets[(i * PAGE) % (length - PAGE):][:PAGE], 33.0)
            for i in range(BATCH)))
        m("expire_tickets (none due)", (redis_ops.expireTickets(34.0, 3600)
                                        for _ in range(BATCH)))
        return costs


def lockCosts(client):
    """The leader lock's scripts (not registry scripts: no prelude)."""
    key, token = "{bench}:leader", "token"
    client.set(key, token, px=60000)
    costs = {}
    for name in ("lock_renew", "lock_release"):
        source = redis_ops.lockScript(name)
        sha = client.script_load(source)
        calls0, usec0 = _evalsha(client)
        trips = []
        for _ in range(BATCH):
            client.set(key, token, px=60000)
            began = time.perf_counter()
            client.evalsha(sha, 1, key, token, *(["60000"] if name == "lock_renew" else []))
            trips.append((time.perf_counter() - began) * 1e6)
        calls1, usec1 = _evalsha(client)
        trips.sort()
        costs[name] = ((usec1 - usec0) / (calls1 - calls0), statistics.median(trips),
                       trips[int(0.99 * len(trips))])
    client.delete(key)
    return costs


def _summary(rounds):
    """
    Per call name, over the rounds: the least Redis µs (the scheduler
    preempting Redis only ever adds to a command's time: the least is the
    closest to Redis's cost on a core of its own), the median p50 and p99.
    """
    return {name: (min(r[name][0] for r in rounds),
                   statistics.median(r[name][1] for r in rounds),
                   statistics.median(r[name][2] for r in rounds))
            for name in rounds[0]}


def run(redisPort, rounds):
    """
    Every table of costs (medians over ``rounds``, the sizes interleaved in
    each round): fleets by size, queues by length, the lock; and memory.
    """
    client = redis.Redis(port=redisPort, socket_timeout=60)
    try:
        client.flushall()
        print("  script costs: filling the fleets and queues", flush=True)
        fleets = [Fleet(client, size) for size in FLEETS]
        queues = [Queue(client, length) for length in QUEUES]
        byFleet = {f.size: [] for f in fleets}
        byQueue = {q.length: [] for q in queues}
        lock = []
        for number in range(rounds):
            print(f"  script costs: round {number + 1} of {rounds}", flush=True)
            for fleet in fleets:
                byFleet[fleet.size].append(fleet.measure())
            for q in queues:
                byQueue[q.length].append(q.measure())
            lock.append(lockCosts(client))
        print("  memory per worker, session and ticket", flush=True)
        return {"fleets": {size: _summary(r) for size, r in byFleet.items()},
                "queues": {length: _summary(r) for length, r in byQueue.items()},
                "lock": _summary(lock), "memory": memoryPerRecord(client)}
    finally:
        client.close()


def memoryPerRecord(client):
    """Bytes of Redis memory per worker, per session and per queued ticket (10,000 each)."""
    client.flushall()
    s = Scripts(client, "memory")
    n = 10000

    def used():
        return client.info("memory")["used_memory"]

    empty = used()
    ids = [f"i-{uuid.uuid4().hex[:17]}" for i in range(n)]  # EC2-like
    s.fill(redis_ops.addWorker(w, f"ws://10.0.{i // 250}.{i % 250}:9000", "ec2", 2, 1.0)
           for i, w in enumerate(ids))
    s.fill(redis_ops.setWorkerState(i, HEALTHY, 2.0) for i in ids)
    workers = used()
    s.fill(assignOp(uuid.uuid4().hex, placement=SPREAD, now=3.0) for _ in range(2 * n - n))
    sessions = used()
    s.fill(assignOp(uuid.uuid4().hex, now=4.0) for _ in range(n + 1))  # all full: queued
    tickets = used()
    client.flushall()
    return {"worker": (workers - empty) / n, "session": (sessions - workers) / n,
            "ticket": (tickets - sessions) / n}
