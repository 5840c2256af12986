"""
The byte relay's hand-written handshake with users, through a running wslb
and a real echo worker: what arrives in pieces or early, and what is refused.
"""

import socket
import ssl
import time

import pytest
import pytest_twisted
from _certs import makeCertificates
from _echo_helpers import getJSON
from _raw_ws import TEXT, connectRaw, frame, upgradeRequest
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater

from wslb.proxy.sessions import LiveSessions

pytestmark = pytest.mark.workers(1)


@pytest_twisted.async_fixture()
async def wslb(echo_workers, start_wslb):
    return await start_wslb(echo_workers, "pool.capacity=10")


async def raw(wslb, raws):
    client = await connectRaw(wslb.port)
    raws.append(client)
    return client


def statusLine(client):
    return client.received.partition(b"\r\n")[0].decode()


@pytest_twisted.ensureDeferred
async def test_a_request_in_pieces_and_frames_sent_before_the_101_are_relayed(wslb, raws):
    client = await raw(wslb, raws)
    request = upgradeRequest(wslb.port, headers={"X-WSLB-Session": "eager"})
    for i in range(0, len(request), 7):  # the head split at every 7th byte
        client.transport.write(request[i:i + 7])
        await deferLater(reactor, 0.002)  # the thing tested: the head in pieces
    # The client does not wait for the 101 (its handshake is held meanwhile).
    client.transport.write(frame(TEXT, b"first") + frame(TEXT, b"whoami"))
    received = await client.untilReceived(lambda d: b"\r\n\r\n" in d)
    head, _, client.received = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert await client.nextMessage() == (TEXT, b"first")
    opcode, payload = await client.nextMessage()
    assert b'"session": "eager"' in payload


@pytest.mark.parametrize("request_, status, header", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "426", b"Upgrade: websocket"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
     "426", b"Sec-WebSocket-Version: 13"),
    (b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n", "405", b"Allow: GET"),
])
@pytest_twisted.ensureDeferred
async def test_what_is_not_a_websocket_upgrade_gets_a_status_and_nothing_more(
        wslb, raws, request_, status, header):
    client = await raw(wslb, raws)
    # A second request right behind the first: nothing answers it.
    client.transport.write(request_ + upgradeRequest(wslb.port, headers={"X-WSLB-Session": "k"}))
    await client.closed.addTimeout(5, reactor)
    assert statusLine(client).startswith(f"HTTP/1.1 {status} ")
    assert header in client.received
    assert client.received.count(b"HTTP/1.1") == 1
    # The listener serves the next client as ever.
    other = await raw(wslb, raws)
    assert await other.handshake(upgradeRequest(wslb.port, headers={"X-WSLB-Session": "k"})) == 101


def tlsClientRefusedThenPipelining(port, ca, second):
    """
    Over TLS: a refused request, then an upgrade, never answering wslb's
    close_notify; the bytes the client read, and when wslb dropped it.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context(cafile=str(ca)).wrap_bio(
        incoming, outgoing, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        def flush():
            if outgoing.pending:
                sock.sendall(outgoing.read())

        def until(step):
            while True:
                try:
                    return step()
                except ssl.SSLWantReadError:
                    flush()
                    incoming.write(sock.recv(65536))

        until(tls.do_handshake)
        tls.write(b"DELETE / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        flush()
        answer = until(lambda: tls.read(4096))
        tls.write(second)
        flush()
        started = time.monotonic()
        try:
            while sock.recv(4096):  # wslb's close_notify, then the TCP close
                pass
        except OSError:
            pass
        return answer, time.monotonic() - started


@pytest_twisted.ensureDeferred
async def test_a_refused_tls_client_gets_no_second_answer_and_is_dropped(
        echo_workers, start_wslb, tmp_path):
    certs = makeCertificates(tmp_path)
    wslb = await start_wslb(
        echo_workers, "pool.capacity=10", "listen.open_handshake_timeout=1s",
        f"listen.endpoint=ssl:0:interface=127.0.0.1:privateKey={certs['server-key']}"
        f":certKey={certs['server']}")
    second = upgradeRequest(wslb.port, headers={"X-WSLB-Session": "second"})
    answer, dropped = await threads.deferToThread(
        tlsClientRefusedThenPipelining, wslb.port, certs["ca"], second)
    assert answer.startswith(b"HTTP/1.1 405 ")
    assert dropped < 3  # by the request timeout, not by the client
    _, sessions = await getJSON(wslb.admin + "/api/v1/sessions")
    assert sessions["sessions"] == []  # the second request opened nothing


@pytest_twisted.ensureDeferred
async def test_relayed_frames_do_not_wait_for_acks(wslb, raws):
    client = await raw(wslb, raws)
    assert await client.handshake(upgradeRequest(wslb.port, headers={"X-WSLB-Session": "n"})) == 101
    sessions = next(s for s in wslb.service if isinstance(s, LiveSessions))
    [relay] = sessions.legs()
    for direction in (relay.toWorker, relay.toUser):  # the user's socket and the worker's
        sock = direction.transport.getHandle()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
