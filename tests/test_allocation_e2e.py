"""
Allocation before connect (POST /api/v1/sessions) through a running wslb (in
this process) with real echo workers: an application binds a worker for a
key, and the user's later handshake with that key reaches that worker.
"""

import json

import pytest
import pytest_twisted
import treq
from _cluster_helpers import workerStats
from _echo_helpers import TIMEOUT, getJSON
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

JSON = {"Content-Type": "application/json"}


async def post(wslb, body, path="/api/v1/sessions"):
    response = await treq.post(wslb.admin + path, json.dumps(body).encode(), headers=JSON,
                               timeout=TIMEOUT + 10)
    return response.code, await response.json(), response


def workerOf(echo_workers, url):
    [worker] = [w for w in echo_workers if w.url == url]
    return worker


@pytest.mark.timeout(90)
@pytest_twisted.ensureDeferred
async def test_an_allocated_session_is_bound_and_its_user_reaches_that_worker(
        echo_workers, start_wslb, clients):
    wslb = await start_wslb(echo_workers, "queue.timeout=30")
    code, first, _ = await post(wslb, {"key": "alloc-1", "cost": 1})
    assert code == 201, first
    assert first["key"] == "alloc-1" and first["url"] == first["worker"]["url"]
    assert first["worker"]["sessions"] == ["alloc-1"] and first["worker"]["load"] == 1
    # The same key again: the same binding.
    code, again, _ = await post(wslb, {"key": "alloc-1"})
    assert code == 201 and again["worker"]["id"] == first["worker"]["id"]
    # Bound, nobody connected: it waits for its user under its reconnect grace.
    _, session = await getJSON(wslb.admin + "/api/v1/sessions/alloc-1")
    assert (session["worker"], session["connected"]) == (first["worker"]["id"], False)

    chosen = workerOf(echo_workers, first["url"])
    other = next(w for w in echo_workers if w is not chosen)
    # Its user arrives later: wslb sends it to that worker, whatever the placement.
    code, second, _ = await post(wslb, {"key": "alloc-2"})
    assert code == 201 and second["url"] == other.url
    user = await wslb.connect("alloc-1")
    clients.append(user)
    assert (await user.ask("whoami"))["session"] == "alloc-1"
    assert workerStats(chosen)["sessions"]["alloc-1"]["connections"] == 1
    assert "alloc-1" not in workerStats(other)["sessions"]
    _, session = await getJSON(wslb.admin + "/api/v1/sessions/alloc-1")
    assert session["connected"] is True


@pytest.mark.workers(1)
@pytest.mark.timeout(90)
@pytest_twisted.ensureDeferred
async def test_with_every_worker_full_an_allocation_is_queued_and_then_bound(
        echo_workers, start_wslb, clients):
    [worker] = echo_workers
    wslb = await start_wslb(echo_workers, "queue.timeout=30")
    code, _, _ = await post(wslb, {"key": "holder"})
    assert code == 201
    code, queued, _ = await post(wslb, {"key": "later"})
    assert code == 202, queued
    assert queued["queued"] == 0 and queued["ticket"]
    code, next_, _ = await post(wslb, {"key": "later-still", "wait": 0})
    assert (code, next_["queued"]) == (202, 1)
    # Idempotent while queued: the same ticket, the same place.
    code, again, _ = await post(wslb, {"key": "later"})
    assert (code, again["ticket"], again["queued"]) == (202, queued["ticket"], 0)

    # The worker frees: the queued allocation is bound without being asked again.
    response = await treq.delete(wslb.admin + "/api/v1/sessions/holder", timeout=TIMEOUT)
    assert response.code == 200
    code, bound, _ = await post(wslb, {"key": "later", "wait": 5})
    assert code == 201 and bound["url"] == worker.url

    # wait > 0 holds the answer until bound (here: when "later" ends).
    waiting = defer.ensureDeferred(post(wslb, {"key": "later-still", "wait": 20}))
    await deferLater(reactor, 0.5)  # the thing tested: no answer meanwhile (it comes at once)
    assert not waiting.called
    started_at = reactor.seconds()
    await treq.delete(wslb.admin + "/api/v1/sessions/later", timeout=TIMEOUT)
    code, bound, _ = await waiting
    assert code == 201 and bound["key"] == "later-still"
    assert reactor.seconds() - started_at < 5
    user = await wslb.connect("later-still")
    clients.append(user)
    assert (await user.ask("whoami"))["session"] == "later-still"
    assert workerStats(worker)["sessions"]["later-still"]["connections"] == 1

    # Not bound within wait: 202 with its place, after that long.
    started_at = reactor.seconds()
    code, queued, _ = await post(wslb, {"key": "patient", "wait": 1.5})
    assert (code, queued["queued"]) == (202, 0)
    assert 1.4 <= reactor.seconds() - started_at < 4


@pytest.mark.workers(1)
@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_a_full_queue_is_503_and_bad_requests_are_400(echo_workers, start_wslb):
    wslb = await start_wslb(echo_workers, "queue.timeout=30", "queue.max_length=1")
    assert (await post(wslb, {"key": "a"}))[0] == 201
    assert (await post(wslb, {"key": "b"}))[0] == 202
    code, body, response = await post(wslb, {"key": "c"})
    assert (code, body) == (503, {"error": "the queue is full"})
    assert response.headers.getRawHeaders("Retry-After") == ["1"]
    for bad, text in [
        ({"cost": 1}, "missing: key"), ({"key": "a b"}, "key must be"),
        ({"key": "x" * 129}, "key must be"), ({"key": 7}, "key must be"),
        ({"key": "k", "cost": 0}, "cost must be a positive integer"),
        ({"key": "k", "cost": True}, "cost must be a positive integer"),
        ({"key": "k", "cost": 2}, "larger than any worker's capacity (1)"),
        ({"key": "k", "wait": -1}, "wait must be a number of seconds"),
        ({"key": "k", "wait": "5"}, "wait must be a number of seconds"),
        ({"key": "k", "please": 1}, "unknown: please"),
    ]:
        code, body, _ = await post(wslb, bad)
        assert code == 400 and text in body["error"], (bad, body)
