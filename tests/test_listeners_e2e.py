"""Listeners: TLS end to end, and PROXY protocol v1/v2 giving the real client address."""

import json
import socket
import struct

import pytest
import pytest_twisted
from _certs import makeCertificates
from _echo_helpers import TIMEOUT, RecordingClient, closeAll
from _raw_ws import TEXT, connectRaw, frame, upgradeRequest
from _wslb_helpers import staticWslb
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS


async def startedWslb(worker, endpoint):
    wslb = await staticWslb([worker], "pool.capacity=10", f"listen.endpoint={endpoint}").start()
    await wslb.waitHealthy(1)
    return wslb


@pytest_twisted.ensureDeferred
async def test_tls_end_to_end_with_a_verifying_client(echo_worker, tmp_path):
    certs = makeCertificates(tmp_path)
    wslb = await startedWslb(
        echo_worker, f"ssl:0:interface=127.0.0.1:privateKey={certs['server-key']}"
                f":certKey={certs['server']}")
    client = None
    try:
        trust = ssl.Certificate.loadPEM(certs["ca"].read_bytes())
        url = f"wss://localhost:{wslb.port}/?session=secure"
        factory = WebSocketClientFactory(url)
        factory.protocol = RecordingClient
        endpoint = wrapClientTLS(
            ssl.optionsForClientTLS("localhost", trustRoot=trust),
            TCP4ClientEndpoint(reactor, "127.0.0.1", wslb.port, timeout=TIMEOUT))
        client = await endpoint.connect(factory)
        await client.opened.addTimeout(TIMEOUT, reactor)
        seen = await client.ask("whoami")
        assert seen["session"] == "secure"
        assert seen["headers"]["x-forwarded-proto"] == "https"

        other = tmp_path / "other"
        other.mkdir()
        wrong = makeCertificates(other, "another CA")
        distrust = ssl.Certificate.loadPEM(wrong["ca"].read_bytes())
        factory2 = WebSocketClientFactory(url)
        factory2.protocol = RecordingClient
        endpoint2 = wrapClientTLS(
            ssl.optionsForClientTLS("localhost", trustRoot=distrust),
            TCP4ClientEndpoint(reactor, "127.0.0.1", wslb.port, timeout=TIMEOUT))
        refused = await endpoint2.connect(factory2)
        with pytest.raises(ConnectionError):  # the TLS handshake fails: never opened
            await refused.opened.addTimeout(TIMEOUT, reactor)
    finally:
        if client is not None:
            closeAll([client])
        await wslb.stop()


def proxyV2(source, sourcePort, dest, destPort):
    body = socket.inet_aton(source) + socket.inet_aton(dest) + struct.pack("!HH", sourcePort, destPort)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


@pytest.mark.parametrize("header, address", [
    (b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 8080\r\n", "203.0.113.7"),
    (proxyV2("198.51.100.9", 40001, "127.0.0.1", 8080), "198.51.100.9"),
])
@pytest_twisted.ensureDeferred
async def test_proxy_protocol_gives_the_real_client_address(echo_worker, header, address):
    wslb = await startedWslb(echo_worker, "haproxy:tcp:0:interface=127.0.0.1")
    client = None
    try:
        client = await connectRaw(wslb.port)
        client.transport.write(header)
        status = await client.handshake(upgradeRequest(
            wslb.port, headers={"X-WSLB-Session": "proxied", "X-Forwarded-For": "6.6.6.6"}))
        assert status == 101
        client.transport.write(frame(TEXT, b"whoami"))
        opcode, payload = await client.nextMessage()
        seen = json.loads(payload)
        assert seen["headers"]["x-forwarded-for"] == address
    finally:
        if client is not None:
            client.transport.abortConnection()
        await wslb.stop()


@pytest_twisted.ensureDeferred
async def test_proxy_listener_drops_a_connection_without_the_header(echo_worker):
    wslb = await startedWslb(echo_worker, "haproxy:tcp:0:interface=127.0.0.1")
    try:
        client = await connectRaw(wslb.port)
        client.transport.write(upgradeRequest(wslb.port, headers={"X-WSLB-Session": "k"}))
        await client.closed.addTimeout(TIMEOUT, reactor)
        assert b"101" not in client.received
    finally:
        await wslb.stop()
