"""
The byte relay's own opening handshake with workers: what answer it takes,
and what it refuses (the user then gets 502, see test_proxy_e2e.py).
"""

import pytest
import pytest_twisted
from _polling import waitFor
from twisted.internet import defer, reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol

from wslb.proxy.worker_handshake import (
    HandshakeFailed,
    WorkerConnector,
    WorkerUnavailable,
    acceptFor,
    checkAnswer,
    handshakeRequest,
)


def test_the_request_carries_what_the_worker_needs():
    request, accept = handshakeRequest(
        "10.0.0.7:9000", "/scene/7?q=1", {"X-WSLB-Session": "k", "Origin": "https://a.test"},
        ["v2", "v1"])
    head = request.decode()
    assert head.startswith("GET /scene/7?q=1 HTTP/1.1\r\nHost: 10.0.0.7:9000\r\n")
    assert head.endswith("\r\n\r\n")
    fields = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if line)
    assert fields["Upgrade"] == "websocket" and fields["Connection"] == "Upgrade"
    assert fields["Sec-WebSocket-Version"] == "13"
    assert fields["Sec-WebSocket-Protocol"] == "v2, v1"
    assert fields["X-WSLB-Session"] == "k" and fields["Origin"] == "https://a.test"
    assert accept == acceptFor(fields["Sec-WebSocket-Key"].encode())


def test_header_bytes_pass_as_sent_and_line_breaks_never():
    request, _ = handshakeRequest("h:1", "/", {"Cookie": "name=caf\xe9"}, [])
    assert b"\r\nCookie: name=caf\xe9\r\n" in request  # the user's byte, not UTF-8
    with pytest.raises(ValueError):
        handshakeRequest("h:1", "/", {"User-Agent": "ua\nX-WSLB-Session: forged"}, [])


def test_rfc_6455_sample_accept():
    assert acceptFor(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


ACCEPT = acceptFor(b"dGhlIHNhbXBsZSBub25jZQ==")
GOOD = [b"HTTP/1.1 101 Switching Protocols", b"Upgrade: WebSocket",
        b"Connection: Upgrade", b"Sec-WebSocket-Accept: " + ACCEPT]


def test_a_good_answer_gives_the_chosen_subprotocol():
    assert checkAnswer(b"\r\n".join(GOOD), ACCEPT, []) is None
    chosen = b"\r\n".join([*GOOD, b"Sec-WebSocket-Protocol: v1"])
    assert checkAnswer(chosen, ACCEPT, ["v2", "v1"]) == "v1"


@pytest.mark.parametrize("head, why", [
    ([b"HTTP/1.1 404 Not Found"], "answered"),
    ([b"HTTP/1.1 101 Switching Protocols", *GOOD[2:]], "Upgrade"),
    ([*GOOD[:2], b"Connection: close", GOOD[3]], "Connection"),
    ([*GOOD[:3], b"Sec-WebSocket-Accept: bm9wZQ=="], "Accept"),
    ([*GOOD, b"Sec-WebSocket-Extensions: permessage-deflate"], "extension"),
    ([*GOOD, b"Sec-WebSocket-Protocol: v3"], "not offered"),
    ([*GOOD, b"no colon here"], "malformed"),
])
def test_a_bad_answer_is_refused(head, why):
    with pytest.raises(HandshakeFailed, match=why):
        checkAnswer(b"\r\n".join(head), ACCEPT, ["v1"])


def test_an_answered_handshake_keeps_nothing_of_its_request():
    """
    A relayed connection keeps its factory for its whole life (the
    connector's): the request, the expected accept and the offered
    subprotocols must not stay with it.
    """
    from twisted.internet import defer
    from twisted.internet.testing import StringTransport

    from wslb.proxy.worker_handshake import HandshakeFactory

    request, accept = handshakeRequest("h:1", "/", {}, ["v1"])
    factory = HandshakeFactory(request, accept, ["v1"], "ws://127.0.0.1:9/")
    opened = factory.opened = defer.Deferred()
    handshake = factory.buildProtocol(None)
    transport = StringTransport()
    handshake.makeConnection(transport)
    assert transport.value() == request
    handshake.dataReceived(b"\r\n".join([
        b"HTTP/1.1 101 Switching Protocols", b"Upgrade: websocket", b"Connection: Upgrade",
        b"Sec-WebSocket-Accept: " + accept, b"Sec-WebSocket-Protocol: v1"]) + b"\r\n\r\n\x81")
    assert opened.called and opened.result is handshake
    assert (handshake.websocket_protocol_in_use, handshake.data) == ("v1", b"\x81")
    assert (factory.request, factory.accept, factory.protocols, factory.opened) == (None,) * 4
    # Until the relay takes the connection over, what comes is frames, even
    # bytes that would end a head: kept for the relay, never read as an answer.
    handshake.dataReceived(b"HTTP/1.1 500 x\r\n\r\n")
    assert handshake.data == b"\x81HTTP/1.1 500 x\r\n\r\n" and not transport.disconnecting


class Silent(Protocol):
    """A worker that accepts and never answers; ``lost`` once its connection is."""

    lost = False

    def connectionLost(self, reason):
        self.lost = True


class SilentWorker:
    """A loopback listener of Silent connections, kept; stopped on exit."""

    async def __aenter__(self):
        self.accepted = []

        def accept():
            self.accepted.append(Silent())
            return self.accepted[-1]

        self.port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            Factory.forProtocol(accept))
        self.url = f"ws://127.0.0.1:{self.port.getHost().port}/"
        return self

    async def __aexit__(self, *exc):
        for protocol in self.accepted:
            protocol.transport.abortConnection()
        await self.port.stopListening()


@pytest.mark.timeout(10)
@pytest_twisted.ensureDeferred
async def test_a_worker_that_never_answers_is_dropped_at_the_timeout():
    async with SilentWorker() as worker:
        connecting = WorkerConnector(reactor, 0.2).connect(worker.url, "/", {}, [])
        with pytest.raises(WorkerUnavailable, match="no handshake"):
            await connecting
        await waitFor(lambda: worker.accepted and worker.accepted[0].lost, interval=0.01,
                      what="the half-open connection dropped")


@pytest.mark.timeout(10)
@pytest_twisted.ensureDeferred
async def test_a_connection_given_up_before_it_is_made_is_stopped():
    """The user left while wslb's connection to its worker was still being made."""
    async with SilentWorker() as worker:
        connecting = WorkerConnector(reactor, 5.0).connect(worker.url, "/", {}, [])
        connecting.cancel()  # before the reactor saw the connection complete
        with pytest.raises(defer.CancelledError):
            await connecting
        await waitFor(lambda: all(p.lost for p in worker.accepted), interval=0.01,
                      what="nothing left open at the worker")


@pytest.mark.timeout(10)
@pytest_twisted.ensureDeferred
async def test_a_worker_that_cannot_be_dialled_at_all_is_unavailable():
    """A host name that is not valid IDNA fails inside connect(): still a 502, not a 500."""
    connecting = WorkerConnector(reactor, 1.0).connect("ws://my_worker:8080/", "/", {}, [])
    with pytest.raises(WorkerUnavailable):
        await connecting
