"""
WebSocket by hand, for tests that must send what a normal client never
would: PROXY headers, malformed frames, floods.
"""

import base64
import os
import struct

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def frame(opcode, payload=b"", *, fin=True, mask=True, rsv=0):
    """One frame as a client sends it (masked unless told otherwise)."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def parseFrames(data):
    """Split unmasked server frames: returns ([(fin, opcode, payload)], rest)."""
    frames = []
    while len(data) >= 2:
        fin, opcode, n = bool(data[0] & 0x80), data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if n == 126:
            if len(data) < 4:
                break
            n, offset = struct.unpack("!H", data[2:4])[0], 4
        elif n == 127:
            if len(data) < 10:
                break
            n, offset = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < offset + n:
            break
        frames.append((fin, opcode, data[offset:offset + n]))
        data = data[offset + n:]
    return frames, data


def _frameLength(data):
    n, offset = data[1] & 0x7F, 2
    if n == 126:
        n, offset = struct.unpack("!H", data[2:4])[0], 4
    elif n == 127:
        n, offset = struct.unpack("!Q", data[2:10])[0], 10
    return offset + n


def upgradeRequest(port, path="/", headers=None):
    lines = [
        f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
        "Connection: Upgrade", "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode(),
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RawClient(protocol.Protocol):
    """Collects what the server sends; ``closed`` fires when the TCP goes."""

    def connectionMade(self):
        self.received = b""
        self.closed = defer.Deferred()
        self._waiting = []

    def dataReceived(self, data):
        self.received += data
        waiting, self._waiting = self._waiting, []
        for predicate, d in waiting:
            if predicate(self.received):
                d.callback(self.received)
            else:
                self._waiting.append((predicate, d))

    def connectionLost(self, reason):
        for _, d in self._waiting:
            d.callback(self.received)
        self._waiting = []
        self.closed.callback(None)

    def untilReceived(self, predicate, timeout=5):
        """
        Fire with all received so far once ``predicate`` holds for it, or the
        connection is gone; told by each read, not polled.
        """
        if predicate(self.received):
            return defer.succeed(self.received)
        d = defer.Deferred()
        self._waiting.append((predicate, d))

        def tooLate(result, timeout):
            raise AssertionError(f"not received within {timeout}s: {self.received!r:.500}")

        return d.addTimeout(timeout, reactor, onTimeoutCancel=tooLate)

    async def handshake(self, request):
        """Send an upgrade request; fire with the status code."""
        self.transport.write(request)
        raw = await self.untilReceived(lambda data: b"\r\n\r\n" in data)
        head, _, self.received = raw.partition(b"\r\n\r\n")
        return int(head.split()[1]) if head else 0

    async def nextMessage(self):
        """Fire with (opcode, payload) of the next whole message or control frame."""

        def complete(data):
            return any(fin for fin, _, _ in parseFrames(data)[0])

        await self.untilReceived(complete)
        message, opcode = b"", None
        while True:
            (fin, op, payload), = parseFrames(self.received[:_frameLength(self.received)])[0]
            self.received = self.received[_frameLength(self.received):]
            if op >= 0x8:
                return op, payload  # control frames stand alone
            opcode = opcode or op
            message += payload
            if fin:
                return opcode, message


async def connectRaw(port):
    factory = protocol.Factory.forProtocol(RawClient)
    return await TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5).connect(factory)
