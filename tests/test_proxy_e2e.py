"""
End to end through a running wslb (in this process, real loopback sockets)
to real echo worker processes.
"""

import json

import pytest
import pytest_twisted
from _echo_helpers import getJSON
from _polling import waitFor
from _raw_ws import connectRaw, upgradeRequest
from _wslb_helpers import rawHandshake, scrape
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater


@pytest_twisted.ensureDeferred
async def test_text_and_binary_echo_and_subprotocol(echo_workers, start_wslb, clients):
    wslb = await start_wslb(echo_workers)
    client = await wslb.connect("alice", protocols=["scene.v2", "scene.v1"])
    clients.append(client)
    assert client.response.protocol == "scene.v2"  # the worker's choice
    client.sendMessage(b"hello")
    assert await client.nextMessage() == (b"hello", False)
    client.sendMessage(b"\x00\xff" * 10, isBinary=True)
    assert await client.nextMessage() == (b"\x00\xff" * 10, True)


@pytest_twisted.ensureDeferred
async def test_large_fragmented_message(echo_workers, start_wslb, clients):
    wslb = await start_wslb(echo_workers)
    client = await wslb.connect("big")
    clients.append(client)
    payload = bytes(range(256)) * (5 * 1024 * 4)  # 5 MiB
    client.beginMessage(isBinary=True)
    chunk = 64 * 1024
    for i in range(0, len(payload), chunk):
        client.sendMessageFrame(payload[i:i + chunk])
    client.endMessage()
    got, isBinary = await client.nextMessage()
    assert isBinary and got == payload


@pytest_twisted.ensureDeferred
async def test_forwarded_headers_seen_by_worker(echo_workers, start_wslb, clients):
    wslb = await start_wslb(echo_workers)
    client = await wslb.connect(
        "hdrs", path="/scene/7?quality=high",
        headers={"X-Forwarded-For": "6.6.6.6", "Authorization": "Bearer t",
                 "Origin": "https://app.example.com"},
    )
    clients.append(client)
    seen = await client.ask("whoami")
    headers = seen["headers"]
    assert seen["session"] == "hdrs"
    assert seen["path"].startswith("/scene/7")
    assert headers["x-wslb-session"] == "hdrs"
    assert headers["x-forwarded-for"] == "127.0.0.1"  # the client's spoof replaced
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{wslb.port}"
    assert headers["authorization"] == "Bearer t"
    assert headers["origin"] == "https://app.example.com"


@pytest_twisted.ensureDeferred
async def test_close_codes_pass_both_ways(echo_workers, start_wslb, clients):
    wslb = await start_wslb(echo_workers)
    client = await wslb.connect("closer")
    clients.append(client)
    client.sendMessage(b"close 4003 worker says bye")
    assert await client.waitClosed() == (4003, "worker says bye")

    client = await wslb.connect("closer2")
    clients.append(client)
    worker = (await client.ask("whoami"))["worker"]
    client.sendClose(4002, "user says bye")
    await client.waitClosed()
    http = next(w.http for w in echo_workers if worker.endswith(str(w.port)))

    def seenClose(stats):
        return any(c["session"] == "closer2" and c["code"] == 4002
                   for c in stats["closes"])

    await waitFor(lambda: getJSON(http + "/stats"), lambda r: seenClose(r[1]),
                  what="the worker seeing 4002 for closer2")


@pytest_twisted.ensureDeferred
async def test_sticky_reconnect_and_distinct_keys(echo_workers, start_wslb, clients):
    wslb = await start_wslb(echo_workers)
    first = await wslb.connect("sticky")
    clients.append(first)
    first.sendMessage(b"one")
    await first.nextMessage()
    seen = await first.ask("whoami")
    assert seen["count"] == 1
    first.sendClose(1000)
    await first.waitClosed()

    again = await wslb.connect("sticky")
    clients.append(again)
    seen2 = await again.ask("whoami")
    assert seen2["worker"] == seen["worker"]
    assert seen2["count"] == 1  # the worker's per-session state continued
    other = await wslb.connect("someone-else")
    clients.append(other)
    assert (await other.ask("whoami"))["worker"] != seen["worker"]


@pytest.mark.workers(1)
@pytest_twisted.ensureDeferred
async def test_worker_unreachable_gives_502(echo_workers, start_wslb, clients):
    wslb = await start_wslb(echo_workers)
    echo_workers[0].kill()
    status, _ = await rawHandshake(wslb.port, headers={"X-WSLB-Session": "k"})
    assert status == 502


@pytest.mark.workers(1)
@pytest_twisted.ensureDeferred
async def test_worker_dropping_gives_1012(echo_workers, start_wslb, clients):
    wslb = await start_wslb(echo_workers)
    client = await wslb.connect("dropped")
    clients.append(client)
    await client.ask("whoami")
    echo_workers[0].kill()
    code, _ = await client.waitClosed()
    assert code == 1012


@pytest.mark.workers(2)
@pytest_twisted.ensureDeferred
async def test_queue_fifo_served_when_sessions_end(echo_workers, start_wslb, clients):
    wslb = await start_wslb(echo_workers, "queue.timeout=20")
    holders = [await wslb.connect(f"holder{i}") for i in range(2)]
    clients.extend(holders)
    order = []
    waiting = []
    for i in range(3):
        d = wslb.connect(f"waiter{i}")
        d.addCallback(lambda c, i=i: (order.append(i), clients.append(c), c)[2])
        waiting.append(d)
        await wslb.waitQueued(i + 1)  # arrive in a known order
    assert order == []  # all held
    # The slot a session frees (its worker ends it) goes to the oldest
    # waiter, whose session then frees it in turn. One slot at a time:
    # two freed at once would race their worker handshakes.
    ender = holders[0]
    for n in range(3):
        ender.sendMessage(b"end")
        await ender.waitClosed()
        ender = await waiting[n]
        assert order == list(range(n + 1))


@pytest.mark.workers(1)
@pytest_twisted.ensureDeferred
async def test_queue_timeout_and_full_queue_give_503(echo_workers, start_wslb, clients):
    wslb = await start_wslb(echo_workers, "queue.timeout=2", "queue.max_length=1")
    clients.append(await wslb.connect("holder"))
    # Started now (a coroutine left alone would only start when awaited).
    waiting = defer.ensureDeferred(rawHandshake(wslb.port, headers={"X-WSLB-Session": "w1"}))
    await wslb.waitQueued(1)
    asked = reactor.seconds()
    status, headers = await rawHandshake(wslb.port, headers={"X-WSLB-Session": "w2"})
    assert status == 503 and int(headers["retry-after"]) >= 1  # queue full ...
    assert reactor.seconds() - asked < 1  # ... said at once, not after the queue's timeout
    status, headers = await waiting
    assert status == 503 and int(headers["retry-after"]) >= 1  # waited too long


@pytest.mark.workers(1)
@pytest.mark.parametrize("grace", [0, 1.5])
@pytest_twisted.ensureDeferred
async def test_client_giving_up_leaves_queue_after_its_rejoin_grace(
        echo_workers, start_wslb, clients, grace):
    wslb = await start_wslb(echo_workers, "queue.timeout=20", f"queue.rejoin_grace={grace}")
    clients.append(await wslb.connect("holder"))
    waiter = await connectRaw(wslb.port)
    waiter.transport.write(upgradeRequest(wslb.port, "/?session=gives-up"))
    await wslb.waitQueued(1)
    waiter.transport.abortConnection()  # mid-handshake
    left = reactor.seconds()
    await wslb.waitQueued(0)
    # Dropped at once without a grace; with one, when it has run out
    # (the queue's heartbeat, every second, finds it).
    assert grace <= reactor.seconds() - left < grace + 1.5


@pytest.mark.workers(1)
@pytest_twisted.ensureDeferred
async def test_what_is_not_a_get_is_answered_405(echo_workers, start_wslb):
    wslb = await start_wslb(echo_workers)
    client = await connectRaw(wslb.port)
    client.transport.write(upgradeRequest(wslb.port).replace(b"GET", b"PUT", 1))
    await client.closed.addTimeout(5, reactor)
    assert client.received.startswith(b"HTTP/1.1 405 ")


@pytest.mark.workers(1)
@pytest_twisted.ensureDeferred
async def test_refusals(echo_workers, start_wslb, clients):
    wslb = await start_wslb(
        echo_workers, 'listen.allowed_origins=["https://*.example.com"]',
        "listen.max_connections=2", "listen.max_message_size=1024",
        "session.issue_cookie=false", "pool.capacity=5")
    port = wslb.port
    assert (await rawHandshake(port, headers={"X-WSLB-Session": "bad key!"}))[0] == 400
    assert (await rawHandshake(port))[0] == 400  # no key, none minted
    assert (await rawHandshake(port, headers={
        "X-WSLB-Session": "k", "Origin": "https://evil.com"}))[0] == 403
    client = await wslb.connect("k", headers={"Origin": "https://app.example.com"})
    clients.append(client)
    client.sendMessage(b"x" * 2048, isBinary=True)
    code, _ = await client.waitClosed()
    assert code == 1009
    held = [await wslb.connect(f"k{i}") for i in range(2)]
    clients.extend(held)
    status, _ = await rawHandshake(port, headers={"X-WSLB-Session": "k9"})
    assert status == 0  # max_connections: closed at accept, nothing read


@pytest.mark.workers(1)
@pytest_twisted.ensureDeferred
async def test_minted_cookie_is_sticky(echo_workers, start_wslb, clients):
    wslb = await start_wslb(echo_workers, "pool.capacity=5")
    status, headers = await rawHandshake(wslb.port)
    assert status == 101
    cookie = headers["set-cookie"].split(";")[0]
    assert cookie.startswith("wslb_session=")
    client = await wslb.connect(headers={"Cookie": cookie})
    clients.append(client)
    seen = await client.ask("whoami")
    assert seen["session"] == cookie.split("=", 1)[1]
    assert json.dumps(seen)


@pytest.mark.workers(1)
@pytest_twisted.ensureDeferred
async def test_metrics_count_what_happened(echo_workers, start_wslb, clients):
    wslb = await start_wslb(echo_workers, "pool.capacity=5")
    before = await scrape(wslb)
    client = await wslb.connect("metered")
    clients.append(client)
    for _ in range(3):
        client.sendMessage(b"12345")
        await client.nextMessage()
    assert (await rawHandshake(wslb.port, headers={"X-WSLB-Session": "bad key"}))[0] == 400
    after = await scrape(wslb)

    def moved(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0)

    assert moved("wslb_relay_messages_total", direction="to_worker") == 3
    assert moved("wslb_relay_messages_total", direction="to_user") == 3
    assert moved("wslb_relay_bytes_total", direction="to_worker") == 15
    assert moved("wslb_handshakes_total", outcome="ok") == 1
    assert moved("wslb_handshakes_total", outcome="400") == 1
    assert after[("wslb_connections", ())] == 1
    assert after[("wslb_sessions", ())] == 1
    assert after[("wslb_workers", (("state", "healthy"),))] == 1
    assert after[("wslb_leader", ())] == 1


@pytest.mark.workers(1)
@pytest_twisted.ensureDeferred
async def test_grace_expiry_frees_the_slot_and_serves_the_queue_at_once(
        echo_workers, start_wslb, clients):
    wslb = await start_wslb(
        echo_workers, "session.reconnect_grace=1s", "queue.timeout=20",
        "pool.scale_interval=60")
    holder = await wslb.connect("leaves")
    clients.append(holder)
    waiting = wslb.connect("next")
    await wslb.waitQueued(1)
    left = reactor.seconds()
    holder.sendClose(1000)
    await holder.waitClosed()
    served = await waiting
    clients.append(served)
    waited = reactor.seconds() - left
    assert 1 <= waited < 2.5  # the grace, not a scaler tick or queue heartbeat later
    assert (await served.ask("whoami"))["session"] == "next"
    _, gone = await getJSON(wslb.admin + "/api/v1/sessions/leaves")
    assert "error" in gone


@pytest.mark.workers(1)
@pytest_twisted.ensureDeferred
async def test_auto_ping_reaches_the_user(echo_workers, start_wslb, clients):
    wslb = await start_wslb(echo_workers, "listen.auto_ping=2s")
    client = await wslb.connect("pinged")
    clients.append(client)
    pings = []
    client.onPing = lambda payload: (pings.append(payload), client.sendPong(payload))
    await waitFor(lambda: pings, timeout=3.5, what="a ping within 2 s and a bit")
    client.sendMessage(b"still here")
    assert await client.nextMessage() == (b"still here", False)


@pytest.mark.workers(1)
@pytest_twisted.ensureDeferred
async def test_idle_timeout_closes_silent_users_with_1008(echo_workers, start_wslb, clients):
    wslb = await start_wslb(
        echo_workers, "listen.idle_timeout=2s", "listen.auto_ping=2s", "pool.capacity=5")
    silent = await wslb.connect("silent")
    chatty = await wslb.connect("chatty")
    clients += [silent, chatty]
    opened = reactor.seconds()
    while not silent.closed.called and reactor.seconds() - opened < 5:
        chatty.sendMessage(b"still here")
        await chatty.nextMessage()
        await deferLater(reactor, 0.4)  # the thing tested: chatty speaks now and then, silent never
    code, _ = await silent.waitClosed()
    assert code == 1008
    assert 2 <= reactor.seconds() - opened < 4  # pings did not keep it alive
    assert not chatty.closed.called
