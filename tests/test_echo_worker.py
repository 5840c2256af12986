"""The demo echo worker, run as a real process and spoken to over real sockets."""

import os
import socket

import pytest
import pytest_twisted
from _echo_helpers import (
    TIMEOUT,
    EchoWorkerProcess,
    closeAll,
    connectWebSocket,
    getJSON,
)
from _polling import waitFor


@pytest.fixture(scope="module")
def worker():
    process = EchoWorkerProcess("--id", "echo-test")
    try:
        yield process.waitHealthy()
    finally:
        process.kill()


@pytest.fixture
def connect(worker):
    """connect(path, headers=..., protocols=...) -> an open client, closed after the test."""
    clients = []

    async def connect(path="/", **kwargs):
        client = await connectWebSocket(worker.url + path, **kwargs)
        clients.append(client)
        return client

    yield connect
    closeAll(clients)


def session(key):
    return {"headers": {"X-WSLB-Session": key}}


def stats(worker):
    async def fetch():
        code, body = await getJSON(worker.http + "/stats")
        assert code == 200
        return body
    return fetch


@pytest_twisted.ensureDeferred
async def test_health(worker):
    assert await getJSON(worker.http + "/health") == (200, {"ok": True, "worker": "echo-test"})


@pytest_twisted.ensureDeferred
async def test_echoes_text_and_binary_of_any_size(connect):
    client = await connect("/")
    big = os.urandom(3 * 1024 * 1024)
    for payload, isBinary in [("héllo".encode(), False), (b"\x00\xff", True), (big, True)]:
        client.sendMessage(payload, isBinary)
        assert await client.nextMessage() == (payload, isBinary)


@pytest_twisted.ensureDeferred
async def test_whoami_names_worker_session_path_and_headers(connect):
    client = await connect("/scene/1?quality=high", headers={
        "X-WSLB-Session": "alice", "X-Forwarded-For": "203.0.113.7",
    })
    client.sendMessage(b"one")
    await client.nextMessage()
    reply = await client.ask("whoami")
    assert reply["worker"] == "echo-test"
    assert reply["session"] == "alice"
    assert reply["count"] == 1
    assert reply["path"] == "/scene/1"
    assert reply["query"] == "quality=high"
    assert reply["headers"]["x-wslb-session"] == "alice"
    assert reply["headers"]["x-forwarded-for"] == "203.0.113.7"


@pytest_twisted.ensureDeferred
async def test_without_session_header_the_key_is_dash(connect):
    client = await connect("/")
    assert (await client.ask("whoami"))["session"] == "-"


@pytest_twisted.ensureDeferred
async def test_counter_survives_reconnection_per_session(connect):
    first = await connect("/", **session("bob"))
    for text in ["a", "b", "c"]:
        first.sendMessage(text.encode())
        await first.nextMessage()
    first.sendClose(1000)
    await first.waitClosed()

    again = await connect("/", **session("bob"))
    assert (await again.ask("whoami"))["count"] == 3
    other = await connect("/", **session("carol"))
    assert (await other.ask("whoami"))["count"] == 0


@pytest_twisted.ensureDeferred
async def test_accepts_the_first_offered_subprotocol(connect):
    offered = await connect("/", protocols=["scene.v2", "scene.v1"])
    assert offered.response.protocol == "scene.v2"
    plain = await connect("/")
    assert plain.response.protocol is None


@pytest.mark.parametrize("code", [1000, 4001, 1011, 1012])
@pytest_twisted.ensureDeferred
async def test_close_command_closes_with_that_code(connect, code):
    client = await connect("/", **session(f"closer-{code}"))
    client.sendMessage(f"close {code} see you".encode())
    assert await client.waitClosed() == (code, "see you")


@pytest_twisted.ensureDeferred
async def test_end_closes_with_4000_and_forgets_the_session(connect, worker):
    client = await connect("/", **session("dave"))
    client.sendMessage(b"x")
    await client.nextMessage()
    client.sendMessage(b"end")
    assert (await client.waitClosed())[0] == 4000

    await waitFor(stats(worker), lambda s: "dave" not in s["sessions"], what="dave forgotten")
    again = await connect("/", **session("dave"))
    assert (await again.ask("whoami"))["count"] == 0


@pytest_twisted.ensureDeferred
async def test_stats_count_connections_sessions_and_closes(connect, worker):
    before = await stats(worker)()
    erin1 = await connect("/room", headers={"X-WSLB-Session": "erin", "Cookie": "a=b"},
                          protocols=["p1"])
    erin2 = await connect("/room", **session("erin"))
    frank = await connect("/", **session("frank"))
    for client in (erin1, erin2, frank):
        client.sendMessage(b"ping")
        await client.nextMessage()

    body = await stats(worker)()
    assert body["worker"] == "echo-test"
    assert body["open"] == before["open"] + 3
    assert body["open_sessions"] == before["open_sessions"] + 2
    assert body["max_open_sessions"] >= 2
    assert body["sessions"]["erin"] == {"count": 2, "connections": 2}
    assert body["sessions"]["frank"] == {"count": 1, "connections": 1}
    record = [c for c in body["connections"] if c["headers"].get("cookie") == "a=b"][-1]
    assert record["session"] == "erin"
    assert record["path"] == "/room"
    assert record["protocol"] == "p1"

    erin1.sendClose(4100, "gone away")
    await erin1.waitClosed()
    body = await waitFor(stats(worker), lambda s: s["sessions"]["erin"]["connections"] == 1)
    assert body["sessions"]["erin"] == {"count": 2, "connections": 1}
    assert {"session": "erin", "code": 4100, "reason": "gone away"} in body["closes"]
    assert body["open"] == before["open"] + 2


def test_sigterm_exits_cleanly():
    process = EchoWorkerProcess().waitHealthy()
    try:
        assert process.terminate() == 0
    finally:
        process.kill()


def test_port_in_use_exits_with_an_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        process = EchoWorkerProcess(port=taken.getsockname()[1])
        try:
            assert process.process.wait(TIMEOUT) != 0
            assert b"Address already in use" in process.process.stderr.read()
        finally:
            process.kill()
