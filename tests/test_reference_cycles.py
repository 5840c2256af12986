"""
A connection's life through wslb leaves no reference cycle behind: what it
made is freed by reference counting the moment it ends, never left to the
garbage collector. wslb.collector freezes what survives a full collection,
and a cycle among frozen objects would be kept for good, so this is what
makes that safe (and what keeps a crowd's churn off the collector).

wslb runs in this process over real echo worker processes; the users are a
separate Python process speaking raw RFC 6455 over sockets, so that the
only connections in this process are wslb's own.
"""

import gc
import sys
import textwrap
from contextlib import contextmanager

import pytest
import pytest_twisted
from _polling import waitFor
from twisted.internet import reactor, utils
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

ROUNDS = 10  # of each way a connection ends

# What each user does, by name: the worker's own "close"/"end" commands
# (wslb.worker.echo), a close frame, a dropped socket, an unmasked frame
# (a protocol error: wslb closes with 1002), a handshake wslb refuses.
USERS = textwrap.dedent("""
    import base64, os, socket, struct, sys, time

    port, rounds, phase = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

    def frame(opcode, payload, masked=True):
        head = bytes([0x80 | opcode])
        if not masked:
            return head + bytes([len(payload)]) + payload
        key = os.urandom(4)
        body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        return head + bytes([0x80 | len(payload)]) + key + body

    def send(key, valid=True, path="/"):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Version: 13", f"X-WSLB-Session: {key}"]
        if valid:
            lines.append("Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode())
        s.sendall(("\\r\\n".join(lines) + "\\r\\n\\r\\n").encode())
        return s

    def handshake(key, valid=True):
        s = send(key, valid)
        head = b""
        while b"\\r\\n\\r\\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
        return s, head.split(b" ", 2)[1] if head else b""

    def readToEnd(s):
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:  # dropped by wslb: an end too
            pass
        s.close()

    def answerClose(s):
        assert s.recv(4096)[0] == 0x88  # the worker's close frame, passed on
        s.sendall(frame(8, struct.pack("!H", 1000)))
        readToEnd(s)

    def relayed(key):
        s, status = handshake(key)
        assert status == b"101", status
        s.sendall(frame(1, b"hello"))
        assert s.recv(4096)
        return s

    if phase == "refused by the worker":
        for n in range(rounds):
            s, status = handshake(f"refused-by-worker-{n}")
            assert status == b"502", status
            readToEnd(s)
        print("done")
        sys.exit()

    if phase == "leaving during the worker's handshake":
        for n in range(rounds):
            s = send(f"leaving-{n}", path="/stall")
            time.sleep(0.2)  # the worker never answers: wslb holds the handshake
            s.close()
        print("done")
        sys.exit()

    if phase == "leaving the queue":
        for n in range(rounds):
            holding = send(f"holding-{n}", path="/stall")  # the only slot, held
            time.sleep(0.2)
            queued = send(f"queued-{n}")
            time.sleep(0.2)  # waiting in the queue
            queued.close()
            time.sleep(0.1)
            holding.close()
        print("done")
        sys.exit()

    if phase == "timeouts":
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)  # never asks
        half = socket.create_connection(("127.0.0.1", port), timeout=10)
        half.sendall(b"GET / HTTP/1.1\\r\\n")  # and never finishes
        idle = relayed("idle")  # closed by idle_timeout; never answers the close
        for s in (silent, half, idle):
            readToEnd(s)
        print("done")
        sys.exit()

    assert phase == "relayed", phase
    for n in range(rounds):
        s = relayed(f"clean-{n}")
        s.sendall(frame(8, struct.pack("!H", 1000)))
        readToEnd(s)
        relayed(f"dropped-{n}").close()
        s = relayed(f"worker-closes-{n}")
        s.sendall(frame(1, b"close 1000"))
        answerClose(s)
        s = relayed(f"ended-{n}")
        s.sendall(frame(1, b"end"))
        answerClose(s)
        s = relayed(f"unmasked-{n}")
        s.sendall(frame(1, b"hi", masked=False))
        readToEnd(s)
        s, status = handshake(f"refused-{n}", valid=False)
        assert status == b"400", status
        readToEnd(s)
    print("done")
""")

# Garbage these make is not a user connection's: twisted.web's HTTP client
# (the health checks, on a schedule of their own) and the test's own
# process of users.
NOT_CONNECTIONS = ("twisted.web", "twisted.internet.process", "twisted.internet.utils")


def madeElsewhere(garbage):
    """
    The ids of what in ``garbage`` hangs off NOT_CONNECTIONS' objects,
    found by following references within it.
    """
    inGarbage = {id(obj) for obj in garbage}
    reached = set()
    todo = [obj for obj in garbage if str(type(obj).__module__).startswith(NOT_CONNECTIONS)]
    while todo:
        obj = todo.pop()
        if id(obj) not in reached:
            reached.add(id(obj))
            todo += [r for r in gc.get_referents(obj) if id(r) in inGarbage]
    return reached


@contextmanager
def garbageSaved():
    """
    Everything the collector finds unreachable meanwhile is kept in the
    list it gives: what was made meanwhile (an earlier test's wslb may be
    let go of now), and not elsewhere (NOT_CONNECTIONS).
    """
    gc.collect()
    before = {id(obj) for obj in gc.get_objects()}
    gc.garbage.clear()
    gc.set_debug(gc.DEBUG_SAVEALL)
    left = []
    try:
        yield left
        gc.collect()
        aside = madeElsewhere(gc.garbage)
        left += [obj for obj in gc.garbage if id(obj) not in before and id(obj) not in aside]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def users(wslb, phase, rounds=ROUNDS):
    """Run the users' process through ``phase``; fire once wslb counted them all out."""
    context = wslb.service.getServiceNamed("listener").factory.context
    out, err, code = await utils.getProcessOutputAndValue(
        sys.executable, ["-c", USERS, str(wslb.port), str(rounds), phase])
    assert code == 0 and out.strip() == b"done", err.decode()[-2000:]
    await waitFor(
        lambda: context.gate.connections == 0 and not context.sessions.held.byKey(),
        what="every connection closed and counted out")


async def assertNoCycles(wslb, *phases, rounds=ROUNDS):
    """The users' process through each of ``phases`` leaves nothing in a cycle."""
    with garbageSaved() as left:
        for phase in phases:
            await users(wslb, phase, rounds)
    assert left == [], f"{len(left)} objects in reference cycles, e.g. {left[:12]}"


# Frozen objects are not traced, so their cycles would go unseen here: each
# wslb runs with gc.freeze=false.


@pytest.mark.timeout(90)
@pytest_twisted.ensureDeferred
async def test_no_relayed_connection_leaves_a_reference_cycle(echo_workers, start_wslb):
    wslb = await start_wslb(echo_workers, "pool.capacity=1000", "gc.freeze=false")
    await assertNoCycles(wslb, "relayed")


@pytest.mark.timeout(90)
@pytest_twisted.ensureDeferred
async def test_a_worker_dialled_through_an_endpoint_is_warned_of_once_when_freezing(
        echo_workers, start_wslb, log_events):
    """
    A host name (or wss://) is dialled through Twisted's endpoints, whose
    connections do end in cycles (HostnameEndpoint makes a class for each):
    with [gc] freeze those wait for the thaw, and wslb says so.
    """
    named = [ByName(worker) for worker in echo_workers]
    for freeze, expected in (("false", 0), ("true", 1)):
        log_events.clear()
        wslb = await start_wslb(named, "pool.capacity=1000", f"gc.freeze={freeze}")
        await users(wslb, "relayed", rounds=1)
        await wslb.stop()
        warned = [e for e in log_events if "named by a host name" in e.get("log_format", "")]
        assert len(warned) == expected, freeze


@pytest.mark.timeout(90)
@pytest_twisted.ensureDeferred
async def test_nor_one_that_times_out_or_idles_away(echo_workers, start_wslb):
    wslb = await start_wslb(echo_workers, "pool.capacity=1000", "gc.freeze=false",
                            "listen.open_handshake_timeout=0.5", "listen.idle_timeout=1")
    await assertNoCycles(wslb, "timeouts")


@pytest.mark.timeout(90)
@pytest_twisted.ensureDeferred
async def test_nor_one_the_worker_refuses_or_its_user_leaves_meanwhile(start_wslb, stop_after):
    worker = await stop_after(RefusingWorker()).start()
    wslb = await start_wslb([worker], "pool.capacity=1000", "gc.freeze=false")
    await assertNoCycles(
        wslb, "refused by the worker", "leaving during the worker's handshake", rounds=3)


@pytest.mark.timeout(90)
@pytest_twisted.ensureDeferred
async def test_nor_one_that_leaves_the_queue(start_wslb, stop_after):
    worker = await stop_after(RefusingWorker()).start()
    wslb = await start_wslb([worker], "pool.capacity=1", "gc.freeze=false")
    await assertNoCycles(wslb, "leaving the queue", rounds=3)


class ByName:
    """An echo worker, as ws://localhost:PORT."""

    def __init__(self, worker):
        self.url = worker.url.replace("127.0.0.1", "localhost")


class RefusingWorker:
    """
    Healthy, and answers every WebSocket handshake 403 (wslb answers its
    users 502), but never one to /stall.
    """

    async def start(self):
        class Refusing(Resource):
            isLeaf = True

            def render_GET(self, request):
                if request.path == b"/health":
                    return b"ok"
                if request.path == b"/stall":
                    return NOT_DONE_YET
                request.setResponseCode(403)
                return b"no"

        self.port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            Site(Refusing()))
        self.url = f"ws://127.0.0.1:{self.port.getHost().port}"
        return self

    def stop(self):
        return self.port.stopListening()
