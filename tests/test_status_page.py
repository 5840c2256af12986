"""
GET /status in a real headless Chromium, against a real admin Site on
127.0.0.1 over a MemoryRegistry; and GET /api/v1/status, which it polls.
"""

import json

import pytest_twisted
import treq
from _browser import parse, render
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from wslb.admin.api import PAGE, makeAdminRoutes, makeAdminSite
from wslb.admin.history import History
from wslb.admin.status_page import StatusAPI, StatusPage
from wslb.metrics import Metrics
from wslb.pool.scaler import ScalerAction
from wslb.registry import DEAD, HEALTHY, UNHEALTHY, Assigned, AssignRequest, Queued
from wslb.registry.memory import MemoryRegistry

T0 = 1644334020.0  # 2022-02-08T15:27:00Z
TOKEN = "page-s3cret"
HOSTILE = "<img src=x onerror=alert(1)>"
INSTANCE = "a1b2c3d4e5f6"
ACTIONS = [  # oldest first, as the scaler keeps them
    ScalerAction(T0 + 10, "launch", ("w-starting",), 7),
    ScalerAction(T0 + 60, "terminate", ("10.0.0.9:9000", "10.0.0.8:9000"), 7),
]


HTTP_REQUESTS = {"alice": 7, "bob": 3}  # plain HTTP requests this instance proxied


class StatusSite:
    """
    The admin Site as service.py builds it, status page included, with a
    registry holding workers in every state, sessions connected and in
    grace, and one queued user; its clock stands at T0 + 125 s.
    """

    def __init__(self, token=""):
        self.clock = Clock()
        self.clock.advance(T0)
        self.registry = MemoryRegistry(self.clock)
        routes = makeAdminRoutes(self.registry, self.clock, lambda: defer.succeed(True), token,
                                 httpRequests=lambda key: HTTP_REQUESTS.get(key, 0))
        routes.mount("status", StatusPage())
        StatusAPI(
            INSTANCE, self.clock,
            lambda: {"leader": True, "fencing_token": 7},
            lambda: ACTIONS,
        ).addRoutes(routes)
        self.history = History(self.clock, Metrics(), self.registry)
        self.history.addRoutes(routes)
        self.site = makeAdminSite(routes, self.clock)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    async def populate(self):
        """The registry's story, sampled by the history as the clock moves."""
        self.history.startService()
        r, now = self.registry, self.clock.seconds()
        for worker, capacity in (("10.0.0.1:9000", 4), (HOSTILE, 2), ("w-draining", 2),
                                 ("w-sick", 2), ("w-dead", 2), ("w-starting", 2)):
            await r.addWorker(worker, f"ws://{worker}", "static", capacity, now)
        self.clock.advance(30)
        # One healthy worker at a time, so each session lands where the test wants it.
        for worker, sessions in (("10.0.0.1:9000", [("alice", 2), ("bob", 1)]),
                                 (HOSTILE, [(HOSTILE, 2)]),
                                 ("w-draining", [("carol", 1)])):
            await r.setWorkerState(worker, HEALTHY, self.clock.seconds())
            for key, cost in sessions:
                assert isinstance(await self.assign(key, cost), Assigned)
            await r.setDraining(worker, True)
        await r.setDraining("10.0.0.1:9000", False)
        await r.setDraining(HOSTILE, False)
        await r.release("bob", INSTANCE, self.clock.seconds())  # bob is in his grace
        await r.setWorkerState("w-sick", UNHEALTHY, self.clock.seconds())
        await r.setWorkerState("w-dead", DEAD, self.clock.seconds())
        self.clock.advance(70)
        assert isinstance(await self.assign("dave", 2), Queued)  # nothing has 2 free
        self.clock.advance(20)
        await r.heartbeat("10.0.0.1:9000", self.clock.seconds())
        self.clock.advance(5)

    def assign(self, key, cost):
        return self.registry.assign(AssignRequest(key, cost, INSTANCE), self.clock.seconds())

    async def get(self, path):
        response = await treq.get(self.url + path, pool=self.pool, timeout=5)
        return response, await response.content()

    async def close(self):
        await defer.maybeDeferred(self.history.stopService)
        await defer.maybeDeferred(self.port.stopListening)
        await self.pool.closeCachedConnections()


@pytest_twisted.async_yield_fixture()
async def status():
    site = StatusSite()
    await site.populate()
    yield site
    await site.close()


@pytest_twisted.ensureDeferred
async def test_the_page_shows_workers_sessions_queue_leader_and_scaler_actions(status, tmp_path):
    html, screenshot = await render(status.url + "/status", tmp_path)
    dom = parse(html)

    assert "hidden" in dom.byId("banner").attrs
    assert dom.byId("instance").text() == INSTANCE
    assert dom.byId("role").text() == "leader"

    workers = dom.byId("workers").cells()
    ids = [row[0].all("div")[0].text() for row in workers]
    assert ids == ["10.0.0.1:9000", HOSTILE, "w-dead", "w-draining", "w-sick", "w-starting"]
    assert workers[1][0].all("div")[1].text() == f"static · ws://{HOSTILE}"
    byWorker = {id: [cell.text() for cell in row[1:]] for id, row in zip(ids, workers)}
    # state, load / capacity, sessions, age (since T0), last seen
    assert byWorker["10.0.0.1:9000"] == ["healthy", "3 / 4", "2", "2m 5s", "5s ago"]
    assert byWorker[HOSTILE] == ["healthy", "2 / 2", "1", "2m 5s", "1m 35s ago"]
    assert byWorker["w-draining"] == ["healthy draining", "1 / 2", "1", "2m 5s", "1m 35s ago"]
    assert byWorker["w-sick"][:2] == ["unhealthy", "0 / 2"]
    assert byWorker["w-dead"][:2] == ["dead", "0 / 2"]
    assert byWorker["w-starting"] == ["starting", "0 / 2", "0", "2m 5s", "never"]

    sessions = {row[0]: row[1:] for row in dom.byId("sessions").rows()}
    assert sessions == {
        HOSTILE: [HOSTILE, "2", "connected", "0", "1m 35s ago"],
        "alice": ["10.0.0.1:9000", "2", "connected", "7", "1m 35s ago"],
        "bob": ["10.0.0.1:9000", "1", "in grace", "3", "1m 35s ago"],
        "carol": ["w-draining", "1", "connected", "0", "1m 35s ago"],
    }

    assert dom.byId("queue-length").text() == "1"
    assert dom.byId("queue-wait").text() == "oldest waiting 25s"
    assert dom.byId("leader").text() == "leader"
    assert dom.byId("fencing-token").text() == "fencing token 7"
    assert dom.byId("workers-total").text() == "6"
    assert dom.byId("load-total").text() == "6 / 12"  # the dead worker's 2 do not count
    assert dom.byId("sessions-split").text() == "3 connected · 1 in grace"

    assert dom.byId("actions").rows() == [  # newest first
        ["15:28:00 (1m 5s ago)", "terminate", "10.0.0.9:9000, 10.0.0.8:9000", "7"],
        ["15:27:10 (1m 55s ago)", "launch", "w-starting", "7"],
    ]

    # The last hour, as the history sampled it (its last sample: the numbers above).
    assert legends(dom) == LAST_SAMPLE
    samples = len(status.history.samples())
    for path in dom.byId("chart-workers").all("path"):
        assert path.attrs["d"].count(",") == samples, path.attrs

    # The hostile id and key are text: no element was made of them.
    assert dom.all("img") == []
    assert [s.attrs.get("src") for s in dom.all("script")] == ["status/charts.js",
                                                                "status/status.js"]

    assert screenshot.stat().st_size > 20_000


CHARTS = ("chart-sessions", "chart-queue", "chart-workers", "chart-load", "chart-handshakes")
LAST_SAMPLE = {  # the charts' legends: each series and its last value
    "chart-sessions": ["connected 3", "in grace 1"],
    "chart-queue": ["waiting 1", "oldest wait 25s"],
    "chart-workers": ["healthy 3", "starting 1", "unhealthy 1", "dead 1"],
    "chart-load": ["load 6", "capacity 12"],
    "chart-handshakes": ["ok 0/s"],
}


def legends(dom):
    return {chart: [item.text() for item in dom.byId(chart).all("li")] for chart in CHARTS}


@pytest_twisted.async_yield_fixture()
async def guarded():
    site = StatusSite(token=TOKEN)
    await site.populate()
    yield site
    await site.close()


@pytest_twisted.ensureDeferred
async def test_with_a_token_the_page_asks_for_it_and_shows_nothing_without(guarded, tmp_path):
    html, _ = await render(guarded.url + "/status", tmp_path, budget_ms=1000)
    dom = parse(html)
    assert "hidden" not in dom.byId("login").attrs
    assert "needs its token" in dom.byId("banner").text()
    assert dom.byId("workers").rows() == [] and dom.byId("sessions").rows() == []
    assert legends(dom) == dict.fromkeys(CHARTS, [])  # no chart drawn


@pytest_twisted.ensureDeferred
async def test_with_a_token_the_page_keeps_it_for_the_tab_and_polls_with_it(guarded, tmp_path):
    """Given once (here in the fragment, which no server sees), kept in sessionStorage."""
    html, _ = await render(f"{guarded.url}/status#token={TOKEN}", tmp_path, budget_ms=5000)
    dom = parse(html)
    assert "hidden" in dom.byId("login").attrs and "hidden" in dom.byId("banner").attrs
    assert len(dom.byId("workers").rows()) == 6
    assert {row[0] for row in dom.byId("sessions").rows()} == {HOSTILE, "alice", "bob", "carol"}
    assert legends(dom) == LAST_SAMPLE  # the charts' history came with the token too


@pytest_twisted.async_yield_fixture()
async def crowded():
    """More sessions than a page of the API holds: PAGE + 20, on one worker."""
    site = StatusSite()
    site.history.startService()
    await site.registry.addWorker("w-big", "ws://w-big", "static", PAGE + 100, T0)
    await site.registry.setWorkerState("w-big", HEALTHY, T0)
    for i in range(PAGE + 20):
        await site.assign(f"user{i:04}", 1)
    site.clock.advance(site.history.interval)  # a sample of them
    yield site
    await site.close()


@pytest_twisted.ensureDeferred
async def test_a_table_shows_a_page_and_links_the_next(crowded, tmp_path):
    html, _ = await render(crowded.url + "/status", tmp_path)
    dom = parse(html)
    keys = [row[0] for row in dom.byId("sessions").rows()]
    assert keys == [f"user{i:04}" for i in range(PAGE)]
    assert dom.byId("sessions-total").text() == str(PAGE + 20)  # the pool's count, not the page's
    [following] = dom.byId("sessions-pager").all("a")
    assert following.attrs["href"] == f"?sessions=user{PAGE - 1:04}"
    assert dom.byId("workers-pager").all("a") == []

    html, _ = await render(crowded.url + "/status" + following.attrs["href"], tmp_path)
    dom = parse(html)
    assert [row[0] for row in dom.byId("sessions").rows()] == [
        f"user{i:04}" for i in range(PAGE, PAGE + 20)]
    [first] = dom.byId("sessions-pager").all("a")
    assert (first.text(), first.attrs["href"]) == ("first page", "?")


@pytest_twisted.ensureDeferred
async def test_a_failing_poll_shows_the_unreachable_banner_over_the_last_data(status, tmp_path):
    """The first poll's five requests are answered; then every connection to the API is cut."""
    status.site.resource = CutAfter(status.site.resource, answered=5)
    html, _ = await render(status.url + "/status", tmp_path)
    dom = parse(html)

    banner = dom.byId("banner")
    assert "hidden" not in banner.attrs
    assert banner.text().startswith("Admin API unreachable — api/v1/")
    assert "showing data from" in banner.text()
    assert "stale" in dom.byId("content").classes()
    assert len(dom.byId("workers").rows()) == 6  # still the last data


@pytest_twisted.ensureDeferred
async def test_the_banner_says_when_the_api_never_answered(status, tmp_path):
    status.site.resource = CutAfter(status.site.resource, answered=0)
    html, _ = await render(status.url + "/status", tmp_path, budget_ms=1000)
    dom = parse(html)

    assert "hidden" not in dom.byId("banner").attrs
    assert "no data yet" in dom.byId("banner").text()
    assert dom.byId("workers").rows() == []


class CutAfter(Resource):
    """Answers the first ``answered`` API requests through ``root``, then cuts connections."""

    isLeaf = True

    def __init__(self, root, answered):
        super().__init__()
        self._root = root
        self._left = answered

    def render(self, request):
        if request.path.startswith(b"/api/"):
            if self._left <= 0:
                request.transport.abortConnection()
                return NOT_DONE_YET
            self._left -= 1
        return self._root.render(request)


@pytest_twisted.ensureDeferred
async def test_api_v1_status_reports_instance_leader_and_actions_newest_first(status):
    response, body = await status.get("/api/v1/status")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    assert json.loads(body) == {
        "instance": INSTANCE,
        "now": "2022-02-08T15:29:05Z",
        "leader": True,
        "fencing_token": 7,
        "scaler_actions": [
            {"time": "2022-02-08T15:28:00Z", "action": "terminate",
             "workers": ["10.0.0.9:9000", "10.0.0.8:9000"], "fencing_token": 7},
            {"time": "2022-02-08T15:27:10Z", "action": "launch",
             "workers": ["w-starting"], "fencing_token": 7},
        ],
    }
    response, body = await status.get("/api/v1/status/extra")
    assert (response.code, json.loads(body)) == (404, {"error": "no such resource"})


@pytest_twisted.ensureDeferred
async def test_the_page_and_its_parts_are_served_with_a_strict_policy(status):
    for path, contentType, marker in (
        ("/status", "text/html; charset=utf-8", b"<title>wslb status</title>"),
        ("/status/status.js", "text/javascript; charset=utf-8", b"api/v1/status"),
        ("/status/status.css", "text/css; charset=utf-8", b".banner"),
        ("/status/charts.js", "text/javascript; charset=utf-8", b"wslbCharts"),
    ):
        response, body = await status.get(path)
        assert response.code == 200, path
        assert response.headers.getRawHeaders("content-type") == [contentType]
        [policy] = response.headers.getRawHeaders("content-security-policy")
        assert "script-src 'self'" in policy and "default-src 'none'" in policy
        assert marker in body

    response = await treq.get(status.url + "/status/", pool=status.pool, timeout=5,
                              allow_redirects=False)
    await response.content()
    assert response.code == 302
    assert response.headers.getRawHeaders("location") == ["../status"]

    for path in ("/status/status.html", "/status/nope", "/status/a/status.js"):
        response, _ = await status.get(path)
        assert response.code == 404, path
