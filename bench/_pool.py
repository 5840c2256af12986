"""
Does more than one command connection to Redis cut the tail of a busy
instance's registry calls? Three client processes (bench/_pool_client.py)
stand for three wslb instances on one Redis holding 10,000 workers and
10,000 sessions; each runs handshake loops (assign + release), and one, the
leader, also reads the whole fleet in pages over and over, so its handshakes
share its connection(s) with bulk reads. Pool sizes are interleaved over
rounds in one run; the table has the assign round trips, p50/p99/max.
"""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import _scale_costs
import redis

BENCH = Path(__file__).resolve().parent
POOLS = (1, 2, 4)
INSTANCES = 3
SECONDS = 5.0
CONCURRENCY = 5


def _percentiles(samples):
    ordered = sorted(samples)
    at = lambda p: ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1e6  # noqa: E731
    return {"calls": len(ordered), "p50": at(0.5), "p99": at(0.99), "max": ordered[-1] * 1e6}


def _round(port, namespace, keys, pool):
    clients = []
    for number in range(INSTANCES):
        spec = {"redis": port, "namespace": namespace, "pool": pool, "seconds": SECONDS,
                "concurrency": CONCURRENCY, "bulk": number == 0,
                "keys": keys[number::INSTANCES]}
        clients.append(subprocess.Popen(
            [sys.executable, str(BENCH / "_pool_client.py"), json.dumps(spec)],
            stdout=subprocess.PIPE, text=True))
    outputs = [json.loads(c.communicate(timeout=SECONDS + 60)[0]) for c in clients]
    every = [s for out in outputs for s in out["assign_seconds"]]
    return {"all": _percentiles(every), "leader": _percentiles(outputs[0]["assign_seconds"]),
            "passes": outputs[0]["leader_passes"]}


def run(port, rounds):
    """{pool size: {"all"|"leader": {calls, p50, p99, max (µs)}, "passes"}}, medians."""
    client = redis.Redis(port=port, socket_timeout=60)
    try:
        client.flushall()
        fleet = _scale_costs.Fleet(client, 10000)
        keys = fleet.sessions
        namespace = fleet.s.namespace
    finally:
        client.close()
    byPool = {pool: [] for pool in POOLS}
    for number in range(rounds):
        for pool in POOLS:
            print(f"  connection pool: round {number + 1} of {rounds}, {pool} connection(s)",
                  flush=True)
            byPool[pool].append(_round(port, namespace, keys, pool))
    return {pool: {
        which: {k: statistics.median(r[which][k] for r in results) for k in results[0][which]}
        for which in ("all", "leader")} | {
        "passes": statistics.median(r["passes"] for r in results)}
        for pool, results in byPool.items()}
