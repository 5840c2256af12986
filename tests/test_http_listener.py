"""
The hand-off: a non-upgrade request on the listener, for a path a part
serves, goes to Twisted's HTTP server with the bytes already read; the
connection keeps its gate counts, its peer and TLS; kept-alive requests
follow; what no part serves is answered as before.
"""

import json

import pytest
import pytest_twisted
from _certs import makeCertificates
from _http_helpers import closedResponse, readResponse, request
from _polling import waitFor
from _raw_ws import connectRaw, upgradeRequest
from twisted.internet import defer, reactor, ssl
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.web import server
from twisted.web.resource import Resource

from wslb.config import load_config
from wslb.metrics import Metrics
from wslb.proxy.http_request import MAX_BUFFERED_BODY
from wslb.proxy.service import makeProxy
from wslb.registry.memory import MemoryRegistry

pytestmark = pytest.mark.timeout(30)

PEER_V1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 8080\r\n"


class Part(Resource):
    """A part mounted on the listener: tells what it saw of each request."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.paths = []

    def render_GET(self, request):
        self.paths.append(request.path)
        request.setHeader("Content-Type", "application/json")
        return json.dumps({
            "path": request.path.decode(), "uri": request.uri.decode(),
            "prepath": [s.decode() for s in request.prepath],
            "postpath": [s.decode() for s in request.postpath],
            "peer": request.getClientAddress().host, "secure": request.isSecure(),
        }).encode()

    def render_POST(self, request):
        self.paths.append(request.path)
        return json.dumps({"length": len(request.content.read())}).encode()

    def render_PUT(self, request):
        """Held: answered when the test says (``held``)."""
        self.held = request
        return server.NOT_DONE_YET


class Listener:
    """makeProxy's listener alone (plain HTTP needs none of its services), with a part."""

    def __init__(self, *overrides, endpoint="tcp:0:interface=127.0.0.1"):
        self.config = load_config(overrides=list(overrides))
        self.metrics = Metrics()
        self.proxy = makeProxy(self.config, MemoryRegistry(reactor), self.metrics, reactor,
                               "test")
        self.part = Part()
        self.proxy.web.mount("/part/", self.part)
        self.endpoint = endpoint
        self.clients = []

    async def start(self):
        self.listening = await serverFromString(reactor, self.endpoint).listen(
            self.proxy.factory)
        self.port = self.listening.getHost().port
        return self

    async def connect(self, first=b""):
        client = await connectRaw(self.port)
        self.clients.append(client)
        if first:
            client.transport.write(first)
        return client

    def refusals(self):
        return self.metrics.handshakeCounts()

    async def stop(self):
        for client in self.clients:
            client.transport.abortConnection()
        await self.listening.stopListening()
        # The server side sees its connections go (their timers with them).
        await waitFor(lambda: not self.proxy.web.channels and not self.proxy.gate.connections,
                      what="no channel and no connection counted")


@pytest_twisted.async_fixture()
async def listener(stop_after):
    return await stop_after(Listener()).start()


def get(path, **headers):
    return request("GET", path, headers)


@pytest_twisted.ensureDeferred
async def test_requests_for_a_mounted_path_are_served_one_after_another(listener):
    client = await listener.connect(get("/part/a/b?x=1"))
    first = await readResponse(client)
    assert first.status == 200
    seen = json.loads(first.body)
    assert (seen["path"], seen["prepath"], seen["postpath"]) == ("/part/a/b", ["part"], ["a", "b"])
    assert listener.proxy.gate.connections == 1
    client.transport.write(get("/part/c"))
    second = await readResponse(client)
    assert json.loads(second.body)["postpath"] == ["c"]
    assert listener.proxy.gate.connections == 1  # the same connection, still counted once
    client.transport.abortConnection()
    await client.closed
    await waitFor(lambda: listener.proxy.gate.connections == 0, what="the connection counted out")


@pytest_twisted.ensureDeferred
async def test_what_came_with_the_first_request_is_handed_over_with_it(listener):
    # Sent in pieces, the second request right behind the first (pipelined).
    data = get("/part/1") + request("POST", "/part/2", body=b"x" * 1000) + get("/part/3")
    client = await listener.connect()
    for i in range(0, len(data), 50):
        client.transport.write(data[i:i + 50])
        await deferLater(reactor, 0.001)  # the thing tested: the requests in pieces
    answers = [await readResponse(client) for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 200]
    assert json.loads(answers[1].body) == {"length": 1000}
    assert listener.part.paths == [b"/part/1", b"/part/2", b"/part/3"]


@pytest.mark.parametrize("first", [True, False], ids=["first request", "kept-alive request"])
@pytest.mark.parametrize("sent, status, header", [
    (get("/elsewhere"), 426, "upgrade"),
    (request("DELETE", "/elsewhere"), 405, "allow"),
    (request("POST", "/", body=b"data"), 405, "allow"),
])
@pytest_twisted.ensureDeferred
async def test_a_path_nothing_serves_gets_the_answer_it_got_before(
        listener, first, sent, status, header):
    client = await listener.connect(sent if first else get("/part/x"))
    if not first:
        assert (await readResponse(client)).status == 200
        client.transport.write(sent)
    answer = await closedResponse(client)
    assert answer.status == status and answer.header(header) is not None
    assert str(status) in listener.refusals()


@pytest_twisted.ensureDeferred
async def test_a_websocket_upgrade_on_a_kept_alive_connection_is_refused_and_closed(listener):
    client = await listener.connect(get("/part/x"))
    assert (await readResponse(client)).status == 200
    client.transport.write(upgradeRequest(listener.port, "/part/ws"))
    answer = await closedResponse(client)
    assert answer.status == 400 and answer.header("connection") == "close"
    assert listener.part.paths == [b"/part/x"]


SMUGGLED = get("/part/smuggled")
ATTEMPTS = {
    "CL+TE": (b"POST /part/x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED),
    "TE+CL": (b"POST /part/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
              b"Content-Length: 5\r\n\r\n0\r\n\r\n" + SMUGGLED),
    "two CLs": (b"POST /part/x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n"
                b"Content-Length: " + str(len(SMUGGLED)).encode() + b"\r\n\r\n" + SMUGGLED),
    "CL list": (b"POST /part/x HTTP/1.1\r\nHost: h\r\nContent-Length: 0, "
                + str(len(SMUGGLED)).encode() + b"\r\n\r\n" + SMUGGLED),
    "signed CL": b"POST /part/x HTTP/1.1\r\nHost: h\r\nContent-Length: +0\r\n\r\n" + SMUGGLED,
    "obs-fold": (b"POST /part/x HTTP/1.1\r\nHost: h\r\nX-Note: a\r\n Transfer-Encoding: chunked"
                 b"\r\n\r\n0\r\n\r\n" + SMUGGLED),
    "folded TE": (b"POST /part/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n"
                  b"0\r\n\r\n" + SMUGGLED),
    "bare LF": (b"POST /part/x HTTP/1.1\r\nHost: h\nContent-Length: "
                + str(len(SMUGGLED)).encode() + b"\r\n\r\n" + SMUGGLED),
    "bare CR": (b"POST /part/x HTTP/1.1\r\nHost: h\rContent-Length: "
                + str(len(SMUGGLED)).encode() + b"\r\n\r\n" + SMUGGLED),
    "space before colon": (b"POST /part/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked"
                           b"\r\n\r\n0\r\n\r\n" + SMUGGLED),
    "TE list": (b"POST /part/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                b"0\r\n\r\n" + SMUGGLED),
    "two TEs": (b"POST /part/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                b"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n" + SMUGGLED),
    "chunked in HTTP/1.0": (b"POST /part/x HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked"
                            b"\r\n\r\n0\r\n\r\n" + SMUGGLED),
    "no Host": b"GET /part/x HTTP/1.1\r\nX: y\r\n\r\n" + SMUGGLED,
    "two Hosts": b"GET /part/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + SMUGGLED,
}


@pytest.mark.parametrize("first", [True, False], ids=["first request", "kept-alive request"])
@pytest.mark.parametrize("attempt", ATTEMPTS.values(), ids=ATTEMPTS.keys())
@pytest_twisted.ensureDeferred
async def test_smuggling_attempts_are_400_and_reach_no_part(listener, first, attempt):
    client = await listener.connect(attempt if first else get("/part/before"))
    if not first:
        assert (await readResponse(client)).status == 200
        client.transport.write(attempt)
    answer = await closedResponse(client)
    assert answer.status == 400
    assert b"/part/x" not in listener.part.paths and b"/part/smuggled" not in listener.part.paths


@pytest.mark.parametrize("body, headers", [
    (b"x" * (MAX_BUFFERED_BODY + 1), {}),
    (b"%x\r\n%s\r\n0\r\n\r\n" % (MAX_BUFFERED_BODY + 1, b"x" * (MAX_BUFFERED_BODY + 1)),
     {"Transfer-Encoding": "chunked"}),
], ids=["content-length", "chunked"])
@pytest_twisted.ensureDeferred
async def test_a_body_a_part_takes_whole_is_bounded(listener, body, headers):
    client = await listener.connect(request("POST", "/part/x", headers, body))
    answer = await closedResponse(client)
    assert answer.status == 413
    assert listener.part.paths == []


@pytest_twisted.ensureDeferred
async def test_the_gate_admits_every_request_rate_and_origin(stop_after):
    listener = await stop_after(Listener(
        "listen.per_ip_rate=1", 'listen.allowed_origins=["https://app.example"]')).start()
    client = await listener.connect(get("/part/1", Origin="https://app.example"))
    assert (await readResponse(client)).status == 200
    client.transport.write(get("/part/2"))  # at once: beyond 1 a second
    assert (await closedResponse(client)).status == 429
    await deferLater(reactor, 1.1)  # the rate's second passes (nothing to poll but the gate)
    client = await listener.connect(get("/part/3", Origin="https://evil.example"))
    assert (await closedResponse(client)).status == 403
    assert listener.part.paths == [b"/part/1"]


@pytest_twisted.ensureDeferred
async def test_idle_and_slow_kept_alive_connections_close_after_the_handshake_timeout(stop_after):
    listener = await stop_after(Listener("listen.open_handshake_timeout=1")).start()
    idle = await listener.connect(get("/part/1"))
    assert (await readResponse(idle)).status == 200
    slow = await listener.connect(get("/part/2"))
    assert (await readResponse(slow)).status == 200
    slow.transport.write(b"GET /part/3 HTTP/1.1\r\nHost: h\r\n")  # and no more
    started = reactor.seconds()
    await defer.gatherResults([idle.closed.addTimeout(5, reactor),
                               slow.closed.addTimeout(5, reactor)])
    assert 0.9 < reactor.seconds() - started < 4
    [family] = listener.metrics.limitHits.collect()
    hits = {s.labels["limit"]: s.value for s in family.samples if s.name.endswith("_total")}
    assert hits["open_handshake_timeout"] == 1  # the slow one; the idle one just closed


@pytest_twisted.ensureDeferred
async def test_the_client_address_behind_a_proxy_header_survives_the_hand_off(stop_after):
    listener = await stop_after(Listener(endpoint="haproxy:tcp:0:interface=127.0.0.1")).start()
    client = await listener.connect(PEER_V1 + get("/part/1") + get("/part/2"))
    for _ in range(2):
        assert json.loads((await readResponse(client)).body)["peer"] == "203.0.113.7"


@pytest_twisted.ensureDeferred
async def test_tls_survives_the_hand_off(tmp_path, stop_after):
    certs = makeCertificates(tmp_path)
    listener = await stop_after(Listener(endpoint=f"ssl:0:interface=127.0.0.1:privateKey="
                                         f"{certs['server-key']}:certKey={certs['server']}")).start()
    client = await listener.connect()
    trust = ssl.Certificate.loadPEM(certs["ca"].read_bytes())
    client.transport.startTLS(ssl.optionsForClientTLS("localhost", trustRoot=trust))
    client.transport.write(get("/part/1") + get("/part/2"))
    for _ in range(2):
        assert json.loads((await readResponse(client)).body)["secure"] is True


@pytest_twisted.ensureDeferred
async def test_draining_closes_idle_connections_now_and_busy_ones_once_answered(listener):
    idle = await listener.connect(get("/part/1"))
    assert (await readResponse(idle)).status == 200
    busy = await listener.connect(request("PUT", "/part/held"))
    await waitFor(lambda: getattr(listener.part, "held", None), interval=0.01,
                  what="the PUT held by the part")
    listener.proxy.web.drain()
    await idle.closed.addTimeout(5, reactor)
    assert not busy.closed.called
    listener.part.held.write(b"done")
    listener.part.held.finish()
    answer = await closedResponse(busy)
    assert (answer.status, answer.body) == (200, b"done")
