"""
Pins, one test each, what L{wslb.proxy.transports} relies on in Twisted's
transports, on real loopback connections: a Twisted release that changes
one of them fails here by name. pyproject.toml bounds ``twisted`` to the
releases these passed on; the last test keeps the installed Twisted inside
that bound, so that a green run means the bound holds.
"""

import gc
import socket
import tomllib
import weakref
from importlib.metadata import version
from pathlib import Path

import pytest
import pytest_twisted
from _certs import makeCertificates
from _polling import waitFor
from packaging.requirements import Requirement
from twisted.internet import defer, reactor, ssl, tcp
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    UNIXClientEndpoint,
    serverFromString,
    wrapClientTLS,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import deferLater
from twisted.protocols import policies
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol

from wslb.proxy.transports import dropConnector, noDelay, takeOver, writeNow, writesLandIn

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


class Recorder(Protocol):
    def __init__(self):
        self.received = b""
        self.made = defer.Deferred()

    def connectionMade(self):
        self.made.callback(self)

    def dataReceived(self, data):
        self.received += data


class Listener:
    """A server endpoint on 127.0.0.1 whose connections are Recorders, kept."""

    def __init__(self, description):
        self.description = description
        self.accepted = []

    async def __aenter__(self):
        factory = Factory.forProtocol(self._record)
        self.port = await serverFromString(reactor, self.description).listen(factory)
        return self

    def _record(self):
        recorder = Recorder()
        self.accepted.append(recorder)
        return recorder

    async def __aexit__(self, *exc):
        for recorder in self.accepted:
            if recorder.transport is not None:
                recorder.transport.abortConnection()
        await self.port.stopListening()

    async def rawClient(self, first=b""):
        """A blocking socket connected to the listener, and the Recorder it reached."""
        client = socket.create_connection(("127.0.0.1", self.port.getHost().port), 5)
        client.sendall(first)
        await waitFor(lambda: self.accepted and self.accepted[-1].made.called, interval=0.01,
                      what="the listener's protocol connected")
        return client, self.accepted[-1]


@pytest.mark.timeout(10)
@pytest_twisted.ensureDeferred
async def test_writeNow_sends_at_once_when_twisted_holds_nothing():
    """tcp.Connection's dataBuffer, _tempDataLen, _aborting and socket, as sendNow reads them."""
    async with Listener("tcp:0:interface=127.0.0.1") as listener:
        client, server = await listener.rawClient()
        with client:
            transport = server.transport
            assert isinstance(transport, tcp.Connection)
            assert (transport.dataBuffer, transport._tempDataLen, transport._aborting) == (
                b"", 0, False)
            writeNow(transport, b"now")
            assert client.recv(16) == b"now"  # before any reactor turn

            transport.write(b"queued ")  # Twisted holds it for the next turn ...
            assert transport._tempDataLen == len(b"queued ")
            writeNow(transport, b"after")  # ... so this waits behind it
            client.setblocking(False)
            with pytest.raises(BlockingIOError):
                client.recv(16)
            client.setblocking(True)
            await deferLater(reactor, 0.05)  # a reactor turn writes what Twisted holds
            assert client.recv(64) == b"queued after"

            transport.abortConnection()
            assert transport._aborting is True
            writeNow(transport, b"late")  # nothing goes to an aborting socket
            await deferLater(reactor, 0.05)  # the abort closes the socket at the next turn
            client.settimeout(5)
            try:
                assert client.recv(16) == b""
            except ConnectionResetError:
                pass


@pytest.mark.timeout(10)
@pytest_twisted.ensureDeferred
async def test_writes_through_a_proxy_protocol_wrapper_land_in_its_tcp_connection():
    """HAProxyProtocolWrapper passes writes on with ProtocolWrapper.write, untouched."""
    assert HAProxyProtocolWrapper.write is policies.ProtocolWrapper.write
    async with Listener("haproxy:tcp:0:interface=127.0.0.1") as listener:
        client, server = await listener.rawClient(b"PROXY TCP4 192.0.2.1 192.0.2.2 4000 80\r\n")
        with client:
            assert isinstance(server.transport, HAProxyProtocolWrapper)
            assert isinstance(writesLandIn(server.transport), tcp.Connection)
            writeNow(server.transport, b"through")
            assert client.recv(16) == b"through"


@pytest.mark.timeout(10)
@pytest_twisted.ensureDeferred
async def test_takeOver_a_server_connection(tmp_path):
    """tcp.Server.protocol, and a PROXY wrapper's wrappedProtocol, hand reads to a new protocol."""
    for description, first in [("tcp:0:interface=127.0.0.1", b""),
                               ("haproxy:tcp:0:interface=127.0.0.1",
                                b"PROXY TCP4 192.0.2.1 192.0.2.2 4000 80\r\n")]:
        async with Listener(description) as listener:
            client, server = await listener.rawClient(first)
            with client:
                new = Recorder()
                takeOver(server, new)
                client.sendall(b"to the new one")
                await waitFor(lambda new=new: new.received == b"to the new one", interval=0.01)
                assert server.received == b""


@pytest.mark.timeout(10)
@pytest_twisted.ensureDeferred
async def test_takeOver_a_client_endpoints_connection():
    """A client endpoint's connection holds _WrappingProtocol, whose _wrappedProtocol is ours."""
    async with Listener("tcp:0:interface=127.0.0.1") as listener:
        old = await TCP4ClientEndpoint(reactor, "127.0.0.1", listener.port.getHost().port).connect(
            Factory.forProtocol(Recorder))
        try:
            assert old.transport.protocol._wrappedProtocol is old
            await waitFor(lambda: listener.accepted, interval=0.01)
            new = Recorder()
            takeOver(old, new)
            listener.accepted[0].transport.write(b"to the new one")
            await waitFor(lambda new=new: new.received == b"to the new one", interval=0.01)
            assert old.received == b""
        finally:
            old.transport.abortConnection()


@pytest.mark.timeout(10)
@pytest_twisted.ensureDeferred
async def test_dropConnector_leaves_a_lost_client_connection_to_reference_counting():
    """
    A TCP client connection and its connector name each other; once
    dropConnector let go of one side, the lost connection is freed without
    the garbage collector.
    """
    lost = defer.Deferred()

    class Client(Protocol):
        def connectionLost(self, reason):
            dropConnector(self.transport)
            lost.callback(None)

    async with Listener("tcp:0:interface=127.0.0.1") as listener:
        connector = reactor.connectTCP("127.0.0.1", listener.port.getHost().port,
                                       ClientFactory.forProtocol(Client), timeout=None)
        await waitFor(lambda connector=connector: connector.state == "connected", interval=0.01)
        client = connector.transport
        assert client.connector is connector  # the cycle dropConnector breaks
        gone = weakref.ref(client)
        gc.disable()
        try:
            client.loseConnection()
            del client
            await lost
            await deferLater(reactor, 0, lambda: None)  # Twisted's connectionLost returns
            assert connector.transport is None
            del connector
            assert gone() is None, gc.get_referrers(gone())
        finally:
            gc.enable()


@pytest.mark.timeout(20)
@pytest_twisted.ensureDeferred
async def test_takeOver_a_tls_connection_and_its_writes_are_not_sent_raw(tmp_path):
    """TLSMemoryBIOProtocol.wrappedProtocol hands reads on; its own write encrypts (not skipped)."""
    certs = makeCertificates(tmp_path)
    description = (f"ssl:0:interface=127.0.0.1:privateKey={certs['server-key']}"
                   f":certKey={certs['server']}")
    async with Listener(description) as listener:
        trust = ssl.Certificate.loadPEM(certs["ca"].read_bytes())
        endpoint = wrapClientTLS(
            ssl.optionsForClientTLS("localhost", trustRoot=trust),
            TCP4ClientEndpoint(reactor, "127.0.0.1", listener.port.getHost().port))
        client = await endpoint.connect(Factory.forProtocol(Recorder))
        try:
            await waitFor(lambda: listener.accepted, interval=0.01)
            server = listener.accepted[0]
            assert isinstance(server.transport, TLSMemoryBIOProtocol)
            assert writesLandIn(server.transport) is server.transport
            new = Recorder()
            takeOver(server, new)
            client.transport.write(b"encrypted")
            await waitFor(lambda: new.received == b"encrypted", interval=0.01)
            writeNow(server.transport, b"back")
            await waitFor(lambda: client.received == b"back", interval=0.01)
        finally:
            client.transport.abortConnection()


@pytest.mark.timeout(10)
@pytest_twisted.ensureDeferred
async def test_noDelay_on_tcp_and_on_a_unix_socket(tmp_path):
    async with Listener("tcp:0:interface=127.0.0.1") as listener:
        client, server = await listener.rawClient()
        with client:
            noDelay(server.transport)
            handle = server.transport.getHandle()
            assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    path = str(tmp_path / "s")
    async with Listener(f"unix:{path}") as listener:
        client = await UNIXClientEndpoint(reactor, path).connect(Factory.forProtocol(Recorder))
        try:
            noDelay(client.transport)  # no TCP under it: nothing to set, no error
        finally:
            client.transport.abortConnection()


def test_the_installed_twisted_is_within_the_bound_these_pins_were_checked_for():
    """
    pyproject.toml bounds ``twisted`` above to the releases these tests
    passed on. A Twisted installed past it (by hand, or by a tool that
    ignores the bound) would make this run vouch for a release nobody
    checked: raise the bound only with these tests green on the new one.
    """
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    [twisted] = [Requirement(d) for d in dependencies if Requirement(d).name.lower() == "twisted"]
    assert any(spec.operator in ("<", "<=") for spec in twisted.specifier), twisted
    assert twisted.specifier.contains(version("twisted")), (version("twisted"), str(twisted))
