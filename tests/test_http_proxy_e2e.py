"""
Plain HTTP to a session's worker through a running wslb (in this process)
and a worker that streams, stalls and tells what it got (_http_worker.py):
routing by the session's key, what the worker is told, streaming both ways,
keep-alive on both sides, the answers wslb gives itself, and the metrics.
"""

import hashlib
import json

import pytest
import pytest_twisted
import treq
from _echo_helpers import closeAll, getJSON
from _http_helpers import closedResponse, readResponse, request
from _http_worker import HTTPWorker
from _polling import waitFor
from _raw_ws import connectRaw
from _wslb_helpers import rawHandshake, scrape
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

pytestmark = pytest.mark.timeout(60)

PATHS = 'http.paths=["/session/"]'


class Setup:
    """wslb over HTTP workers, and the connections a test opened."""

    def __init__(self, workers, wslb):
        self.workers = workers
        self.wslb = wslb
        self.clients = []

    @property
    def port(self):
        return self.wslb.port

    async def session(self, key, path="/"):
        """Open a WebSocket for ``key`` (the session begins): its worker's id."""
        ws = await self.wslb.connect(key, path=path)
        self.clients.append(ws)
        return (await ws.ask("whoami"))["worker"]

    async def raw(self, data=b""):
        client = await connectRaw(self.port)
        self.clients.append(client)
        if data:
            client.transport.write(data)
        return client

    async def ask(self, method, path, headers=None, body=b""):
        """One request on a new connection: the Response."""
        client = await self.raw(request(method, path, headers, body))
        return await readResponse(client, head=method == "HEAD", timeout=10)

    def worker(self, workerId):
        return next(w for w in self.workers if w.worker.id == workerId)


@pytest_twisted.async_yield_fixture()
async def setUp(start_wslb):
    """
    ``await setUp(*overrides, workers=2)``: a Setup over new HTTP workers;
    after the test its clients, wslb and workers are stopped, in that order.
    """
    made = []

    async def setUp(*overrides, workers=2):
        httpWorkers = [HTTPWorker(f"w{i}") for i in range(workers)]
        made.append(Setup(httpWorkers, None))
        made[-1].wslb = await start_wslb(
            httpWorkers, PATHS, "pool.capacity=10", "pool.placement=spread", *overrides)
        return made[-1]

    yield setUp
    for setup in made:
        closeAll(setup.clients)
        if setup.wslb is not None:
            await setup.wslb.stop()
        for worker in setup.workers:
            await worker.stop()


@pytest_twisted.async_fixture()
async def http(setUp):
    return await setUp()


def key(k, **more):
    return {"X-WSLB-Session": k, **more}


@pytest_twisted.ensureDeferred
async def test_a_request_reaches_the_worker_of_its_session_by_any_key_source(http):
    alice, bob = await http.session("alice"), await http.session("bob")
    assert alice != bob  # placement = spread
    for headers, path in [(key("alice"), "/session/x"), ({"Cookie": "wslb_session=alice"},
                          "/session/x"), ({}, "/session/x?session=alice")]:
        answer = await http.ask("GET", path, headers)
        assert answer.status == 200, answer
        assert json.loads(answer.body)["worker"] == alice
    answer = await http.ask("GET", "/session/x", key("bob"))
    assert json.loads(answer.body)["worker"] == bob


@pytest_twisted.ensureDeferred
async def test_the_worker_gets_wslbs_headers_and_none_of_the_connections(http):
    worker = await http.session("alice")
    answer = await http.ask("POST", "/session/headers", key(
        "alice", **{
            "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil", "X-Forwarded-Proto": "https",
            "X-Forwarded-Port": "1", "Forwarded": "for=6.6.6.6", "X-Real-IP": "6.6.6.6",
            "X-WSLB-Cost": "5", "Connection": "keep-alive, X-Private", "X-Private": "hop",
            "Keep-Alive": "timeout=5", "TE": "trailers", "Upgrade": "h2c",
            "Proxy-Authorization": "Basic eDp5", "Proxy-Connection": "keep-alive",
            "Content-Type": "text/plain", "Accept": "text/plain", "Cookie": "a=1",
            "Authorization": "Bearer t",
        }), body=b"hello")
    seen = json.loads(answer.body)
    assert seen["worker"] == worker
    headers = seen["headers"]
    assert headers["x-wslb-session"] == "alice"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "wslb.test"
    assert headers["host"] == http.worker(worker).url.removeprefix("ws://")
    for gone in ("x-forwarded-port", "forwarded", "x-real-ip", "x-wslb-cost", "x-private",
                 "keep-alive", "te", "upgrade", "proxy-authorization", "proxy-connection"):
        assert gone not in headers, gone
    for kept in ("content-type", "accept", "cookie", "authorization"):
        assert kept in headers, kept
    assert headers["content-length"] == "5" and seen["bytes"] == 5


@pytest_twisted.ensureDeferred
async def test_the_users_answer_has_none_of_the_workers_connection_headers(http):
    await http.session("alice")
    answer = await http.ask("GET", "/session/status?code=203", key("alice"))
    assert answer.status == 203
    assert answer.header("x-hop") == "kept"
    assert answer.header("keep-alive") is None
    head = await http.ask("HEAD", "/session/download?bytes=1000", key("alice"))
    assert (head.status, head.header("content-length"), head.body) == (200, "1000", b"")
    for code in (204, 304):
        answer = await http.ask("GET", f"/session/status?code={code}", key("alice"))
        assert answer.status == code and answer.body == b""


@pytest_twisted.ensureDeferred
async def test_no_session_is_404_with_json_and_http_never_assigns_a_worker(http):
    for headers in ({}, key("nobody")):
        answer = await http.ask("GET", "/session/x", headers)
        assert answer.status == 404
        assert answer.header("content-type") == "application/json"
        assert "session" in json.loads(answer.body)["error"]
    _, sessions = await getJSON(http.wslb.admin + "/api/v1/sessions")
    assert sessions["sessions"] == []  # no key was minted, no worker assigned
    assert all(not w.pages.seen for w in http.workers)


@pytest_twisted.ensureDeferred
async def test_a_session_whose_worker_is_gone_is_404_and_an_unreachable_worker_502(http):
    worker = http.worker(await http.session("alice"))
    await worker.port.stopListening()  # still healthy in the registry
    answer = await http.ask("GET", "/session/x", key("alice"))
    assert answer.status == 502
    assert json.loads(answer.body)["error"] == "the worker failed to answer"
    workerId = worker.url.removeprefix("ws://")
    status = await treqPost(http.wslb.admin + f"/api/v1/workers/{workerId}/events",
                            {"event": "dead"})
    assert status == 200
    answer = await http.ask("GET", "/session/x", key("alice"))
    assert answer.status == 404 and "session" in json.loads(answer.body)["error"]


async def treqPost(url, body):
    response = await treq.post(url, json=body, timeout=5)
    await response.content()
    return response.code


@pytest_twisted.ensureDeferred
async def test_a_stalling_worker_is_504_after_the_timeout(setUp):
    setup = await setUp("http.timeout=1", workers=1)
    await setup.session("alice")
    started = reactor.seconds()
    answer = await setup.ask("GET", "/session/stall", key("alice"))
    assert answer.status == 504
    assert "[http] timeout" in json.loads(answer.body)["error"]
    assert 0.9 <= reactor.seconds() - started < 5


@pytest_twisted.ensureDeferred
async def test_a_worker_slow_to_take_a_body_is_waited_for_not_the_user_timed_out(setUp):
    # The user's connection is not read while the worker takes nothing: that
    # is no silence of the user's, whatever open_handshake_timeout says.
    setup = await setUp("listen.open_handshake_timeout=1", "http.timeout=10", workers=1)
    await setup.session("alice")
    body = b"y" * (8 * 1024 * 1024)
    answer = await setup.ask("POST", "/session/upload",
                             key("alice", **{"X-Pause-Reading": "2.5"}), body)
    assert answer.status == 200
    assert json.loads(answer.body)["bytes"] == len(body)


@pytest_twisted.ensureDeferred
async def test_a_worker_stalling_mid_answer_has_the_users_connection_cut(setUp):
    setup = await setUp("http.timeout=1", workers=1)
    await setup.session("alice")
    client = await setup.raw(request("GET", "/session/halfway", key("alice")))
    await client.closed.addTimeout(10, reactor)
    head, _, body = client.received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 2000" in head
    assert body == b"x" * 1000  # cut off: the user can tell
    metrics = await scrape(setup.wslb)
    workerId = setup.workers[0].url.removeprefix("ws://")
    assert metrics[("wslb_http_requests_total",
                    (("outcome", "aborted"), ("worker", workerId)))] == 1


@pytest_twisted.ensureDeferred
async def test_a_user_leaving_mid_download_stops_the_worker_sending(http):
    worker = http.worker(await http.session("alice"))
    client = await http.raw(request("GET", f"/session/download?bytes={500 * 1024 * 1024}",
                                    key("alice")))
    await client.untilReceived(lambda data: len(data) > 1024 * 1024)
    client.transport.abortConnection()
    assert await waitFor(lambda: worker.pages.downloadsStopped, what="the download stopped") == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest_twisted.ensureDeferred
async def test_bodies_stream_both_ways_framed_as_they_came(http, chunked):
    worker = await http.session("alice")
    body = bytes(range(256)) * 4096 * 3  # 3 MiB
    if chunked:
        pieces = [body[i:i + 100_000] for i in range(0, len(body), 100_000)]
        sent = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        headers = key("alice", **{"Transfer-Encoding": "chunked"})
    else:
        sent, headers = body, key("alice")
    answer = await http.ask("PUT", "/session/upload", headers, sent)
    seen = json.loads(answer.body)
    assert (seen["bytes"], seen["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    framing = "transfer-encoding" if chunked else "content-length"
    assert framing in seen["headers"]
    size = 5 * 1024 * 1024 + 3
    download = f"/session/download?bytes={size}" + ("&chunked=1" if chunked else "")
    answer = await http.ask("GET", download, key("alice"))
    assert len(answer.body) == size
    assert (answer.header("transfer-encoding") == "chunked") == chunked
    assert (answer.header("content-length") == str(size)) == (not chunked)
    assert answer.body[:256] == bytes(range(256))
    assert http.worker(worker).pages.seen[-1][0] == "GET"


@pytest_twisted.ensureDeferred
async def test_expect_100_continue_is_answered_when_the_worker_is_found(http):
    await http.session("alice")
    head = request("POST", "/session/upload",
                   key("alice", Expect="100-continue", **{"Content-Length": "5"}))
    client = await http.raw(head)
    interim = await readResponse(client)
    assert interim.status == 100
    client.transport.write(b"hello")
    answer = await readResponse(client)
    assert json.loads(answer.body)["bytes"] == 5
    assert "expect" not in json.loads(answer.body)["headers"]
    # Refused before the worker: no 100, and the body never sent is not waited for.
    client = await http.raw(request("POST", "/session/upload",
                                    key("nobody", Expect="100-continue",
                                        **{"Content-Length": "5000000"})))
    answer = await closedResponse(client)
    assert answer.status == 404 and b"100 Continue" not in client.received


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest_twisted.ensureDeferred
async def test_a_body_over_max_body_is_413(setUp, chunked):
    setup = await setUp("http.max_body=1000", workers=1)
    await setup.session("alice")
    body = b"x" * 5000
    if chunked:
        client = await setup.raw(request("POST", "/session/upload", key(
            "alice", **{"Transfer-Encoding": "chunked"}), b"%x\r\n%s\r\n0\r\n\r\n" % (
            len(body), body)))
    else:
        client = await setup.raw(request("POST", "/session/upload", key("alice"), body))
    answer = await readResponse(client)
    assert answer.status == 413
    assert "max_body" in json.loads(answer.body)["error"]
    assert setup.workers[0].pages.seen == []  # nothing reached it whole


@pytest_twisted.ensureDeferred
async def test_keep_alive_requests_share_a_few_kept_alive_worker_connections(http):
    worker = http.worker(await http.session("alice"))
    before = worker.accepted
    clients = [await http.raw() for _ in range(10)]

    async def hundred(client):
        for i in range(100):
            client.transport.write(request("GET", f"/session/n{i}", key("alice")))
            answer = await readResponse(client)
            assert answer.status == 200

    await defer.gatherResults([defer.ensureDeferred(hundred(c)) for c in clients])
    assert len(worker.pages.seen) >= 1000
    assert worker.accepted - before <= 10


@pytest_twisted.ensureDeferred
async def test_strip_prefix_asks_the_worker_for_the_rest(setUp):
    setup = await setUp('http.paths=["/api/"]', "http.strip_prefix=true", workers=1)
    await setup.session("alice")
    answer = await setup.ask("GET", "/api/session/whoami?x=1", key("alice"))
    seen = json.loads(answer.body)
    assert seen["uri"] == "/session/whoami?x=1"
    assert seen["headers"]["x-forwarded-prefix"] == "/api"


@pytest_twisted.ensureDeferred
async def test_http_requests_neither_end_nor_extend_a_sessions_reconnect_grace(setUp):
    setup = await setUp("session.reconnect_grace=2", workers=1)
    await setup.session("alice")
    setup.clients[-1].sendClose()
    await setup.clients[-1].waitClosed()
    ended = reactor.seconds() + 2
    while reactor.seconds() < ended - 0.4:  # requests all through the grace
        answer = await setup.ask("GET", "/session/x", key("alice"))
        assert answer.status == 200
        await deferLater(reactor, 0.2)  # the thing tested: requests now and then
    # The grace runs out on time (by then and a bit), not extended by the requests.
    await waitFor(lambda: setup.ask("GET", "/session/x", key("alice")),
                  lambda answer: answer.status == 404, timeout=ended + 1.1 - reactor.seconds(),
                  interval=0.1, what="alice's session ended")


@pytest_twisted.ensureDeferred
async def test_an_unsigned_key_is_401_when_keys_are_signed_and_a_minted_cookie_passes(setUp):
    setup = await setUp("session.secret=" + "s" * 40, workers=1)
    answer = await setup.ask("GET", "/session/x", key("alice"))
    assert answer.status == 401
    assert answer.header("www-authenticate").startswith("Bearer")
    assert "alice" not in [s[1] for s in setup.workers[0].pages.seen]
    status, headers = await rawHandshake(setup.port)
    assert status == 101
    cookie = headers["set-cookie"].split(";")[0]
    answer = await setup.ask("GET", "/session/x", {"Cookie": cookie})
    assert answer.status == 200
    signed = cookie.split("=", 1)[1]
    assert json.loads(answer.body)["headers"]["x-wslb-session"] == signed.split(".")[0]


@pytest_twisted.ensureDeferred
async def test_metrics_count_requests_by_outcome_and_worker_bytes_and_time(http):
    worker = await http.session("alice")
    await http.ask("POST", "/session/upload", key("alice"), b"x" * 1000)
    await http.ask("GET", "/session/download?bytes=2000", key("alice"))
    await http.ask("GET", "/session/status?code=404", key("alice"))
    await http.ask("GET", "/session/x", key("nobody"))
    worker = http.worker(worker).url.removeprefix("ws://")  # its id in wslb
    metrics = await scrape(http.wslb)

    def requests(outcome, worker):
        return metrics[("wslb_http_requests_total", (("outcome", outcome), ("worker", worker)))]

    assert requests("2xx", worker) == 2
    assert requests("4xx", worker) == 1
    assert requests("404", "") == 1
    assert metrics[("wslb_http_bytes_total", (("direction", "to_worker"),))] == 1000
    assert metrics[("wslb_http_bytes_total", (("direction", "to_user"),))] >= 2000
    assert metrics[("wslb_http_request_seconds_count", ())] == 4


@pytest_twisted.ensureDeferred
async def test_the_sessions_record_counts_its_http_requests_until_it_ends(http):
    await http.session("alice")
    await http.session("bob")
    for _ in range(3):
        await http.ask("GET", "/session/x", key("alice"))
    await http.ask("GET", "/session/x", key("bob"))
    _, listed = await getJSON(http.wslb.admin + "/api/v1/sessions")
    assert {s["key"]: s["http_requests"] for s in listed["sessions"]} == {"alice": 3, "bob": 1}
    status = await treqDelete(http.wslb.admin + "/api/v1/sessions/alice")
    assert status == 200
    await http.session("alice")  # a new session under the old key starts from nothing
    _, alice = await getJSON(http.wslb.admin + "/api/v1/sessions/alice")
    assert alice["http_requests"] == 0


async def treqDelete(url):
    response = await treq.delete(url, timeout=5)
    await response.content()
    return response.code
