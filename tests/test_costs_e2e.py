"""
Session costs end to end, through a running wslb (in this process, real
loopback sockets) to real echo worker processes: costs come from the query
string (``cost.sources`` has ``query:cost`` by default) and fill workers of
capacity 1000 as ``placement`` says; a cost no worker can take is refused at
the handshake until a large enough worker registers.
"""

import json

import pytest
import pytest_twisted
import treq
from _echo_helpers import TIMEOUT, getJSON
from _polling import waitFor

from wslb.proxy.capacity import REFRESH_INTERVAL

CAPACITY = "pool.capacity=1000"


async def refusal(wslb, key, query):
    """The status line wslb refused a handshake with (it must refuse)."""
    with pytest.raises(ConnectionError) as refused:
        await wslb.connect(key, path="/?" + query)
    return str(refused.value)


async def stats(worker):
    _, body = await getJSON(worker.http + "/stats")
    return body


@pytest.mark.parametrize("placement, expected, loads", [
    # 100 + 300 + 600 fill the first worker; the next 100 goes to the other.
    ("pack", [0, 0, 0, 1], [1000, 100]),
    ("spread", [0, 1, 0, 1], [700, 400]),  # always the emptiest
])
@pytest_twisted.ensureDeferred
async def test_placement_with_costs(echo_workers, start_wslb, clients, placement, expected, loads):
    wslb = await start_wslb(echo_workers, CAPACITY, f"pool.placement={placement}")
    # Ties go to the lowest worker id (host:port): order the workers so.
    byId = sorted(echo_workers, key=lambda w: f"127.0.0.1:{w.port}")
    echoIds = [f"echo-{w.port}" for w in byId]
    reached = []
    for key, cost in [("a", 100), ("b", 300), ("c", 600), ("d", 100)]:
        client = await wslb.connect(key, path=f"/?cost={cost}")
        clients.append(client)
        reached.append(echoIds.index((await client.ask("whoami"))["worker"]))
    assert reached == expected
    assert [(await stats(w))["load"] for w in byId] == loads  # seen by the workers
    registry = {w["url"]: w["load"] for w in await wslb.workers()}
    assert [registry[w.url] for w in byId] == loads


@pytest_twisted.ensureDeferred
async def test_a_full_pack_keeps_a_reconnecting_session_and_queues_newcomers(
        echo_workers, start_wslb, clients):
    wslb = await start_wslb(echo_workers[:1], CAPACITY)
    for key, cost in [("a", 100), ("b", 300), ("c", 600)]:
        clients.append(await wslb.connect(key, path=f"/?cost={cost}"))
    first = clients[0]
    first.sendClose(1000)
    await first.waitClosed()
    again = await wslb.connect("a", path="/?cost=100")  # its slot is still reserved
    clients.append(again)
    assert (await again.ask("whoami"))["worker"] == f"echo-{echo_workers[0].port}"
    waiting = wslb.connect("e", path="/?cost=100")  # the worker is full: queued
    await wslb.waitQueued(1)
    assert not waiting.called
    clients[2].sendMessage(b"end")  # c (600) ends: its slot is freed
    newcomer = await waiting
    clients.append(newcomer)
    assert (await stats(echo_workers[0]))["load"] == 500


@pytest_twisted.ensureDeferred
async def test_a_cost_above_every_capacity_is_400_until_a_larger_worker_registers(
        echo_workers, start_wslb, clients):
    static, large = echo_workers
    wslb = await start_wslb([static], CAPACITY)
    assert "[400]: cost 2000 is larger than any worker's capacity (1000)" in (
        await refusal(wslb, "huge", "cost=2000"))
    response = await treq.post(
        wslb.admin + "/api/v1/workers",
        json.dumps({"url": large.url, "capacity": 4000}).encode(),
        headers={"Content-Type": ["application/json"]}, timeout=TIMEOUT,
    )
    assert response.code == 201, await response.text()

    async def connectHuge():
        try:
            return await wslb.connect("huge", path="/?cost=2000")
        except ConnectionError as e:
            assert "[400]" in str(e), e

    # Accepted once the refresh saw it (and it passed its health check).
    client = await waitFor(connectHuge, timeout=REFRESH_INTERVAL + 1, interval=0.1,
                           what="a cost of 2000 accepted")
    clients.append(client)
    assert (await client.ask("whoami"))["worker"] == f"echo-{large.port}"
    assert (await stats(large))["load"] == 2000
    assert "[400]: cost 5000 is larger than any worker's capacity (4000)" in (
        await refusal(wslb, "huger", "cost=5000"))


@pytest_twisted.ensureDeferred
async def test_malformed_costs_are_400_and_classes_name_costs(echo_workers, start_wslb, clients):
    wslb = await start_wslb(echo_workers[:1], CAPACITY, "cost.classes={complex = 700}")
    for bad in ["abc", "0", "-5", "1.5", "", "simple"]:
        assert ("[400]: cost from query:cost must be a positive integer or one of "
                "['complex']") in await refusal(wslb, "k", f"cost={bad}")
    client = await wslb.connect("k", path="/?cost=complex")
    clients.append(client)
    assert (await wslb.workers())[0]["load"] == 700


@pytest_twisted.ensureDeferred
async def test_allow_overtake_lets_small_sessions_pass_a_large_head(
        echo_workers, start_wslb, clients):
    wslb = await start_wslb(echo_workers[:1], CAPACITY, "queue.allow_overtake=true")
    for key, cost in [("a", 600), ("x", 300)]:
        clients.append(await wslb.connect(key, path=f"/?cost={cost}"))
    head = wslb.connect("head", path="/?cost=600")
    await wslb.waitQueued(1)
    small = wslb.connect("small", path="/?cost=200")  # room 100: queued too
    await wslb.waitQueued(2)
    assert not head.called and not small.called
    clients[1].sendMessage(b"end")  # x (300) ends: room 400, still none for the head
    clients.append(await small)  # served from behind the head on the retry
    assert not head.called
    clients.append(await wslb.connect("newcomer", path="/?cost=100"))  # passes at once
    assert (await stats(echo_workers[0]))["load"] == 900
    clients[0].sendMessage(b"end")  # a (600) ends: the head fits and goes first
    clients.append(await head)
    assert (await stats(echo_workers[0]))["load"] == 900
