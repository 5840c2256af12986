"""
The byte relay with hand-made frames: what it must refuse, answer or keep
while it parses only frame headers. What clients see end to end is in
test_proxy_e2e.py.
"""

import gc
import struct
import weakref

import pytest
import pytest_twisted
from _echo_helpers import EchoWorkerProcess, getJSON
from _polling import waitFor
from _raw_ws import BINARY, CLOSE, PING, PONG, TEXT, connectRaw, frame, upgradeRequest
from twisted.internet import reactor
from twisted.internet.task import deferLater
from zope.interface.verify import verifyObject

from wslb.proxy.interfaces import IRelay
from wslb.proxy.sessions import LiveSessions
from wslb.proxy.splice import CLOSE_TIMEOUT, Splice
from wslb.proxy.user_handshake import UserHandshake
from wslb.proxy.worker_handshake import WorkerHandshake

pytestmark = pytest.mark.workers(1)


CAPACITY = "pool.capacity=10"


async def rawSession(wslb, key, raws):
    raw = await connectRaw(wslb.port)
    raws.append(raw)
    assert await raw.handshake(upgradeRequest(wslb.port, headers={"X-WSLB-Session": key})) == 101
    return raw


def relays(wslb):
    """The relays wslb's LiveSessions holds now."""
    sessions, = [s for s in wslb.service if isinstance(s, LiveSessions)]
    return sessions.legs()


def closeCode(payload):
    return struct.unpack("!H", payload[:2])[0]


async def protocolErrors(worker):
    _, stats = await getJSON(worker.http + "/stats")
    return stats["protocol_errors"]


@pytest_twisted.ensureDeferred
async def test_sessions_are_spliced_and_the_handshake_protocols_freed(
        echo_workers, start_wslb, clients):
    handshakeProtocols = (UserHandshake, WorkerHandshake)
    earlier = weakref.WeakSet(o for o in gc.get_objects() if isinstance(o, handshakeProtocols))
    # gc.get_objects() lists no frozen object: a kept protocol would go unseen.
    wslb = await start_wslb(echo_workers, CAPACITY, "gc.freeze=false")
    client = await wslb.connect("spliced")
    clients.append(client)
    assert (await client.ask("whoami"))["session"] == "spliced"
    [relay] = relays(wslb)
    assert type(relay) is Splice
    assert verifyObject(IRelay, relay)
    gc.collect()
    assert not [o for o in gc.get_objects()
                if isinstance(o, handshakeProtocols) and o not in earlier]


@pytest_twisted.ensureDeferred
async def test_frames_split_across_reads_pass_whole(echo_workers, start_wslb, raws):
    wslb = await start_wslb(echo_workers, CAPACITY)
    raw = await rawSession(wslb, "split", raws)
    text = ("é" * 150).encode()  # 300 bytes: a 16-bit length, a character per two bytes
    for data in (frame(TEXT, text), frame(PING, b"are you there")):
        for i in range(len(data)):  # one byte a write: every boundary is split
            raw.transport.write(data[i:i + 1])
            await deferLater(reactor, 0.002)  # the thing tested: a read per byte
    assert await raw.nextMessage() == (TEXT, text)
    assert await raw.nextMessage() == (PONG, b"are you there")  # the worker's answer
    # A message in fragments, its UTF-8 split between them.
    raw.transport.write(frame(TEXT, b"caf\xc3", fin=False) + frame(0, b"\xa9!"))
    assert await raw.nextMessage() == (TEXT, "café!".encode())
    assert await protocolErrors(echo_workers[0]) == 0


@pytest.mark.parametrize("frames, code", [
    ([frame(TEXT, b"\xc3\x28")], 1007),  # invalid UTF-8
    ([frame(TEXT, b"ok \xc3", fin=False), frame(0, b"", fin=True)], 1007),  # cut short
    ([frame(TEXT, b"unmasked", mask=False)], 1002),
    ([frame(TEXT, b"x", rsv=4)], 1002),
    ([frame(5, b"reserved opcode")], 1002),
    ([frame(0, b"orphan continuation")], 1002),
    ([frame(PING, b"x" * 126)], 1002),
    ([frame(CLOSE, struct.pack("!H", 1005))], 1002),
    ([frame(CLOSE, struct.pack("!H", 4000) + b"\xff")], 1007),
    ([frame(BINARY, b"a" * 600, fin=False), frame(0, b"b" * 600)], 1009),  # 1024 in all
])
@pytest_twisted.ensureDeferred
async def test_malformed_input_is_refused_before_the_worker(
        echo_workers, start_wslb, clients, raws, frames, code):
    wslb = await start_wslb(echo_workers, CAPACITY, "listen.max_message_size=1024")
    bystander = await wslb.connect("bystander")
    clients.append(bystander)
    raw = await rawSession(wslb, "hostile", raws)
    raw.transport.write(frame(BINARY, b"fine so far"))
    assert await raw.nextMessage() == (BINARY, b"fine so far")
    raw.transport.write(b"".join(frames))
    opcode, payload = await raw.nextMessage()
    assert (opcode, closeCode(payload)) == (CLOSE, code)
    await raw.closed.addTimeout(5, reactor)
    assert await protocolErrors(echo_workers[0]) == 0
    bystander.sendMessage(b"unharmed")
    assert await bystander.nextMessage() == (b"unharmed", False)


@pytest_twisted.ensureDeferred
async def test_auto_ping_keeps_answering_users_and_drops_silent_ones(
        echo_workers, start_wslb, raws):
    wslb = await start_wslb(echo_workers, CAPACITY, "listen.auto_ping=1s")
    silent = await rawSession(wslb, "silent", raws)
    polite = await rawSession(wslb, "polite", raws)
    pings = 0
    started = reactor.seconds()
    while reactor.seconds() - started < 3.5:
        opcode, payload = await polite.nextMessage()
        assert opcode == PING, (opcode, payload)  # the worker's pongs never reach users
        pings += 1
        polite.transport.write(frame(PONG, payload))
    assert pings >= 3
    assert silent.closed.called  # missed a tick's ping: dropped
    assert PING in (b & 0x0F for b in silent.received[:1])
    polite.transport.write(frame(TEXT, b"still here"))
    opcode, payload = await polite.nextMessage()
    while opcode == PING:
        polite.transport.write(frame(PONG, payload))
        opcode, payload = await polite.nextMessage()
    assert (opcode, payload) == (TEXT, b"still here")
    assert await protocolErrors(echo_workers[0]) == 0


async def workerCloses(worker, key):
    """The close codes the worker saw for ``key``'s connections, once there is one."""
    _, stats = await waitFor(
        lambda: getJSON(worker.http + "/stats"),
        lambda answer: any(c["session"] == key for c in answer[1]["closes"]),
        what=f"a close of {key} seen by the worker",
    )
    return [c["code"] for c in stats["closes"] if c["session"] == key]


@pytest_twisted.ensureDeferred
async def test_a_user_vanishing_closes_the_worker_leg_with_1001(echo_workers, start_wslb, raws):
    wslb = await start_wslb(echo_workers, CAPACITY)
    raw = await rawSession(wslb, "vanishing", raws)
    raw.transport.write(frame(TEXT, b"hi"))
    assert await raw.nextMessage() == (TEXT, b"hi")
    raw.transport.abortConnection()  # no close frame, just gone
    assert await workerCloses(echo_workers[0], "vanishing") == [1001]
    assert relays(wslb) == []


@pytest_twisted.ensureDeferred
async def test_a_user_ignoring_wslbs_close_is_still_dropped(echo_workers, start_wslb, raws):
    wslb = await start_wslb(echo_workers, CAPACITY, "listen.idle_timeout=1s")
    raw = await rawSession(wslb, "deaf", raws)
    opcode, payload = await raw.nextMessage()  # idle: wslb closes, the user never answers
    assert (opcode, closeCode(payload)) == (CLOSE, 1008)
    await raw.closed.addTimeout(CLOSE_TIMEOUT + 1, reactor)
    assert await workerCloses(echo_workers[0], "deaf") == [1008]
    assert relays(wslb) == []


@pytest_twisted.ensureDeferred
async def test_nothing_after_a_close_frame_is_read(echo_workers, start_wslb, raws):
    wslb = await start_wslb(echo_workers, CAPACITY)
    raw = await rawSession(wslb, "tidy", raws)
    # A close and, in the same read, a frame that would be invalid UTF-8.
    raw.transport.write(frame(CLOSE, struct.pack("!H", 1000)) + frame(TEXT, b"\xff"))
    opcode, payload = await raw.nextMessage()
    assert (opcode, closeCode(payload)) == (CLOSE, 1000)  # the worker's answer, not 1007
    await raw.closed.addTimeout(5, reactor)
    assert await workerCloses(echo_workers[0], "tidy") == [1000]


@pytest_twisted.ensureDeferred
async def test_a_user_sending_is_alive_without_answering_pings(echo_workers, start_wslb, raws):
    wslb = await start_wslb(echo_workers, CAPACITY, "listen.auto_ping=1s")
    busy = await rawSession(wslb, "busy", raws)
    started = reactor.seconds()
    while reactor.seconds() - started < 3.5:
        busy.transport.write(frame(BINARY, b"data"))
        await deferLater(reactor, 0.3)  # the thing tested: data now and then, no pong
    assert not busy.closed.called


@pytest_twisted.ensureDeferred
async def test_a_slow_large_frame_is_activity(echo_workers, start_wslb, raws):
    wslb = await start_wslb(echo_workers, CAPACITY, "listen.idle_timeout=2s")
    raw = await rawSession(wslb, "slow", raws)
    payload = bytes(range(256)) * 160  # 40 KiB, trickled over about 4 s
    data = frame(BINARY, payload)
    for i in range(0, len(data), 2048):
        raw.transport.write(data[i:i + 2048])
        await deferLater(reactor, 0.2)  # the thing tested: a frame trickled in
    assert await raw.nextMessage() == (BINARY, payload)  # not closed as idle


@pytest.fixture
def echoingWorker():
    """An echo worker that answers a close with the peer's own code."""
    worker = EchoWorkerProcess("--echo-close-code").waitHealthy()
    yield worker
    worker.kill()


@pytest_twisted.ensureDeferred
async def test_a_user_closing_with_the_end_code_does_not_end_its_session(
        echoingWorker, start_wslb, raws):
    wslb = await start_wslb([echoingWorker], CAPACITY)
    raw = await rawSession(wslb, "mine", raws)
    raw.transport.write(frame(CLOSE, struct.pack("!H", 4000)))  # end_close_code
    opcode, payload = await raw.nextMessage()
    assert (opcode, closeCode(payload)) == (CLOSE, 4000)  # the worker's answer
    await raw.closed.addTimeout(5, reactor)
    # Its connection counted out (after an end would have been asked for):
    # the session, not ended, waits under its reconnect grace.
    status, session = await waitFor(
        lambda: getJSON(wslb.admin + "/api/v1/sessions/mine"),
        lambda answer: answer[0] != 200 or not answer[1]["connected"],
        what="mine disconnected or ended")
    assert status == 200, session  # only the worker's own close ends a session
