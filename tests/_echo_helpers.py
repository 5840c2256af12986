"""
Test helpers around the demo echo worker: run it as a real process, talk to
it over real WebSocket and HTTP connections. Reusable by end-to-end tests.
"""

import json
import signal
import socket
import subprocess
import sys

import treq
from _polling import TIMEOUT, waitFor, waitForBlocking
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from conftest import free_port
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint


class EchoWorkerProcess:
    """``python -m wslb.worker.echo`` on a free loopback port."""

    def __init__(self, *extra_args, port=None):
        self.port = port or free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.http = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wslb.worker.echo", "--port", str(self.port), *extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    def waitHealthy(self, timeout=10):
        """Block until GET /health answers 200 (before the reactor needs it)."""
        waitForBlocking(self._healthy, timeout=timeout, retrying=OSError,
                        what=f"echo worker on port {self.port} healthy")
        return self

    def _healthy(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"echo worker exited: {self.process.stderr.read()!r}")
        with socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
            s.settimeout(1)
            s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.0 200")

    def terminate(self):
        """SIGTERM, then wait; fires with the exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(TIMEOUT)

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process.stderr.close()

    stop = kill  # what conftest.stop_after calls


class RecordingClient(WebSocketClientProtocol):
    """A WebSocket client that queues what it receives and records its close."""

    def connectionMade(self):
        self.messages = DeferredQueue()
        self.opened = Deferred()
        self.closed = Deferred()  # fires with (code, reason)
        super().connectionMade()

    def onConnect(self, response):
        self.response = response  # .protocol: the subprotocol the server chose

    def onOpen(self):
        self.opened.callback(self)

    def onMessage(self, payload, isBinary):
        self.messages.put((payload, isBinary))

    def onClose(self, wasClean, code, reason):
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"handshake failed: {code} {reason}"))
        self.closed.callback((code, reason))

    def nextMessage(self):
        return self.messages.get().addTimeout(TIMEOUT, reactor)

    async def ask(self, text):
        """Send a text message and return the decoded JSON reply."""
        self.sendMessage(text.encode("utf-8"))
        payload, isBinary = await self.nextMessage()
        assert not isBinary
        return json.loads(payload)

    def waitClosed(self):
        return self.closed.addTimeout(TIMEOUT, reactor)


async def connectWebSocket(url, headers=None, protocols=None, wait=TIMEOUT):
    """
    Open a WebSocket to ``url`` (ws://127.0.0.1:port/path) and fire with the
    client; ``wait`` bounds the handshake (raise it for queued clients).
    """
    factory = WebSocketClientFactory(url, headers=headers or {}, protocols=protocols or [])
    factory.protocol = RecordingClient
    factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0,
                               openHandshakeTimeout=wait)
    endpoint = TCP4ClientEndpoint(reactor, factory.host, factory.port, timeout=TIMEOUT)
    client = await endpoint.connect(factory)
    return await client.opened.addTimeout(wait, reactor)


async def _connectOrNone(url):
    try:
        return await connectWebSocket(url)
    except Exception:
        return None


def connectWhenServing(url, within=20):
    """Connect, retrying while wslb refuses (its workers are still starting)."""
    return waitFor(lambda: _connectOrNone(url), timeout=within, interval=0.25,
                   what=f"a WebSocket to {url}")


async def getJSON(url):
    response = await treq.get(url, timeout=TIMEOUT)
    body = await response.json()
    return response.code, body


def closeAll(clients):
    """Drop the TCP connections of clients a test left open."""
    for client in clients:
        if client.transport is not None and client.transport.connected:
            client.transport.abortConnection()

