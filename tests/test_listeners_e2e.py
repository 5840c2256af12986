"""Listeners: TLS end to end, and PROXY protocol v1/v2 giving the real client address."""

import json
import socket
import struct

import _guide as guide
import pytest
import pytest_twisted
from _certs import makeCertificates
from _echo_helpers import TIMEOUT, RecordingClient
from _raw_ws import TEXT, connectRaw, frame, upgradeRequest
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString, wrapClientTLS

from wslb.config import ConfigError, load_config, parseEndpoints


def listening(endpoint):
    return "pool.capacity=10", f"listen.endpoint={endpoint}"


def connectTLS(port, ca):
    """A WebSocket client for the session "secure" over TLS to localhost, trusting ``ca``."""
    factory = WebSocketClientFactory(f"wss://localhost:{port}/?session=secure")
    factory.protocol = RecordingClient
    return wrapClientTLS(
        ssl.optionsForClientTLS("localhost", trustRoot=ssl.Certificate.loadPEM(ca.read_bytes())),
        TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=TIMEOUT)).connect(factory)


@pytest_twisted.ensureDeferred
async def test_tls_end_to_end_with_a_verifying_client(echo_worker, start_wslb, tmp_path, clients):
    certs = makeCertificates(tmp_path)
    wslb = await start_wslb([echo_worker], *listening(
        f"ssl:0:interface=127.0.0.1:privateKey={certs['server-key']}:certKey={certs['server']}"))
    client = await connectTLS(wslb.port, certs["ca"])
    clients.append(client)
    await client.opened.addTimeout(TIMEOUT, reactor)
    seen = await client.ask("whoami")
    assert seen["session"] == "secure"
    assert seen["headers"]["x-forwarded-proto"] == "https"

    other = tmp_path / "other"
    other.mkdir()
    wrong = makeCertificates(other, "another CA")
    refused = await connectTLS(wslb.port, wrong["ca"])
    with pytest.raises(ConnectionError):  # the TLS handshake fails: never opened
        await refused.opened.addTimeout(TIMEOUT, reactor)


def proxyV2(source, sourcePort, dest, destPort):
    body = socket.inet_aton(source) + socket.inet_aton(dest) + struct.pack("!HH", sourcePort, destPort)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


@pytest.mark.parametrize("header, address", [
    (b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 8080\r\n", "203.0.113.7"),
    (proxyV2("198.51.100.9", 40001, "127.0.0.1", 8080), "198.51.100.9"),
])
@pytest_twisted.ensureDeferred
async def test_proxy_protocol_gives_the_real_client_address(
        echo_worker, start_wslb, raws, header, address):
    wslb = await start_wslb([echo_worker], *listening("haproxy:tcp:0:interface=127.0.0.1"))
    client = await connectRaw(wslb.port)
    raws.append(client)
    client.transport.write(header)
    status = await client.handshake(upgradeRequest(
        wslb.port, headers={"X-WSLB-Session": "proxied", "X-Forwarded-For": "6.6.6.6"}))
    assert status == 101
    client.transport.write(frame(TEXT, b"whoami"))
    opcode, payload = await client.nextMessage()
    seen = json.loads(payload)
    assert seen["headers"]["x-forwarded-for"] == address


@pytest_twisted.ensureDeferred
async def test_proxy_listener_drops_a_connection_without_the_header(echo_worker, start_wslb):
    wslb = await start_wslb([echo_worker], *listening("haproxy:tcp:0:interface=127.0.0.1"))
    client = await connectRaw(wslb.port)
    client.transport.write(upgradeRequest(wslb.port, headers={"X-WSLB-Session": "k"}))
    await client.closed.addTimeout(TIMEOUT, reactor)
    assert b"101" not in client.received


# --- PROXY header, then TLS: what an NLB (proxy protocol v2) and HAProxy's send-proxy send ---

V1_HEADER = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 8443\r\n"


def guideEndpoint(certs):
    """docs/aws.md's TLS listener behind an NLB, on a free loopback port with the test's files."""
    endpoint = guide.toml("listen-tls-behind-nlb")["listen"]["endpoint"]
    mapping = {":8443:": ":0:interface=127.0.0.1:", "/etc/wslb/key.pem": str(certs["server-key"]),
               "/etc/wslb/cert.pem": str(certs["server"])}
    for written, tested in mapping.items():
        assert written in endpoint, (written, endpoint)
        endpoint = endpoint.replace(written, tested)
    return endpoint


async def connectAs(port, *, clear=b"", certs=None, inside=b""):
    """
    A raw connection that sends ``clear``, then (with ``certs``) speaks TLS
    verifying localhost and sends ``inside`` through it.
    """
    client = await connectRaw(port)
    client.transport.write(clear)
    if certs is not None:
        trust = ssl.Certificate.loadPEM(certs["ca"].read_bytes())
        client.transport.startTLS(ssl.optionsForClientTLS("localhost", trustRoot=trust))
    client.transport.write(inside)
    return client


async def upgrade(client, port):
    """Upgrade without a session key: the status and the Set-Cookie values of the answer."""
    client.transport.write(upgradeRequest(port))
    raw = await client.untilReceived(lambda data: b"\r\n\r\n" in data)
    head, _, client.received = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    cookies = [line.split(":", 1)[1].strip() for line in lines
               if line.lower().startswith("set-cookie:")]
    return int(status.split()[1]), cookies


async def whatTheWorkerSees(client):
    client.transport.write(frame(TEXT, b"whoami"))
    opcode, payload = await client.nextMessage()
    return json.loads(payload)["headers"]


@pytest.mark.parametrize("header, address", [
    (V1_HEADER, "203.0.113.7"), (proxyV2("198.51.100.9", 40001, "127.0.0.1", 8443), "198.51.100.9"),
], ids=["v1", "v2"])
@pytest_twisted.ensureDeferred
async def test_proxy_header_then_tls_serves_with_a_secure_cookie(
        echo_worker, start_wslb, tmp_path, raws, header, address):
    certs = makeCertificates(tmp_path)
    wslb = await start_wslb([echo_worker], *listening(guideEndpoint(certs)))
    client = await connectAs(wslb.port, clear=header, certs=certs)
    raws.append(client)
    status, cookies = await upgrade(client, wslb.port)
    assert status == 101
    assert len(cookies) == 1 and cookies[0].startswith("wslb_session="), cookies
    assert "; Secure" in cookies[0], cookies
    seen = await whatTheWorkerSees(client)
    assert seen["x-forwarded-for"] == address
    assert seen["x-forwarded-proto"] == "https"


@pytest_twisted.ensureDeferred
async def test_proxy_header_then_tls_drops_a_connection_without_the_header(
        echo_worker, start_wslb, tmp_path):
    certs = makeCertificates(tmp_path)
    wslb = await start_wslb([echo_worker], *listening(guideEndpoint(certs)))
    client = await connectAs(  # the TLS handshake comes first
        wslb.port, certs=certs,
        inside=upgradeRequest(wslb.port, headers={"X-WSLB-Session": "k"}))
    await client.closed.addTimeout(TIMEOUT, reactor)
    assert client.received == b""


# --- How the client connected: X-Forwarded-Proto and minted cookies' Secure, decided once ---


@pytest.mark.parametrize("listener, forwardedProto, scheme", [
    ("tcp", "auto", "http"),
    ("ssl", "auto", "https"),
    ("haproxy:ssl", "auto", "https"),  # Twisted's order: the PROXY header inside TLS
    # TLS ended in front of wslb (an NLB's TLS listener, a TCP target group):
    ("haproxy:tcp", "https", "https"),
    ("tcp", "http", "http"),
])
@pytest_twisted.ensureDeferred
async def test_the_scheme_the_worker_sees_decides_the_cookie(
        echo_worker, start_wslb, tmp_path, raws, listener, forwardedProto, scheme):
    certs = makeCertificates(tmp_path)
    tls = listener.endswith("ssl")
    files = f":privateKey={certs['server-key']}:certKey={certs['server']}" if tls else ""
    wslb = await start_wslb([echo_worker], *listening(f"{listener}:0:interface=127.0.0.1{files}"),
                            f"listen.forwarded_proto={forwardedProto}")
    header = V1_HEADER if listener.startswith("haproxy:") else b""
    client = await connectAs(wslb.port, clear=b"" if tls else header,
                             certs=certs if tls else None, inside=header if tls else b"")
    raws.append(client)
    status, cookies = await upgrade(client, wslb.port)
    assert status == 101
    assert ("; Secure" in cookies[0]) == (scheme == "https"), cookies
    seen = await whatTheWorkerSees(client)
    assert seen["x-forwarded-proto"] == scheme


@pytest.mark.timeout(10)
def test_a_proxyssl_listener_without_its_key_file_is_a_config_error_naming_the_key(tmp_path):
    missing = tmp_path / "key.pem"
    config = load_config(overrides=[f"listen.endpoint=proxyssl:8443:privateKey={missing}"])
    with pytest.raises(ConfigError, match=r"listen\.endpoint.*key\.pem"):
        parseEndpoints(config, lambda description: serverFromString(reactor, description))
