"""
History, the status page's last hour: samples on the injected clock into a
ring buffer, the pool's numbers as /metrics reads them, this instance's
handshakes per second; and GET /api/v1/history.
"""

import json

import pytest_twisted
import treq
from registry_contract import addHealthy, request
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.web.client import HTTPConnectionPool

from wslb.admin.api import makeAdminRoutes, makeAdminSite
from wslb.admin.history import History
from wslb.metrics import Metrics
from wslb.registry import DEAD
from wslb.registry.memory import MemoryRegistry

T0 = 1644334020.0


class Sampled:
    """A History every 5 s over a 30 s window, on a Clock, of a MemoryRegistry."""

    def __init__(self):
        self.clock = Clock()
        self.clock.advance(T0)
        self.registry = MemoryRegistry(self.clock)
        self.metrics = Metrics()
        self.history = History(self.clock, self.metrics, self.registry, interval=5, window=30)

    def handshakes(self, outcome, n):
        self.metrics.handshakes.labels(outcome).inc(n)


def test_a_sample_every_interval_and_the_window_at_most():
    s = Sampled()
    s.history.startService()  # the first sample at once
    for _ in range(9):
        s.clock.advance(5)
    samples = s.history.samples()
    assert [x["seq"] for x in samples] == [5, 6, 7, 8, 9, 10]  # 30 s of them
    assert [x["time"] for x in samples] == [T0 + 5 * i for i in range(4, 10)]
    assert [x["seq"] for x in s.history.samples(after=8)] == [9, 10]
    s.history.stopService()
    s.clock.advance(5)
    assert len(s.history.samples(after=9)) == 1  # no more sampling


@pytest_twisted.inlineCallbacks
def test_a_sample_holds_the_pools_numbers_and_handshakes_per_second():
    s = Sampled()
    registry, now = s.registry, s.clock.seconds
    yield addHealthy(registry, "w1", capacity=4, now=now())
    yield addHealthy(registry, "w2", capacity=2, now=now())
    yield addHealthy(registry, "gone", capacity=8, now=now())
    yield registry.setWorkerState("gone", DEAD, now())
    yield registry.addWorker("new", "ws://new.test:9000", "static", 1, now())
    for key, cost in (("a", 3), ("b", 2), ("c", 1)):
        yield registry.assign(request(key, cost), now())
    yield registry.release("c", "i1", now())  # c is in its grace
    yield registry.assign(request("d", 5), now())  # nothing has 5 free: queued
    s.history.startService()
    s.handshakes("ok", 10)
    s.handshakes("503", 5)
    s.clock.advance(5)
    first, second = s.history.samples()
    assert first["handshakes"] is None  # no sample before it
    assert second == {
        "seq": 2, "time": T0 + 5,
        "workers": {"starting": 1, "healthy": 2, "unhealthy": 0, "dead": 1},
        "load": 6, "capacity": 7,  # the dead worker's 8 do not count
        "sessions": 3, "sessions_in_grace": 1,
        "queue_length": 1, "queue_oldest_wait": 5.0,
        "handshakes": {"ok": 2.0, "503": 1.0, "400": 0.0, "401": 0.0, "403": 0.0,
                       "429": 0.0, "502": 0.0},
    }
    s.history.stopService()


class Unreachable:
    """A registry that does not answer (as Redis away does, once the call timed out)."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: defer.fail(defer.TimeoutError())


def test_a_registry_that_does_not_answer_leaves_a_gap_and_the_handshakes():
    s = Sampled()
    s.history = History(s.clock, s.metrics, Unreachable(), interval=5, window=30)
    s.history.startService()
    s.handshakes("503", 20)
    s.clock.advance(5)
    assert s.history.samples(after=1) == [
        {"seq": 2, "time": T0 + 5, "handshakes": {
            "ok": 0.0, "400": 0.0, "401": 0.0, "403": 0.0, "429": 0.0, "502": 0.0, "503": 4.0}},
    ]
    assert s.metrics.registry.get_sample_value("wslb_registry_errors_total") == 2
    s.history.stopService()


@pytest_twisted.ensureDeferred
async def test_api_v1_history_answers_the_samples_after_a_seq():
    s = Sampled()
    routes = makeAdminRoutes(s.registry, s.clock, lambda: defer.succeed(True))
    s.history.addRoutes(routes)
    port = reactor.listenTCP(0, makeAdminSite(routes, s.clock), interface="127.0.0.1")
    pool = HTTPConnectionPool(reactor, persistent=False)
    url = f"http://127.0.0.1:{port.getHost().port}/api/v1/history"

    async def get(query=""):
        response = await treq.get(url + query, pool=pool, timeout=5)
        return response.code, json.loads(await response.content())

    try:
        s.history.startService()
        for _ in range(3):
            s.clock.advance(5)
        code, body = await get("?after=2")
        assert code == 200
        assert {k: body[k] for k in ("last", "interval", "window", "now")} == {
            "last": 4, "interval": 5, "window": 30, "now": T0 + 15}
        assert [x["seq"] for x in body["samples"]] == [3, 4]
        assert [x["seq"] for x in (await get())[1]["samples"]] == [1, 2, 3, 4]
        assert await get("?after=two") == (
            400, {"error": "after must be a sample's seq (an integer)"})
    finally:
        s.history.stopService()
        await port.stopListening()
        await pool.closeCachedConnections()
