"""
Check a Redis registry's indexes and counters against its records.

The scripts keep indexes beside the records (wslb/registry/keys.py) so that
no read scans the fleet; this audit is the one place that does scan, to
prove the indexes say exactly what the records say. Tests only.
"""

from collections import defaultdict

from twisted.internet import defer

from wslb.registry import DEAD, HEALTHY, WORKER_STATES


def auditRedisRegistry(registry):
    """A Deferred: fails (AssertionError) where an index or counter disagrees with the records."""
    return defer.ensureDeferred(_audit(registry))


def keysLike(registry, pattern):
    """The registry's keys matching ``pattern`` after its prefix (KEYS: tests only)."""
    prefix = registry.keys.prefix.replace("{", "\\{").replace("}", "\\}")
    return registry.connection.execute("KEYS", prefix + pattern)


def _pairs(flat):
    """A WITHSCORES reply as {member: score}."""
    return {flat[i]: float(flat[i + 1]) for i in range(0, len(flat), 2)}


async def _audit(registry):
    run = registry.connection.execute
    p = registry.keys.prefix

    ids = await run("ZRANGE", p + "workers", 0, -1)
    records = {}
    for worker_id in ids:
        records[worker_id] = dict(zip(*[iter(await run("HGETALL", p + "worker:" + worker_id))] * 2))

    for state in WORKER_STATES:
        members = set(await run("ZRANGE", p + "state:" + state, 0, -1))
        assert members == {i for i, r in records.items() if r["state"] == state}, state
    capacities = _pairs(await run("ZRANGE", p + "capacities", 0, -1, "WITHSCORES"))
    assert capacities == {
        i: float(r["capacity"]) for i, r in records.items() if r["state"] != DEAD}

    expected = defaultdict(dict)  # capacity -> {id: load}
    for worker_id, r in records.items():
        if r["state"] == HEALTHY and r["draining"] == "0":
            expected[r["capacity"]][worker_id] = float(r["load"])
    classes = await run("ZRANGE", p + "assignable-capacities", 0, -1)
    assert sorted(classes, key=int) == sorted(expected, key=int)
    assert sorted(await keysLike(registry, "assignable:*")) == sorted(
        p + "assignable:" + c for c in expected)
    for capacity, loads in expected.items():
        actual = _pairs(await run("ZRANGE", p + "assignable:" + capacity, 0, -1, "WITHSCORES"))
        assert actual == loads, capacity

    live = [r for r in records.values() if r["state"] != DEAD]
    totals = dict(zip(*[iter(await run("HGETALL", p + "totals"))] * 2))
    for field in ("load", "capacity"):
        assert int(totals.get(field, 0)) == sum(int(r[field]) for r in live), field
    for r in records.values():
        assert r.get("counted") == (f"{r['load']} {r['capacity']}" if r["state"] != DEAD
                                    else None), r

    for worker_id, r in records.items():
        keys = await run("SMEMBERS", p + "worker-sessions:" + worker_id)
        costs = [int(await run("HGET", p + "session:" + key, "cost")) for key in keys]
        assert int(r["load"]) == sum(costs), worker_id

    queue = _pairs(await run("ZRANGE", p + "queue", 0, -1, "WITHSCORES"))
    held = _pairs(await run("ZRANGE", p + "queue-held", 0, -1, "WITHSCORES"))
    absent = set(await run("ZRANGE", p + "queue-absent", 0, -1))
    assert held == {t: seq for t, seq in queue.items() if t not in absent}
    assert absent <= set(queue)
    assert set(await run("ZRANGE", p + "ticket-heartbeats", 0, -1)) == set(held)
    tickets = {t: dict(zip(*[iter(await run("HGETALL", p + "ticket:" + t))] * 2)) for t in queue}
    assert dict(zip(*[iter(await run("HGETALL", p + "queue-keys"))] * 2)) == {
        r["key"]: t for t, r in tickets.items()}
    demand = await run("GET", p + "queue-demand")
    assert int(demand or 0) == sum(int(r["cost"]) for r in tickets.values())
    byCost = defaultdict(dict)  # the held tickets by cost
    for ticket, seq in held.items():
        byCost[tickets[ticket]["cost"]][ticket] = seq
    assert sorted((await run("ZRANGE", p + "queue-costs", 0, -1)), key=int) == sorted(
        byCost, key=int)
    assert sorted(await keysLike(registry, "queue-cost:*")) == sorted(
        p + "queue-cost:" + c for c in byCost)
    for cost, costed in byCost.items():
        assert _pairs(await run("ZRANGE", p + "queue-cost:" + cost, 0, -1, "WITHSCORES")) == (
            costed), cost

    # Each connection a session counts is one "r:<request id>" field naming
    # its instance; the per-instance counts and the total add them up.
    for key in await run("ZRANGE", p + "sessions", 0, -1):
        fields = dict(zip(*[iter(await run("HGETALL", p + "session:" + key))] * 2))
        byInstance = defaultdict(int)
        for name, value in fields.items():
            if name.startswith("r:"):
                byInstance[value.removeprefix("+")] += 1
        counted = {name[5:]: int(value) for name, value in fields.items()
                   if name.startswith("conn:")}
        assert counted == byInstance, (key, fields)
        assert int(fields["connections"]) == sum(byInstance.values()), (key, fields)
        for instance in byInstance:
            assert await run("SISMEMBER", p + "instance-sessions:" + instance, key), (key, instance)
