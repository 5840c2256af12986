"""
Admin API mutations and who may make them, over a MemoryRegistry: in memory
(treq's StubTreq), and on a real socket on 127.0.0.1 where the socket is the
point (the peer's address, the Host and Origin sent, the Site's request class).
"""

import json
import shutil
import tempfile

import pytest
import pytest_twisted
import treq
from _admin_helpers import JSON, T0, Admin, AdminServer
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.client import Agent
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from wslb.admin.auth import isLoopback
from wslb.admin.web import MAX_BODY, Response
from wslb.registry import Assigned, AssignRequest

TOKEN = "s3cret-token-value"


@pytest.fixture
def admin():
    return Admin()


@pytest.fixture
def guarded():
    return Admin(token=TOKEN)


@pytest_twisted.async_yield_fixture()
async def server():
    """The admin Site listening on 127.0.0.1."""
    server = AdminServer()
    yield server
    await server.close()


@pytest.fixture
def logged():
    """The formatted text of every log event during the test."""
    lines = []

    def observer(event):
        lines.append(formatEvent(event) or "")
        if event.get("log_failure"):
            lines.append(event["log_failure"].getTraceback())

    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


# --- POST /api/v1/workers -----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_register_a_worker_then_it_is_listed(admin):
    code, record, _ = await admin.request(
        "POST", "/api/v1/workers", {"url": "ws://10.0.2.7:9000/", "capacity": 4})
    assert code == 201
    assert record == {
        "id": "10.0.2.7:9000", "url": "ws://10.0.2.7:9000", "provider": "registered",
        "state": "starting", "draining": False, "capacity": 4, "load": 0, "sessions": [],
        "last_seen": None, "started_at": "2022-02-08T15:27:00Z",
    }
    code, listed, _ = await admin.request("GET", "/api/v1/workers")
    assert (code, listed) == (200, {"workers": [record]})
    assert (await admin.registry.getWorker("10.0.2.7:9000")).provider == "registered"


@pytest_twisted.ensureDeferred
async def test_registering_again_is_idempotent_but_not_with_other_settings(admin):
    body = {"url": "wss://w.example:443", "capacity": 2}
    first = await admin.request("POST", "/api/v1/workers", body)
    again = await admin.request("POST", "/api/v1/workers", body)
    assert first[:2] == again[:2]
    assert first[0] == 201

    code, answer, _ = await admin.request(
        "POST", "/api/v1/workers", {"url": "wss://w.example:443", "capacity": 3})
    assert code == 409
    assert "w.example:443" in answer["error"]
    assert (await admin.registry.getWorker("w.example:443")).capacity == 2

    await admin.registry.addWorker("10.0.0.9:9000", "ws://10.0.0.9:9000", "static", 1, T0)
    code, _, _ = await admin.request(
        "POST", "/api/v1/workers", {"url": "ws://10.0.0.9:9000", "capacity": 1})
    assert code == 409


@pytest_twisted.ensureDeferred
async def test_register_rejects_bad_fields_with_400(admin):
    bad = [
        ({"url": "http://h:9000", "capacity": 1}, "url"),
        ({"url": "ws://h", "capacity": 1}, "url"),
        ({"url": "ws://:9000", "capacity": 1}, "url"),
        ({"url": "ws://h:0", "capacity": 1}, "url"),
        ({"url": "ws://h:99999", "capacity": 1}, "url"),
        ({"url": "ws://h:9000/path", "capacity": 1}, "url"),
        ({"url": "ws://u:p@h:9000", "capacity": 1}, "url"),
        ({"url": "ws://[::1:9000", "capacity": 1}, "url"),
        ({"url": 9000, "capacity": 1}, "url"),
        ({"url": "ws://h:9000", "capacity": 0}, "capacity"),
        ({"url": "ws://h:9000", "capacity": -2}, "capacity"),
        ({"url": "ws://h:9000", "capacity": 1.5}, "capacity"),
        ({"url": "ws://h:9000", "capacity": "2"}, "capacity"),
        ({"url": "ws://h:9000", "capacity": True}, "capacity"),
        ({"url": "ws://h:9000"}, "missing: capacity"),
        ({"url": "ws://h:9000", "capacity": 1, "cost": 1}, "unknown: cost"),
    ]
    for body, named in bad:
        code, answer, _ = await admin.request("POST", "/api/v1/workers", body)
        assert code == 400, body
        assert named in answer["error"], body
    assert await admin.registry.listWorkers() == []


@pytest_twisted.ensureDeferred
async def test_bodies_that_are_not_a_json_object(admin):
    for data in (b"{", b"", b"\xff\xfe{", b"[1]", b'"ws://h:1"', b"null", b"[" * 50_000):
        code, answer, _ = await admin.request("POST", "/api/v1/workers", data=data)
        assert code == 400, data[:10]
        assert set(answer) == {"error"}

    code, answer, _ = await admin.request(
        "POST", "/api/v1/workers", data=b'{"url": "ws://h:1", "capacity": 1}',
        headers={"Content-Type": "text/plain"})
    assert code == 415
    assert "application/json" in answer["error"]
    code, _, _ = await admin.request(
        "POST", "/api/v1/workers", {"url": "ws://h:1", "capacity": 1},
        headers={"Content-Type": "Application/JSON; charset=utf-8"})
    assert code == 201


@pytest_twisted.ensureDeferred
async def test_a_body_over_64_kib_gets_413(admin):
    def padded(size):
        head = b'{"url": "ws://h:1", "capacity": 1, "pad": "'
        return head + b"x" * (size - len(head) - 2) + b'"}'

    code, answer, _ = await admin.request("POST", "/api/v1/workers", data=padded(MAX_BODY))
    assert code == 400
    assert "unknown: pad" in answer["error"]  # read whole: the limit is not off by one
    code, answer, _ = await admin.request("POST", "/api/v1/workers", data=padded(MAX_BODY + 1))
    assert code == 413
    assert str(MAX_BODY) in answer["error"]
    assert await admin.registry.listWorkers() == []


@pytest_twisted.ensureDeferred
async def test_the_site_keeps_no_more_of_a_body_than_the_limit(server):
    async def kept(request):
        return Response(200, {"kept": len(request.content.getvalue())})

    server.routes.add("POST", "/kept", kept)
    for size in (10, 2 * 1024 * 1024):
        code, answer, _ = await server.request("POST", "/kept", data=b"x" * size)
        assert (code, answer) == (200, {"kept": min(size, MAX_BODY + 1)})


# --- POST /api/v1/workers/{id}/events -----------------------------------------


async def event(admin, worker_id, name, **kwargs):
    return await admin.request("POST", f"/api/v1/workers/{worker_id}/events",
                               {"event": name}, **kwargs)


@pytest_twisted.ensureDeferred
async def test_worker_events_change_state_draining_and_last_seen(admin):
    await admin.request("POST", "/api/v1/workers", {"url": "ws://10.0.2.7:9000", "capacity": 2})
    path_id = "10.0.2.7%3A9000"

    admin.clock.advance(10)
    code, record, _ = await event(admin, path_id, "healthy")
    assert code == 200
    assert (record["state"], record["last_seen"]) == ("healthy", "2022-02-08T15:27:10Z")

    code, record, _ = await event(admin, path_id, "unhealthy")
    assert (code, record["state"]) == (200, "unhealthy")

    admin.clock.advance(5)
    code, record, _ = await event(admin, path_id, "heartbeat")
    assert (code, record["state"], record["last_seen"]) == (
        200, "unhealthy", "2022-02-08T15:27:15Z")

    code, record, _ = await event(admin, path_id, "drain")
    assert (code, record["draining"]) == (200, True)
    assert (await admin.registry.getWorker("10.0.2.7:9000")).draining


@pytest_twisted.ensureDeferred
async def test_event_dead_drops_the_workers_sessions(admin):
    await admin.addHealthyWorker("w1", capacity=3)
    for key in ("alice", "bob"):
        assert isinstance(await admin.registry.assign(AssignRequest(key, 1, "i1"), T0), Assigned)

    code, record, _ = await event(admin, "w1", "dead")
    assert (code, record["state"], record["sessions"], record["load"]) == (200, "dead", [], 0)
    assert await admin.registry.listSessions() == []
    admin.clock.advance(0)
    assert sorted(admin.ended) == ["alice", "bob"]


@pytest_twisted.ensureDeferred
async def test_event_for_an_unknown_worker_is_404_and_an_unknown_event_400(admin):
    code, answer, _ = await event(admin, "nope%3A1", "healthy")
    assert code == 404
    assert "nope:1" in answer["error"]

    await admin.addHealthyWorker("w1")
    for body in ({"event": "reboot"}, {"event": 5}, {"event": ["drain"]}, {},
                 {"event": "drain", "worker": "w1"}):
        code, answer, _ = await admin.request("POST", "/api/v1/workers/w1/events", body)
        assert code == 400, body
        assert "event" in answer["error"]
    worker = await admin.registry.getWorker("w1")
    assert (worker.state, worker.draining) == ("healthy", False)


@pytest_twisted.ensureDeferred
async def test_events_follow_the_lifecycle_table(admin):
    """Reports that do not apply to the worker's state change nothing and get 409."""
    await admin.request("POST", "/api/v1/workers", {"url": "ws://10.0.2.7:9000", "capacity": 1})
    path_id = "10.0.2.7%3A9000"
    code, answer, _ = await event(admin, path_id, "unhealthy")  # starting: only healthy or dead
    assert code == 409
    assert "starting" in answer["error"] and "unhealthy" in answer["error"]
    assert (await admin.registry.getWorker("10.0.2.7:9000")).state == "starting"

    code, record, _ = await event(admin, path_id, "dead")
    assert (code, record["state"]) == (200, "dead")
    code, record, _ = await event(admin, path_id, "dead")  # a repeated report: already so
    assert (code, record["state"]) == (200, "dead")
    for late in ("healthy", "unhealthy"):
        code, answer, _ = await event(admin, path_id, late)
        assert code == 409, late
        assert "register it again" in answer["error"]
    assert (await admin.registry.getWorker("10.0.2.7:9000")).state == "dead"


@pytest_twisted.ensureDeferred
async def test_registering_a_dead_worker_again_starts_it_over(admin):
    body = {"url": "ws://10.0.2.7:9000", "capacity": 1}
    await admin.request("POST", "/api/v1/workers", body)
    await event(admin, "10.0.2.7%3A9000", "dead")
    admin.clock.advance(30)
    code, record, _ = await admin.request("POST", "/api/v1/workers", body)
    assert (code, record["state"]) == (201, "starting")
    worker = await admin.registry.getWorker("10.0.2.7:9000")
    assert (worker.state, worker.state_since) == ("starting", T0 + 30)
    code, record, _ = await event(admin, "10.0.2.7%3A9000", "healthy")
    assert (code, record["state"]) == (200, "healthy")


# --- DELETE /api/v1/sessions/{key} --------------------------------------------


@pytest_twisted.ensureDeferred
async def test_deleting_a_session_tells_listeners_and_frees_capacity(admin):
    await admin.addHealthyWorker("w1", capacity=1)
    freed = []
    admin.registry.addCapacityListener(lambda: freed.append(True))
    assert isinstance(await admin.registry.assign(AssignRequest("a/b c", 1, "i1"), T0), Assigned)
    assert (await admin.registry.getWorker("w1")).load == 1

    code, answer, _ = await admin.request("DELETE", "/api/v1/sessions/a%2Fb%20c")
    assert (code, answer) == (200, {"ended": "a/b c"})
    admin.clock.advance(0)
    assert admin.ended == ["a/b c"]
    assert freed
    assert (await admin.registry.getWorker("w1")).load == 0
    assigned = await admin.registry.assign(AssignRequest("next", 1, "i1"), T0)
    assert isinstance(assigned, Assigned) and assigned.worker.id == "w1"

    code, answer, _ = await admin.request("DELETE", "/api/v1/sessions/a%2Fb%20c")
    assert code == 404
    assert "a/b c" in answer["error"]


# --- who may mutate -----------------------------------------------------------


MUTATIONS = [
    ("POST", "/api/v1/workers", {"url": "ws://10.1.1.1:9000", "capacity": 1}),
    ("POST", "/api/v1/workers/w1/events", {"event": "drain"}),
    ("DELETE", "/api/v1/sessions/alice", None),
]


async def withSession(admin):
    await admin.addHealthyWorker("w1", capacity=2)
    await admin.registry.assign(AssignRequest("alice", 1, "i1"), T0)


async def unchanged(admin):
    """True when none of MUTATIONS took effect."""
    workers = await admin.registry.listWorkers()
    return ([w.id for w in workers] == ["w1"] and not workers[0].draining
            and await admin.registry.getSession("alice") is not None)


@pytest_twisted.ensureDeferred
async def test_with_a_token_mutations_need_it(guarded, logged):
    await withSession(guarded)
    for method, path, body in MUTATIONS:
        code, answer, response = await guarded.request(method, path, body)
        assert code == 401, path
        assert response.headers.getRawHeaders("www-authenticate") == ["Bearer"]
        assert "Bearer" in answer["error"]

        code, answer, _ = await guarded.request(method, path, body, token="wrong-guess")
        assert code == 403, path
        for header in ("Basic czNjcmV0", f"Token {TOKEN}", "Bearer", "Bearer "):
            code, _, _ = await guarded.request(method, path, body,
                                               headers={**JSON, "Authorization": header})
            assert code == 401, (path, header)
    assert await unchanged(guarded)

    # A request refused for its token is refused before its body is read.
    code, _, _ = await guarded.request("POST", "/api/v1/workers", data=b"{")
    assert code == 401

    expected = [201, 200, 200]
    for (method, path, body), status in zip(MUTATIONS, expected):
        code, _, _ = await guarded.request(method, path, body, token=TOKEN)
        assert code == status, path
    code, _, _ = await guarded.request(
        "GET", "/api/v1/workers", headers={"Authorization": f"bearer {TOKEN}"})
    assert code == 200
    assert not await unchanged(guarded)

    text = "\n".join(logged)
    assert "refused" in text  # refusals are logged...
    assert TOKEN not in text and "wrong-guess" not in text  # ...without any token


READS = ("/api/v1/workers", "/api/v1/workers/w1", "/api/v1/sessions", "/api/v1/sessions/alice",
         "/api/v1/queue")


@pytest_twisted.ensureDeferred
async def test_with_a_token_reads_need_it_too(guarded):
    """Unsigned session keys are credentials: listing them needs the token."""
    await withSession(guarded)
    for path in READS:
        code, answer, response = await guarded.request("GET", path)
        assert code == 401, path
        assert response.headers.getRawHeaders("www-authenticate") == ["Bearer"]
        assert "alice" not in json.dumps(answer)
        code, _, _ = await guarded.request("GET", path, token="wrong-guess")
        assert code == 403, path
        code, _, _ = await guarded.request("GET", path, token=TOKEN)
        assert code == 200, path
    code, _, _ = await guarded.request("GET", "/healthz")
    assert code == 200


@pytest_twisted.ensureDeferred
async def test_without_a_token_mutations_from_loopback_are_allowed(admin):
    await withSession(admin)
    expected = [201, 200, 200]
    for (method, path, body), status in zip(MUTATIONS, expected):
        code, _, _ = await admin.request(method, path, body)
        assert code == status, path
    assert not await unchanged(admin)


@pytest_twisted.ensureDeferred
async def test_without_a_token_requests_from_elsewhere_are_refused_end_to_end():
    """A real socket to 127.0.0.1, with a peer test that calls 127.0.0.1 foreign."""
    peers = []

    def isLocal(address):
        peers.append(address)
        return False

    admin = AdminServer(isLocal=isLocal)
    try:
        await withSession(admin)
        for method, path, body in MUTATIONS:
            code, answer, _ = await admin.request(method, path, body)
            assert code == 403, path
            assert "token" in answer["error"]
        assert await unchanged(admin)
        assert {(type(p), p.host) for p in peers} == {(IPv4Address, "127.0.0.1")}
        for path in READS:
            code, _, _ = await admin.request("GET", path)
            assert code == 403, path
        code, _, _ = await admin.request("GET", "/healthz")
        assert code == 200
    finally:
        await admin.close()


@pytest_twisted.ensureDeferred
async def test_without_a_token_a_rebound_host_name_is_refused(server):
    """DNS rebinding: a page of rebind.example whose name now points at 127.0.0.1."""
    await withSession(server)
    port = server.port.getHost().port
    for host in (f"rebind.example:{port}", "rebind.example", "127.0.0.1.rebind.example",
                 f"localhost.:{port}x"):
        for method, path, body in [("GET", "/api/v1/sessions", None), *MUTATIONS]:
            code, _, _ = await server.request(method, path, body, headers={**JSON, "Host": host})
            assert code == 403, (host, method, path)
    assert await unchanged(server)
    for host in (f"localhost:{port}", "localhost", f"127.0.0.1:{port}", f"[::1]:{port}",
                 f"admin.localhost:{port}", f"LOCALHOST.:{port}"):
        code, _, _ = await server.request("GET", "/api/v1/sessions", headers={**JSON, "Host": host})
        assert code == 200, host


@pytest_twisted.ensureDeferred
async def test_without_a_token_mutations_from_a_foreign_origin_are_refused(server):
    await withSession(server)
    port = server.port.getHost().port
    for origin in ("http://rebind.example", f"http://localhost:{port + 1}", "null"):
        for method, path, body in MUTATIONS:
            code, _, _ = await server.request(method, path, body,
                                              headers={**JSON, "Origin": origin})
            assert code == 403, (origin, path)
    assert await unchanged(server)
    code, _, _ = await server.request("GET", "/api/v1/sessions",
                                      headers={**JSON, "Origin": "http://rebind.example"})
    assert code == 200  # a read: the Host check is what keeps pages out
    code, _, _ = await server.request(*MUTATIONS[0][:2], MUTATIONS[0][2],
                                      headers={**JSON, "Origin": f"http://127.0.0.1:{port}"})
    assert code == 201  # the admin's own origin


@pytest_twisted.ensureDeferred
async def test_with_a_token_the_peer_does_not_matter():
    admin = Admin(token=TOKEN, isLocal=lambda address: False)
    code, _, _ = await admin.request("POST", "/api/v1/workers",
                                     {"url": "ws://h:1", "capacity": 1}, token=TOKEN)
    assert code == 201


@implementer(IAgentEndpointFactory)
class UnixEndpoints:
    def __init__(self, path):
        self.path = path

    def endpointForURI(self, uri):
        return UNIXClientEndpoint(reactor, self.path)


@pytest_twisted.ensureDeferred
async def test_a_unix_socket_counts_as_local(server):
    directory = tempfile.mkdtemp(prefix="wslb-admin-")  # short: socket paths are limited
    port = reactor.listenUNIX(f"{directory}/admin.sock", server.site)
    try:
        client = treq.client.HTTPClient(Agent.usingEndpointFactory(
            reactor, UnixEndpoints(f"{directory}/admin.sock"), pool=server.pool))
        response = await client.post("http://admin/api/v1/workers", headers=JSON,
                                     json={"url": "ws://h:1", "capacity": 1}, timeout=5)
        assert response.code == 201
        assert (await server.registry.getWorker("h:1")).provider == "registered"
    finally:
        await defer.maybeDeferred(port.stopListening)
        shutil.rmtree(directory)


def test_loopback_addresses():
    local = [
        IPv4Address("TCP", "127.0.0.1", 1), IPv4Address("TCP", "127.8.9.10", 1),
        IPv6Address("TCP", "::1", 1), IPv6Address("TCP", "::ffff:127.0.0.1", 1),
        UNIXAddress(b"/run/wslb.sock"), UNIXAddress(None),
    ]
    foreign = [
        IPv4Address("TCP", "10.0.0.1", 1), IPv4Address("TCP", "0.0.0.0", 1),
        IPv4Address("TCP", "128.0.0.1", 1), IPv6Address("TCP", "2001:db8::1", 1),
        IPv6Address("TCP", "::ffff:10.0.0.1", 1), IPv6Address("TCP", "::", 1),
        IPv4Address("TCP", "localhost", 1), IPv6Address("TCP", "fe80::1%eth0", 1),
        object(),
    ]
    assert [isLoopback(a) for a in local] == [True] * len(local)
    assert [isLoopback(a) for a in foreign] == [False] * len(foreign)
