"""
wslb's opening handshake with a worker, written out by hand for the byte
relay: the relay needs the connection and the worker's answer, not an
autobahn client protocol that it would drop the moment the handshake is done.
"""

from __future__ import annotations

import base64
import hashlib
import os

from twisted.internet.protocol import Factory, Protocol

from wslb.proxy.splice import noDelay, writeNow

# RFC 6455 §1.3: what a server appends to the key before hashing it.
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# The most a worker may answer before its blank line.
MAX_RESPONSE_HEAD = 16 * 1024


def acceptFor(key):
    """The Sec-WebSocket-Accept a server must answer to ``key``."""
    return base64.b64encode(hashlib.sha1(key + _ACCEPT_GUID).digest())


def handshakeRequest(netloc, uri, headers, protocols):
    """(request bytes, the answer's expected Sec-WebSocket-Accept)."""
    key = base64.b64encode(os.urandom(16))
    lines = [
        f"GET {uri} HTTP/1.1", f"Host: {netloc}", "Upgrade: websocket", "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}", "Sec-WebSocket-Version: 13",
    ]
    if protocols:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if any("\r" in line or "\n" in line for line in lines):
        # A line break would let the user write headers of its own.
        raise ValueError("a line break in a request line or header")
    # Header values pass as the user sent their bytes (read as latin-1).
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), acceptFor(key)


class HandshakeFailed(Exception):
    """The worker's answer was not a valid 101 for our request."""


def checkAnswer(head, accept, protocols):
    """The subprotocol the worker chose, from its answer's head; or HandshakeFailed."""
    lines = head.split(b"\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or status[1] != b"101":
        raise HandshakeFailed(f"the worker answered {lines[0][:80]!r}")
    fields = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise HandshakeFailed(f"malformed header line {line[:80]!r}")
        fields[name.strip().lower()] = value.strip()
    if fields.get(b"upgrade", b"").lower() != b"websocket":
        raise HandshakeFailed("no Upgrade: websocket")
    if b"upgrade" not in fields.get(b"connection", b"").lower():
        raise HandshakeFailed("no Connection: Upgrade")
    if fields.get(b"sec-websocket-accept") != accept:
        raise HandshakeFailed("wrong Sec-WebSocket-Accept")
    if fields.get(b"sec-websocket-extensions"):
        raise HandshakeFailed("an extension we did not offer")
    chosen = fields.get(b"sec-websocket-protocol")
    if chosen is None:
        return None
    chosen = chosen.decode("latin-1")
    if chosen not in protocols:
        raise HandshakeFailed(f"subprotocol {chosen!r} was not offered")
    return chosen


class WorkerHandshake(Protocol):
    """
    Sends the request, reads the answer's head and fires the factory's
    ``opened`` with itself: ``websocket_protocol_in_use`` is the worker's
    choice, ``data`` what the worker sent after its head (frames, already).
    """

    websocket_protocol_in_use = None
    data = b""

    def connectionMade(self):
        noDelay(self.transport)
        writeNow(self.transport, self.factory.request)

    def dataReceived(self, data):
        self.data += data
        end = self.data.find(b"\r\n\r\n")
        if end < 0:
            if len(self.data) > MAX_RESPONSE_HEAD:
                self._fail(HandshakeFailed("the worker's answer is too long"))
            return
        head, self.data = self.data[:end], self.data[end + 4:]
        factory = self.factory
        try:
            self.websocket_protocol_in_use = checkAnswer(head, factory.accept, factory.protocols)
        except HandshakeFailed as e:
            self._fail(e)
            return
        opened, factory.opened = factory.opened, None
        if opened is not None:
            opened.callback(self)

    def _fail(self, reason):
        opened, self.factory.opened = self.factory.opened, None
        self.transport.abortConnection()
        if opened is not None:
            opened.errback(reason)

    def connectionLost(self, reason):
        opened, self.factory.opened = self.factory.opened, None
        if opened is not None:
            opened.errback(HandshakeFailed("closed during the handshake"))


class HandshakeFactory(Factory):
    """One worker connection's request and what its answer must say."""

    protocol = WorkerHandshake
    noisy = False

    def __init__(self, request, accept, protocols):
        self.request = request
        self.accept = accept
        self.protocols = protocols
        self.opened = None  # the Deferred connect() waits on
