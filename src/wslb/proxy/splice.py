"""
The byte relay ("splice"): once both handshakes are done, pass bytes through.

Nothing needs re-framing after the handshakes: the user's frames are masked
as a worker expects, the worker's are unmasked as a browser expects, and
neither leg negotiated an extension. So each leg's transport is handed to one
direction of a L{Splice}, which forwards what it reads in one write and parses
only frame headers, to keep what the framed relay promised: close codes both
ways, ``end_close_code``, ``max_message_size`` (1009), protocol errors (1002)
and invalid UTF-8 in users' text messages (1007) refused before they reach
the worker, byte and message counts, idle detection and ``auto_ping`` on both
legs. The framed relay (``[listen] relay = "frames"``) stays as a fallback.

The protocols that did the handshakes (user_handshake, worker_handshake)
are dropped, so a relayed user costs two transports and this small object.
"""

from __future__ import annotations

import codecs
import os

from twisted.internet import tcp
from twisted.protocols import policies

from wslb.logs import Logger
from wslb.metrics import TO_USER, TO_WORKER

log = Logger()

CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN = 1012

# How long a closing handshake may take before both connections are aborted.
CLOSE_TIMEOUT = 3.0

# The payload of wslb's own pings: their pongs stop here, they are not relayed.
PING_PAYLOAD = os.urandom(8)
_PING_TO_USER = b"\x89\x08" + PING_PAYLOAD


def closeFrame(code, reason, masked):
    """A close frame, masked when it goes to a worker (wslb is its client)."""
    payload = b"" if code is None else code.to_bytes(2, "big") + reason.encode("utf-8")[:123]
    if not masked:
        return bytes((0x88, len(payload))) + payload
    key = os.urandom(4)
    return bytes((0x88, 0x80 | len(payload))) + key + _unmask(payload, key)


def _pingToWorker():
    key = os.urandom(4)
    return b"\x89\x88" + key + _unmask(PING_PAYLOAD, key)


def _unmask(payload, key):
    """``payload`` XOR the 4-byte ``key`` repeated: masks and unmasks alike."""
    n = len(payload)
    mask = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")).to_bytes(
        n, "little")


_utf8Decoder = codecs.getincrementaldecoder("utf-8")

# Close codes a peer may send (as autobahn checks them).
_SENDABLE_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013))


def _closeProblem(payload):
    """Why a close frame's payload is malformed: (close code, reason), or None."""
    if not payload:
        return None
    code = int.from_bytes(payload[:2], "big")
    if len(payload) == 1 or not (code in _SENDABLE_CODES or 3000 <= code <= 4999):
        return CLOSE_PROTOCOL_ERROR, "bad close frame"
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        return CLOSE_INVALID_PAYLOAD, "invalid UTF-8"
    return None


def _writesLandIn(transport):
    """
    The transport a write on ``transport`` ends up in: a wrapper that passes
    writes on untouched (the PROXY protocol's) is skipped; TLS is not.
    """
    while (isinstance(transport, policies.ProtocolWrapper)
           and type(transport).write is policies.ProtocolWrapper.write):
        transport = transport.transport
    return transport


def _sendNow(destination, data):
    """
    Write to ``destination``, a TCP connection. Twisted queues every write
    for the next reactor turn (a turn and two epoll_ctl calls each); when
    nothing is queued before them, the bytes go to the socket now, by the
    socket's own send (writeSomeData's slicing and retry wrapper cost a
    tenth of a relayed read).
    """
    if (not destination.dataBuffer and not destination._tempDataLen and destination.connected
            and not destination.disconnecting and not destination._aborting):
        try:
            sent = destination.socket.send(data)
        except OSError:  # it would block, or it broke: Twisted's write finds out which
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    destination.write(data)


def writeNow(transport, data):
    """Write ``data`` on ``transport``, at once where TCP is under it (see L{_sendNow})."""
    destination = _writesLandIn(transport)
    if isinstance(destination, tcp.Connection):
        _sendNow(destination, data)
    else:
        transport.write(data)


def noDelay(transport):
    """
    TCP_NODELAY, where there is TCP under ``transport``: a relayed frame must
    not wait for the ACK of the one before (autobahn set this on its own).
    """
    try:
        transport.setTcpNoDelay(True)
    except (AttributeError, OSError):  # a Unix socket, or no socket at all
        pass


def _close(transport):
    """Close once written out: without a producer, which would hold it open."""
    transport.unregisterProducer()
    transport.loseConnection()


def _holder(protocol):
    """
    (object, attribute) through which ``protocol``'s transport hands it what
    it reads: a TCP connection's ``protocol``, or a wrapper's (TLS, PROXY
    protocol) ``wrappedProtocol``; None for anything else.
    """
    transport = protocol.transport
    if getattr(transport, "wrappedProtocol", None) is protocol:
        return transport, "wrappedProtocol"
    outer = getattr(transport, "protocol", None)
    # A client endpoint's connection holds its own wrapper around ours.
    if outer is protocol or getattr(outer, "_wrappedProtocol", None) is protocol:
        return transport, "protocol"
    return None


def _takeOver(protocol, new):
    """Make ``new`` the protocol of ``protocol``'s transport."""
    holder = _holder(protocol)
    if holder is None:  # a transport of some other make: the old protocol passes all on
        protocol.dataReceived = new.dataReceived
        protocol.connectionLost = new.connectionLost
    else:
        setattr(*holder, new)


class _Direction:
    """
    What one side sends, on its way to the other: the protocol of the
    sending side's transport. Parses frame headers and forwards the bytes in
    one write per read; holds back only a frame header split across reads and
    control frames until whole (at most 139 bytes).
    """

    __slots__ = (
        "_splice", "transport", "_destination", "_toSocket", "_masked", "_direction",
        "_remaining", "_held", "_inMessage", "_messageSize", "_text", "_key", "_offset",
        "_fin", "wireBytes", "open", "_pending", "closeSeen", "closeCode", "closeReason",
    )

    def __init__(self, splice, transport, destination, fromUser):
        self._splice = splice
        self.transport = transport  # the sending side; None once it is gone
        self._destination = destination = _writesLandIn(destination)
        self._toSocket = isinstance(destination, tcp.Connection)
        self._masked = fromUser  # users mask their frames, workers do not
        self._direction = TO_WORKER if fromUser else TO_USER
        self._remaining = 0  # payload bytes of the current frame still to pass
        self._held = b""
        self._inMessage = False
        self._messageSize = 0
        # A user's text message being checked for UTF-8 (workers are trusted):
        self._text = None  # its incremental decoder
        self._key = b""  # the current frame's mask, payload offset and FIN
        self._offset = 0
        self._fin = False
        self.wireBytes = 0
        self.open = True  # False once a close frame went to the destination
        self._pending = None  # frames of wslb's own, for the next frame boundary
        self.closeSeen = False  # the sending side sent its close (or broke a rule)
        self.closeCode = None
        self.closeReason = ""

    def makeConnection(self, transport):
        pass  # made long ago, for the protocol that did the handshake

    def dataReceived(self, data):
        self.wireBytes += len(data)
        if self.closeSeen:
            return  # nothing may follow a close frame
        if self._held:
            data = self._held + data
            self._held = b""
        end = len(data)
        pos = sent = 0  # parsed up to pos; data[:sent] forwarded already
        frameStart = -1  # where the current frame's header is, if in this read
        while True:
            remaining = self._remaining
            if remaining:
                take = min(remaining, end - pos)
                if self._text is not None and not self._validText(data, pos, pos + take):
                    self._stop(data, sent, frameStart, CLOSE_INVALID_PAYLOAD, "invalid UTF-8")
                    return
                pos += take
                self._splice.activity += take
                self._remaining = remaining = remaining - take
                if remaining:
                    break
                if self._pending:
                    self._forward(data[sent:pos])
                    sent = pos
                    self._sendPending()
            if end - pos < 2:
                break
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            head = 2 if length < 126 else 4 if length == 126 else 10
            if b1 & 0x80:
                head += 4
            if end - pos < head:
                break
            if length >= 126:
                lengthEnd = pos + (4 if length == 126 else 10)
                length = int.from_bytes(data[pos + 2 : lengthEnd], "big")
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if b0 & 0x70 or bool(b1 & 0x80) is not self._masked:
                self._stop(data, sent, pos, CLOSE_PROTOCOL_ERROR, "reserved bits or masking")
                return
            if opcode >= 8:  # a control frame: passed on whole
                if opcode > 10 or not fin or length > 125:
                    self._stop(data, sent, pos, CLOSE_PROTOCOL_ERROR, "bad control frame")
                    return
                stop = pos + head + length
                if stop > end:
                    break
                payload = data[pos + head : stop]
                if self._masked:
                    payload = _unmask(payload, data[pos + head - 4 : pos + head])
                if opcode == 8:
                    problem = _closeProblem(payload)
                    if problem is not None:
                        self._stop(data, sent, pos, *problem)
                        return
                    self._forward(data[sent:stop])
                    pos = sent = end  # nothing may follow a close frame
                    self._closeReceived(payload)
                    break
                if opcode == 10 and payload == PING_PAYLOAD:
                    self._forward(data[sent:pos])  # the answer to wslb's own ping: keep it
                    sent = stop
                pos = stop
                continue
            if opcode > 2 or (opcode == 0) is not self._inMessage:
                self._stop(data, sent, pos, CLOSE_PROTOCOL_ERROR, "bad message fragment")
                return
            size = length if opcode else self._messageSize + length
            if size > self._splice.maxMessageSize:
                self._stop(data, sent, pos, CLOSE_TOO_BIG, "message too big")
                return
            self._messageSize = size
            self._inMessage = not fin
            if self._masked:
                start = pos + head
                if opcode == 1 and fin and start + length <= end:
                    # The usual text message: one frame, whole in this read.
                    self._text = None
                    try:
                        _unmask(data[start : start + length], data[start - 4 : start]).decode()
                    except UnicodeDecodeError:
                        self._stop(data, sent, pos, CLOSE_INVALID_PAYLOAD, "invalid UTF-8")
                        return
                elif opcode:
                    self._text = _utf8Decoder() if opcode == 1 else None
                if self._text is not None:
                    self._key = data[pos + head - 4 : pos + head]
                    self._offset = 0
                    self._fin = fin
                    if not length and fin and not self._validText(data, pos, pos):
                        self._stop(data, sent, pos, CLOSE_INVALID_PAYLOAD, "invalid UTF-8")
                        return
            traffic = self._splice.traffic
            traffic.bytes[self._direction] += length
            if fin:
                traffic.messages[self._direction] += 1
            frameStart = pos
            pos += head
            self._remaining = length
        if pos < end:
            self._held = data[pos:]
        if sent == 0 and pos == end:
            if self.open:
                self._write(data)
        else:
            self._forward(data[sent:pos])

    def _validText(self, data, start, stop):
        """Check the payload bytes data[start:stop] of a user's text message."""
        shift = self._offset & 3  # the mask continues where the last read left it
        plain = _unmask(data[start:stop], self._key[shift:] + self._key[:shift])
        self._offset += stop - start
        final = self._fin and stop - start == self._remaining
        try:
            self._text.decode(plain, final)
        except UnicodeDecodeError:
            return False
        if final:
            self._text = None
        return True

    def _write(self, data):
        if self._toSocket:
            _sendNow(self._destination, data)
        else:
            self._destination.write(data)

    def _forward(self, chunk):
        if self.open and chunk:
            self._write(chunk)

    def _closeReceived(self, payload):
        self.closeSeen = True
        self.open = False  # a close frame is the last frame either way
        if payload:
            self.closeCode = int.from_bytes(payload[:2], "big")
            self.closeReason = payload[2:].decode("utf-8")
        self._splice.closeReceived(self)

    def _stop(self, data, sent, frameStart, code, reason):
        """
        The sending side broke a rule in the frame whose header is at
        ``frameStart`` (-1: it began in an earlier read and is partly passed
        on already): pass on what came before it and close both sides.
        """
        cut = frameStart < 0
        if not cut:
            self._forward(data[sent:frameStart])
        self._remaining = 0
        self.closeSeen = True
        self._splice.fail(self, code, reason, cut)

    def send(self, frame, last=False):
        """
        Send a frame of wslb's own to the destination, between two relayed
        frames: now (True) or after the frame being passed on (False).
        """
        if not self.open:
            return False
        if self._remaining:
            if self._pending is None:
                self._pending = []
            self._pending.append((frame, last))
            return False
        self._write(frame)
        if last:
            self.open = False
        return True

    def _sendPending(self):
        pending, self._pending = self._pending, None
        for frame, last in pending:
            self.send(frame, last)

    def atBoundary(self):
        return not self._remaining

    def connectionLost(self, reason):
        self.transport = None
        self._splice.sideLost(self)


class Splice:
    """
    One relayed session in byte mode. Offers what a framed L{UserLeg} offers
    to the session bookkeeping: ``key``, ``cost``, ``placement``,
    ``closeWith``, ``activity`` and ``keepAlive``.
    """

    __slots__ = (
        "key", "cost", "placement", "address", "activity", "maxMessageSize", "traffic",
        "_factory", "toWorker", "toUser", "_awaiting", "_closeTimer", "_reason",
        "_workerEnded",
    )

    def __init__(self, user, worker, factory):
        self.key = user.key
        self.cost = user.cost
        self.placement = user.placement
        self.address = factory.gate.address(user)
        self.activity = 0  # payload bytes both ways, for the idle sweep
        self.maxMessageSize = factory.maxMessageSize
        self.traffic = factory.traffic
        self._factory = factory
        self._awaiting = ()  # (direction, its wireBytes) of each side wslb just pinged
        self._closeTimer = None
        self._reason = None  # why wslb closed, for the log
        self._workerEnded = False  # the worker closed first, with end_close_code
        userTransport, workerTransport = user.transport, worker.transport
        self.toWorker = _Direction(self, userTransport, workerTransport, fromUser=True)
        self.toUser = _Direction(self, workerTransport, userTransport, fromUser=False)

    @classmethod
    def replace(cls, user, worker, factory):
        """
        Take over the connections of a L{UserHandshake} and a
        L{WorkerHandshake} whose handshakes are done; what each read beyond
        its handshake (``data``) is relayed first.
        """
        splice = cls(user, worker, factory)
        _takeOver(user, splice.toWorker)
        _takeOver(worker, splice.toUser)
        userEarly, workerEarly = user.data, worker.data
        user.data = worker.data = b""
        user.transport.registerProducer(worker.transport, True)
        worker.transport.registerProducer(user.transport, True)
        if workerEarly:
            splice.toUser.dataReceived(workerEarly)
        if userEarly:
            splice.toWorker.dataReceived(userEarly)
        return splice

    # What the session bookkeeping calls.

    def closeWith(self, code, reason):
        """Close both sides with ``code`` (session ended, idle, shutdown, moved)."""
        if self.toUser.transport is None and self.toWorker.transport is None:
            return  # over already
        if self._reason is None:
            self._reason = (code, reason)
        self.toUser.send(closeFrame(code, reason, masked=False), last=True)
        self.toWorker.send(closeFrame(code, reason, masked=True), last=True)
        self._closing()

    def keepAlive(self):
        """
        One ``auto_ping`` tick: drop a side that did not answer the last
        ping, ping the others.
        """
        if self._closeTimer is not None:
            return  # closing anyway
        for direction, before in self._awaiting:
            # Anything from that side since its ping counts, not just the pong
            # (as autobahn's autoPingRestartOnAnyTraffic does).
            if direction.wireBytes == before and direction.transport is not None:
                self._factory.gate.limitHit("auto_ping")
                direction.transport.abortConnection()
        awaiting = []
        if self.toUser.send(_PING_TO_USER):  # not while a long frame is on its way
            awaiting.append((self.toWorker, self.toWorker.wireBytes))
        if self.toWorker.send(_pingToWorker()):
            awaiting.append((self.toUser, self.toUser.wireBytes))
        self._awaiting = tuple(awaiting)

    # What the directions call.

    def closeReceived(self, direction):
        if (direction is self.toUser and self.toWorker.open
                and direction.closeCode == self._factory.endCloseCode):
            self._workerEnded = True  # the worker's own close, not its answer to one
        self._closing()
        if self.toWorker.closeSeen and not self.toUser.open and self.toWorker.transport:
            # Both close frames crossed the user's connection: as its server,
            # wslb closes it. The worker, as ours, closes the other.
            _close(self.toWorker.transport)

    def fail(self, direction, code, reason, cut):
        """
        ``direction``'s sender broke a rule: close both sides with ``code``.
        ``cut``: the bad frame is partly passed on, so that connection can
        only be dropped.
        """
        if code == CLOSE_TOO_BIG:
            self._factory.gate.limitHit("max_message_size")
        other = self.toUser if direction is self.toWorker else self.toWorker
        if cut and other.transport is not None:
            direction.open = False
            other.transport.abortConnection()
        self.closeWith(code, reason)
        if direction.transport is not None:
            _close(direction.transport)

    def sideLost(self, direction):
        """
        One side's connection is gone: tell the other with a close frame
        (1001 to a worker whose user left, 1012 to a user whose worker went
        away) unless one went already.
        """
        if direction is self.toUser and self._workerEnded:
            # The worker ended the session. Its slot is free once the worker's
            # connection is gone, not at its close frame: a newcomer must not
            # reach a worker still closing the old session.
            self._factory.registry.endSession(self.key)
        other = self.toUser if direction is self.toWorker else self.toWorker
        survivor = other.transport
        if survivor is None:
            self._finished()
            return
        # The lost side was the survivor's producer: a paused one would keep
        # the survivor from ever closing (and TLS does not close with one).
        survivor.unregisterProducer()
        # ``direction`` carried what the lost side sent; it writes to the survivor.
        if not direction.atBoundary():
            survivor.abortConnection()  # lost mid-frame: no close frame can follow
            return
        if direction is self.toWorker:
            direction.send(closeFrame(CLOSE_GOING_AWAY, "", masked=True), last=True)
        else:
            direction.send(closeFrame(CLOSE_TRY_AGAIN, "the worker went away", masked=False),
                           last=True)
            if self.toWorker.closeSeen:
                _close(survivor)  # the user's closing handshake is complete
        self._closing()

    def _closing(self):
        if self._closeTimer is None:
            self._closeTimer = self._factory.clock.callLater(CLOSE_TIMEOUT, self._abort)

    def _abort(self):
        self._closeTimer = None
        for direction in (self.toWorker, self.toUser):
            if direction.transport is not None:
                direction.transport.abortConnection()

    def _finished(self):
        if self._closeTimer is not None:
            if self._closeTimer.active():
                self._closeTimer.cancel()
            self._closeTimer = None
        factory = self._factory
        code, reason = self._reason or (
            (self.toWorker.closeCode, self.toWorker.closeReason) if self.toWorker.closeSeen
            else (self.toUser.closeCode, self.toUser.closeReason))
        log.info(
            "{key} closed with {code}", event="closed", key=self.key, code=code,
            reason=reason, clean=self.toWorker.closeSeen and self.toUser.closeSeen,
            bytes_from_user=self.toWorker.wireBytes, bytes_to_user=self.toUser.wireBytes,
        )
        factory.gate.connectionLost(self.address)
        factory.sessions.closed(self.key, self)
        factory.sessions.release(self.key)
