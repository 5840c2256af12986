"""
No slot leaks when Redis stalls (issue 12, item 4): a registry call is bounded
only on the client's side, so an ``assign`` whose caller gave up may still run
once Redis answers again. Whatever it bound is undone, and the pool is whole.
"""

import os
import signal

import pytest
import pytest_twisted
import treq
from _cluster_helpers import POLL, connect, fleet, getJSON
from _echo_helpers import closeAll
from _polling import waitFor
from _twistd_helpers import TwistdWslb
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater


async def loads(wslb):
    _, body = await getJSON(wslb.admin + "/api/v1/workers")
    return {w["id"]: w["load"] for w in body["workers"] if w["state"] == "healthy"}


@pytest.mark.timeout(90)
@pytest_twisted.ensureDeferred
async def test_assigns_lost_while_redis_was_stopped_leave_no_slot_taken(
        own_redis_server, tmp_path, stop_after, clients):
    workers = fleet(stop_after, 3)
    urls = ", ".join(f'"{w.url}"' for w in workers)
    wslb = stop_after(TwistdWslb(
        tmp_path, "registry.backend=redis", f'registry.url="{own_redis_server.url}"',
        "pool.provider=static", f"pool.static.workers=[{urls}]", "pool.capacity=1",
        "pool.min_spare=0", "pool.max_spare=0", "pool.health.interval=1",
        "queue.timeout=3s", "listen.drain_period=0",
    )).waitListening()
    await waitFor(lambda: _healthy(wslb, 3), timeout=30, interval=POLL)
    # One user first, so that Redis has the scripts: an EVALSHA answered
    # NOSCRIPT after its caller gave up is not sent again as EVAL.
    warmup = await connect(wslb, "warm-up")
    await warmup.ask("whoami")
    closeAll([warmup])
    response = await treq.delete(wslb.admin + "/api/v1/sessions/warm-up", timeout=5)
    assert response.code == 200

    redis = own_redis_server.process.pid
    os.kill(redis, signal.SIGSTOP)
    try:
        attempts = [defer.ensureDeferred(_tryConnect(wslb, f"stalled-{i}"))
                    for i in range(6)]
        await deferLater(reactor, 2.5)  # the thing tested: Redis stalled this long
    finally:
        os.kill(redis, signal.SIGCONT)
    outcomes = await defer.gatherResults(attempts)
    clients += [c for c in outcomes if c is not None]
    closeAll(clients)

    async def allIdle():
        current = await loads(wslb)
        return len(current) == 3 and set(current.values()) == {0}

    await waitFor(allIdle, timeout=15, interval=POLL)
    for i in range(3):
        client = await connect(wslb, f"after-{i}", wait=10)
        clients.append(client)
        assert (await client.ask("whoami"))["session"] == f"after-{i}"


async def _healthy(wslb, n):
    try:
        current = await loads(wslb)
    except Exception:
        return False
    return len(current) == n


async def _tryConnect(wslb, key):
    """A user during the stall: served, or refused (None)."""
    try:
        return await connect(wslb, key, wait=10)
    except Exception:
        return None
