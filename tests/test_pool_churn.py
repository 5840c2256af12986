"""
Churn: users arriving and leaving every few seconds around the spare band,
for 1,000 simulated seconds (task.Clock), through the real scaler and the
memory registry. The scaler must not flip-flop, and nobody may wait longer
than start_timeout while capacity can be had.

The documented bound, for demand moving between about 2 and 8 users:
launches + terminations stay within one per three sessions served
(CHURN_ACTIONS_PER_SESSION), and the scaler never acts in both directions
in adjacent ticks (a terminate followed by a launch, or the reverse, one
scale interval apart). The spare band (min_spare 2 .. max_spare 5) absorbs
swings of up to three workers without any action; a scaler reacting to
every arrival and departure would act about twice per session.
"""

import random

from _pool_helpers import RecordingProvider, SwitchableLeader, resultOf
from twisted.internet.task import Clock

from wslb.pool.scaler import Scaler
from wslb.registry import HEALTHY, STARTING, Assigned, AssignRequest
from wslb.registry.memory import MemoryRegistry

SECONDS = 1000
SCALE_INTERVAL = 5
START_DELAY = 10  # seconds a launched worker takes to pass its first check
START_TIMEOUT = 180
CHURN_ACTIONS_PER_SESSION = 1 / 3


def test_churn_around_the_spare_band_does_not_flip_flop():
    clock = Clock()
    registry = MemoryRegistry(clock)
    provider = RecordingProvider()
    scaler = Scaler(registry, provider, clock, SwitchableLeader(), min_spare=2, max_spare=5,
                    min_workers=0, max_workers=30, capacity=1)
    rng = random.Random(20261127)
    launchedAt = {}
    queued = []  # (request, since)
    leaving = {}  # key -> when the user leaves
    waits = []
    served = 0
    directions = []  # (time, "launch" | "terminate") of each tick that acted

    def tryAssign(request, since):
        nonlocal served
        result = resultOf(registry.assign(request, clock.seconds()))
        if isinstance(result, Assigned):
            waits.append(clock.seconds() - since)
            leaving[request.key] = clock.seconds() + rng.uniform(10, 40)
            served += 1
            return None
        return result.ticket

    for second in range(SECONDS):
        now = clock.seconds()
        # About one arrival every 6 s, staying 10-40 s: 2 to 8 users at once,
        # moving around the spare band all the time.
        for _ in range(1 if rng.random() < 0.16 else 0):
            key = f"u{second}-{rng.randrange(10**6)}"
            request = AssignRequest(key=key, cost=1, instance="i")
            ticket = tryAssign(request, now)
            if ticket is not None:
                queued.append((AssignRequest(key=key, cost=1, instance="i", ticket=ticket), now))
        for key in [k for k, when in leaving.items() if when <= now]:
            del leaving[key]
            resultOf(registry.release(key, "i", now))
            resultOf(registry.endSession(key))
        still = []
        for request, since in queued:  # oldest first, as the router retries
            ticket = tryAssign(request, since)
            if ticket is not None:
                still.append((AssignRequest(key=request.key, cost=1, instance="i",
                                            ticket=ticket), since))
        queued = still
        # A launched worker passes its first health check START_DELAY later.
        for worker in resultOf(registry.listWorkers()):
            launchedAt.setdefault(worker.id, now)
            if worker.state == STARTING and now - launchedAt[worker.id] >= START_DELAY:
                resultOf(registry.setWorkerState(worker.id, HEALTHY, now))
        if second % SCALE_INTERVAL == 0:
            before = (len(provider.launches), len(provider.terminations))
            resultOf(scaler.tick())
            after = (len(provider.launches), len(provider.terminations))
            if after != before:
                directions.append((now, "launch" if after[0] > before[0] else "terminate"))
        clock.advance(1)

    for (t1, d1), (t2, d2) in zip(directions, directions[1:]):
        assert not (d1 != d2 and t2 - t1 <= SCALE_INTERVAL), f"flip-flop at {t1}-{t2}"
    actions = sum(provider.launches) + sum(len(ids) for ids in provider.terminations)
    assert served > 120  # the simulation really churned
    assert actions <= served * CHURN_ACTIONS_PER_SESSION, directions
    assert max(waits) < START_TIMEOUT
    assert max(waits) <= START_DELAY + 2 * SCALE_INTERVAL
