"""
SIGTERM (DESIGN §8): stop accepting, /healthz 503 at once, users closed with
1001 after the drain period, leadership handed over, nothing of the registry
lost: every user reconnects through another instance to the same worker.
"""

import signal

import pytest
import pytest_twisted
import treq
from _cluster_helpers import (
    LEADER_TTL,
    POLL,
    cluster,
    connect,
    fleet,
    healthyWorkers,
    leaderOf,
)
from _polling import waitFor
from twisted.internet import defer, reactor

DRAIN = 2.0


async def leads(instance):
    view = await leaderOf(instance)
    return view is not None and view[0]


@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_sigterm_drains_fifty_users_to_another_instance(
        own_redis_server, tmp_path, stop_after, clients):
    workers = fleet(stop_after, 10)
    (a,) = cluster(stop_after, tmp_path, own_redis_server, workers, 1,
                   f"listen.drain_period={DRAIN}", capacity=10)
    await waitFor(lambda: leads(a), timeout=10, interval=POLL, what="a leading")
    (b,) = cluster(stop_after, tmp_path, own_redis_server, workers, 1, capacity=10)

    await waitFor(lambda: healthyWorkers(a), lambda n: n == 10, timeout=20, interval=POLL,
                  what="ten healthy workers")

    users = await defer.gatherResults([connect(a, f"user{i}") for i in range(50)])
    clients += users
    placed = {}
    for i, client in enumerate(users):
        placed[f"user{i}"] = (await client.ask("whoami"))["worker"]
    closes = defer.gatherResults([client.closed for client in users])

    a.signal(signal.SIGTERM)
    signalled = reactor.seconds()

    async def unhealthy():
        try:
            response = await treq.get(a.admin + "/healthz", timeout=1)
        except Exception:
            return False
        return response.code == 503
    await waitFor(unhealthy, timeout=1)  # at once, while users stay
    assert not closes.called

    codes = await closes.addTimeout(DRAIN + 5, reactor)
    assert {code for code, _ in codes} == {1001}
    assert reactor.seconds() - signalled >= DRAIN - 0.2  # users got the drain period

    await waitFor(lambda: leads(b), timeout=LEADER_TTL, interval=POLL,
                  what="b leading")  # handed over, not waited out
    assert a.process.wait(10) in (0, -signal.SIGTERM)

    again = await defer.gatherResults([connect(b, f"user{i}") for i in range(50)])
    clients += again
    for i, client in enumerate(again):
        assert (await client.ask("whoami"))["worker"] == placed[f"user{i}"]
