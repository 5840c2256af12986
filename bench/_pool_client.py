"""
One wslb-like client of Redis for bench/scale.py's "pool" part, in its own
process (its own reactor): a RedisRegistry whose command connections number
``pool``, running ``concurrency`` handshake loops (a reconnect's assign, then
its release) and, when ``bulk``, the leader's reads besides (the whole fleet
in pages, over and over). Prints one JSON line: the assign round trips.

    python bench/_pool_client.py '{"redis": PORT, "namespace": NS, "pool": 2,
        "seconds": 5, "concurrency": 20, "bulk": true, "keys": [...]}'
"""

import json
import sys
import time

from twisted.internet import defer, reactor, task

from wslb.registry import AssignRequest, redis_connection
from wslb.registry.redis import RedisRegistry


@defer.inlineCallbacks
def handshakes(registry, keys, until, samples):
    """Reconnects in a loop: what a handshake of a known user costs the registry."""
    i = 0
    while time.perf_counter() < until:
        key = keys[i % len(keys)]
        i += 1
        began = time.perf_counter()
        yield registry.assign(AssignRequest(key=key, cost=1, instance="bench"), reactor.seconds())
        samples.append(time.perf_counter() - began)
        yield registry.release(key, "bench", reactor.seconds())


@defer.inlineCallbacks
def leader(registry, until):
    """The leader's reads: the whole fleet, a page at a time, again and again."""
    passes = 0
    while time.perf_counter() < until:
        yield registry.listWorkers(sessions=False)
        passes += 1
    return passes


@defer.inlineCallbacks
def main(spec):
    redis_connection.POOL_SIZE = spec["pool"]
    registry = RedisRegistry(reactor, f"redis://127.0.0.1:{spec['redis']}/0", spec["namespace"],
                             timeout=30)
    registry.startService()
    yield registry.whenNoticesDelivered()
    yield task.deferLater(reactor, 0.5, lambda: None)  # every pooled connection up
    until = time.perf_counter() + spec["seconds"]
    samples = []
    work = [handshakes(registry, spec["keys"][i::spec["concurrency"]], until, samples)
            for i in range(spec["concurrency"])]
    if spec["bulk"]:
        work.append(leader(registry, until))
    results = yield defer.gatherResults(work)
    yield registry.stopService()
    print(json.dumps({"assign_seconds": samples,
                      "leader_passes": results[-1] if spec["bulk"] else 0}), flush=True)


if __name__ == "__main__":
    task.react(lambda _: main(json.loads(sys.argv[1])))
