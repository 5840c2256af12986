"""
The read-only admin API over a MemoryRegistry, queried over HTTP in memory
(treq's StubTreq, see _admin_helpers): every answer on the Clock's time.
"""

import gc
import subprocess
import sys
from urllib.parse import quote

import pytest
import pytest_twisted
from _admin_helpers import TIMEOUT, Admin
from _fired import fired
from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.web.client import ResponseNeverReceived
from twisted.web.resource import Resource

from wslb.admin.api import MAX_PAGE, PAGE
from wslb.admin.web import Response
from wslb.registry import Assigned, AssignRequest, Queued
from wslb.registry.memory import MemoryRegistry


@pytest.fixture
def admin():
    return Admin()


@pytest_twisted.ensureDeferred
async def test_healthz_follows_is_serving(admin):
    assert await admin.get("/healthz") == (200, {"ok": True})
    admin.serving = False
    assert await admin.get("/healthz") == (503, {"ok": False})
    admin.serving = ConnectionError("registry down")
    assert await admin.get("/healthz") == (503, {"ok": False})


@pytest_twisted.ensureDeferred
async def test_healthz_answers_503_when_is_serving_hangs(admin):
    admin.serving = defer.Deferred()
    pending = admin.send("GET", "/healthz")
    admin.clock.advance(TIMEOUT - 0.1)
    admin.flush()
    assert not fired(pending)
    admin.clock.advance(0.1)
    admin.flush()
    assert (await pending)[:2] == (503, {"ok": False})


@pytest_twisted.ensureDeferred
async def test_workers_list_and_one_record_shape(admin):
    registry, clock = admin.registry, admin.clock
    await admin.addHealthyWorker("10.0.2.110:9000", capacity=1000)
    clock.advance(60)
    await registry.addWorker("i-0e214a342f3239fd3", "ws://ip-10-0-2-111:9000", "ec2", 1, clock.seconds())
    assigned = await registry.assign(AssignRequest("userId1", 300, "wslb-1"), clock.seconds())
    assert isinstance(assigned, Assigned)

    static = {
        "id": "10.0.2.110:9000", "url": "ws://10.0.2.110:9000", "provider": "static",
        "state": "healthy", "draining": False, "capacity": 1000, "load": 300,
        "sessions": ["userId1"],
        "last_seen": "2022-02-08T15:27:00Z", "started_at": "2022-02-08T15:27:00Z",
    }
    ec2 = {
        "id": "i-0e214a342f3239fd3", "url": "ws://ip-10-0-2-111:9000", "provider": "ec2",
        "state": "starting", "draining": False, "capacity": 1, "load": 0, "sessions": [],
        "last_seen": None, "started_at": "2022-02-08T15:28:00Z",
    }
    assert await admin.get("/api/v1/workers") == (200, {"workers": [static, ec2]})
    assert await admin.get("/api/v1/workers/10.0.2.110%3A9000") == (200, static)
    assert await admin.get("/api/v1/workers/i-0e214a342f3239fd3/") == (200, ec2)

    code, body = await admin.get("/api/v1/workers/nope%3A1")
    assert code == 404
    assert "nope:1" in body["error"]


@pytest_twisted.ensureDeferred
async def test_sessions_list_and_one(admin):
    registry, clock = admin.registry, admin.clock
    await admin.addHealthyWorker("w1", capacity=10)
    await registry.assign(AssignRequest("alice", 2, "wslb-1"), clock.seconds())
    clock.advance(5)
    await registry.assign(AssignRequest("bob", 3, "wslb-1"), clock.seconds())
    await registry.release("bob", "wslb-1", clock.seconds())

    alice = {"key": "alice", "worker": "w1", "cost": 2, "connected": True,
             "since": "2022-02-08T15:27:00Z", "http_requests": 0}
    bob = {"key": "bob", "worker": "w1", "cost": 3, "connected": False,
           "since": "2022-02-08T15:27:05Z", "http_requests": 0}
    assert await admin.get("/api/v1/sessions") == (200, {"sessions": [alice, bob]})
    assert await admin.get("/api/v1/sessions/bob") == (200, bob)
    code, body = await admin.get("/api/v1/sessions/carol")
    assert code == 404
    assert "carol" in body["error"]


@pytest_twisted.ensureDeferred
async def test_lists_come_in_pages_that_name_the_next(admin):
    registry, clock = admin.registry, admin.clock
    ids = [f"10.0.0.{i}:9000" for i in range(12)]
    for worker_id in ids:
        await admin.addHealthyWorker(worker_id, capacity=100)
    keys = [f"user{i:03}" for i in range(PAGE + 2)]
    for key in keys:
        await registry.assign(AssignRequest(key, 1, "wslb-1"), clock.seconds())
    ids.sort()

    code, first = await admin.get("/api/v1/workers?limit=5")
    assert (code, [w["id"] for w in first["workers"]], first["next"]) == (200, ids[:5], ids[4])
    code, second = await admin.get(f"/api/v1/workers?limit=5&cursor={quote(first['next'])}")
    assert [w["id"] for w in second["workers"]] == ids[5:10]
    code, last = await admin.get(f"/api/v1/workers?limit=5&cursor={quote(second['next'])}")
    assert [w["id"] for w in last["workers"]] == ids[10:] and "next" not in last
    code, exact = await admin.get("/api/v1/workers?limit=12")
    assert len(exact["workers"]) == 12 and "next" not in exact

    code, page = await admin.get("/api/v1/sessions")  # PAGE by default
    assert [s["key"] for s in page["sessions"]] == keys[:PAGE] and page["next"] == keys[PAGE - 1]
    code, rest = await admin.get(f"/api/v1/sessions?cursor={page['next']}")
    assert [s["key"] for s in rest["sessions"]] == keys[PAGE:] and "next" not in rest

    for bad in ("0", "-1", "x", str(MAX_PAGE + 1)):
        code, body = await admin.get(f"/api/v1/sessions?limit={bad}")
        assert code == 400 and "limit" in body["error"]


@pytest_twisted.ensureDeferred
async def test_queue_length_and_oldest_wait(admin):
    assert await admin.get("/api/v1/queue") == (200, {"length": 0, "oldest_wait_seconds": 0})
    for key in ("q1", "q2"):
        queued = await admin.registry.assign(AssignRequest(key, 1, "wslb-1"), admin.clock.seconds())
        assert isinstance(queued, Queued)
        admin.clock.advance(1.25)
    assert await admin.get("/api/v1/queue") == (200, {"length": 2, "oldest_wait_seconds": 2.5})


@pytest_twisted.ensureDeferred
async def test_unknown_paths_404_and_wrong_methods_405(admin):
    for path in ("/", "/api", "/api/v1/nothing", "/api/v1/workers/a/b", "/healthz/x"):
        code, body = await admin.get(path)
        assert (code, set(body)) == (404, {"error"}), path

    code, body, response = await admin.request("DELETE", "/api/v1/workers")
    assert code == 405
    assert "error" in body
    assert response.headers.getRawHeaders("allow") == ["GET, POST"]
    code, _, _ = await admin.request("POST", "/healthz")
    assert code == 405


@pytest_twisted.ensureDeferred
async def test_head_answers_like_get_without_a_body(admin):
    code, body, _ = await admin.request("HEAD", "/api/v1/workers")
    assert (code, body) == (200, b"")


class StalledRegistry(MemoryRegistry):
    """A registry whose listing never answers (as Redis does while unreachable)."""

    def listWorkers(self, **kwargs):
        return defer.Deferred()


@pytest_twisted.ensureDeferred
async def test_a_registry_that_does_not_answer_gives_503():
    admin = Admin(makeRegistry=StalledRegistry)
    pending = admin.send("GET", "/api/v1/workers")
    assert not fired(pending)
    admin.clock.advance(TIMEOUT)
    admin.flush()
    code, body, _ = await pending
    assert code == 503
    assert "registry" in body["error"]


@pytest_twisted.ensureDeferred
async def test_an_answer_for_a_client_that_left_is_dropped(admin):
    """No write, and so no error, for a request whose client disconnected."""
    reached, answer = defer.Deferred(), defer.Deferred()
    gone = []

    async def slow(request):
        request.notifyFinish().addErrback(gone.append)
        reached.callback(None)
        return await answer

    admin.routes.add("GET", "/slow", slow)
    errors = []

    def observer(event):
        if event.get("log_failure"):
            errors.append(event)

    globalLogPublisher.addObserver(observer)
    pending = admin.http.get(admin.base + "/slow")
    try:
        admin.flush()
        assert reached.called
        pending.cancel()  # the client hangs up
        admin.flush()
        assert gone
        answer.callback(Response(200, {"late": True}))
        gc.collect()  # an unhandled failure in the request's Deferred is logged now
        assert errors == []
    finally:
        globalLogPublisher.removeObserver(observer)
        pending.addErrback(lambda f: f.trap(ResponseNeverReceived))


@pytest_twisted.ensureDeferred
async def test_pages_are_mounted_beside_the_api(admin):
    class Metrics(Resource):
        isLeaf = True

        def render_GET(self, request):
            return b"wslb_connections 0\n"

    admin.routes.mount("metrics", Metrics())
    answer = admin.http.get(admin.base + "/metrics")
    admin.flush()
    assert await admin.http.text_content(await answer) == "wslb_connections 0\n"
    assert await admin.get("/healthz") == (200, {"ok": True})


@pytest_twisted.ensureDeferred
async def test_a_path_that_is_not_utf8_gets_a_json_400(admin):
    """Klein cannot decode it: its HTML 400 and logged traceback are not the API's answer."""
    await admin.addHealthyWorker("w1")
    failures = []

    def observer(event):
        if event.get("log_failure"):
            failures.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        for path in ("/api/v1/workers/%ff", "/api/v1/sessions/a%c3", "/api/%ff/x", "/%fe%ff"):
            code, body = await admin.get(path)
            assert (code, set(body)) == (400, {"error"}), path
            assert "UTF-8" in body["error"]
        code, _, _ = await admin.request("POST", "/api/v1/workers/w1%ff/events", {"event": "drain"})
        assert code == 400
    finally:
        globalLogPublisher.removeObserver(observer)
    assert failures == []
    assert not (await admin.registry.getWorker("w1")).draining
    assert await admin.get("/api/v1/workers/w%C3%A9") == (404, {"error": "no worker 'wé'"})


def test_the_admin_side_does_not_import_the_pool():
    """Admin and pool both derive worker ids from URLs; neither depends on the other for it."""
    code = (
        "import importlib, pkgutil, sys, wslb.admin\n"
        "for m in pkgutil.iter_modules(wslb.admin.__path__):\n"
        "    importlib.import_module('wslb.admin.' + m.name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('wslb.pool')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,  # reactor-safe: test
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"
