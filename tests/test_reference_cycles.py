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
from twisted.internet import endpoints, tcp, utils

ROUNDS = 10  # of each way a connection ends

# What each user does, by name: the worker's own "close"/"end" commands
# (wslb.worker.echo), a close frame, a dropped socket, an unmasked frame
# (a protocol error: wslb closes with 1002), a handshake wslb refuses.
USERS = textwrap.dedent("""
    import base64, os, socket, struct, sys

    port, rounds = int(sys.argv[1]), int(sys.argv[2])

    def frame(opcode, payload, masked=True):
        head = bytes([0x80 | opcode])
        if not masked:
            return head + bytes([len(payload)]) + payload
        key = os.urandom(4)
        body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        return head + bytes([0x80 | len(payload)]) + key + body

    def handshake(key, valid=True):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        lines = ["GET / HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Version: 13", f"X-WSLB-Session: {key}"]
        if valid:
            lines.append("Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode())
        s.sendall(("\\r\\n".join(lines) + "\\r\\n\\r\\n").encode())
        head = b""
        while b"\\r\\n\\r\\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
        return s, head.split(b" ", 2)[1] if head else b""

    def readToEnd(s):
        while s.recv(4096):
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

CONNECTION_TYPES = (tcp.Server, tcp.Client, tcp.Connector, endpoints._WrappingFactory)


def wslbsOwn(obj):
    """Whether ``obj`` is something wslb made for a connection."""
    kind = type(obj)
    module = kind.__module__  # a property, for a few odd types
    return isinstance(module, str) and module.startswith("wslb.") or kind in CONNECTION_TYPES


@contextmanager
def garbageSaved():
    """
    What the collector finds unreachable meanwhile, of what wslb makes for
    connections, is kept in the list it gives: only what was made
    meanwhile (an earlier test's wslb may be let go of now).
    """
    gc.collect()
    before = {id(obj) for obj in gc.get_objects() if wslbsOwn(obj)}
    gc.garbage.clear()
    gc.set_debug(gc.DEBUG_SAVEALL)
    left = []
    try:
        yield left
        gc.collect()
        left += [obj for obj in gc.garbage if wslbsOwn(obj) and id(obj) not in before]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


@pytest.mark.timeout(90)
@pytest_twisted.ensureDeferred
async def test_no_connection_leaves_a_reference_cycle(echo_workers, start_wslb):
    # Frozen objects are not traced, so their cycles would go unseen here.
    wslb = await start_wslb(echo_workers, "pool.capacity=1000", "gc.freeze=false")
    context = wslb.service.getServiceNamed("listener").factory.context
    with garbageSaved() as left:  # from here on, only the users' connections
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable, ["-c", USERS, str(wslb.port), str(ROUNDS)])
        assert code == 0 and out.strip() == b"done", err.decode()[-2000:]
        await waitFor(
            lambda: context.gate.connections == 0 and not context.sessions.held.byKey(),
            what="every connection closed and counted out")
    assert left == [], f"{len(left)} objects in reference cycles, e.g. {left[:10]}"
