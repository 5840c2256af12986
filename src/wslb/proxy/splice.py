"""
The byte relay ("splice"): once both handshakes are done, pass bytes through.

Nothing needs re-framing after the handshakes: the user's frames are masked
as a worker expects, the worker's are unmasked as a browser expects, and
neither leg negotiated an extension. So each leg's transport is handed to one
L{Direction} of a L{Splice}, which forwards what it reads in one write and
parses only frame headers, enough to keep every promise of the relay: close
codes both ways, ``end_close_code``, ``max_message_size`` (1009), protocol
errors (1002) and invalid UTF-8 in users' text messages (1007) refused
before they reach the worker, byte and message counts, idle detection and
``auto_ping`` on both legs. (tests/test_frames_differential.py holds the
parser to autobahn's decisions.)

The protocols that did the handshakes (user_handshake, worker_handshake)
are dropped, so a relayed user costs two transports and this small object.
"""

from __future__ import annotations

import codecs

from zope.interface import implementer

from wslb.logs import Logger
from wslb.metrics import TO_USER, TO_WORKER
from wslb.proxy.frames import (
    CLOSE_GOING_AWAY,
    CLOSE_INVALID_PAYLOAD,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN,
    PING_PAYLOAD,
    PING_TO_USER,
    closeFrame,
    closeProblem,
    pingToWorker,
    unmask,
)
from wslb.proxy.interfaces import IRelay
from wslb.proxy.transports import dropConnector, isTCP, sendNow, takeOver, writesLandIn

log = Logger()

# How long a closing handshake may take before both connections are aborted.
CLOSE_TIMEOUT = 3.0

_utf8Decoder = codecs.getincrementaldecoder("utf-8")


def _close(transport):
    """Close once written out: without a producer, which would hold it open."""
    transport.unregisterProducer()
    transport.loseConnection()


class Direction:
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
        self._destination = destination = writesLandIn(destination)
        self._toSocket = isTCP(destination)
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
                wide = length == 127
                length = int.from_bytes(data[pos + 2 : pos + (10 if wide else 4)], "big")
                if length < (65536 if wide else 126) or length >> 63:
                    # RFC 6455 §5.2: the shortest form, and the top bit clear
                    self._stop(data, sent, pos, CLOSE_PROTOCOL_ERROR, "bad frame length")
                    return
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
                    payload = unmask(payload, data[pos + head - 4 : pos + head])
                if opcode == 8:
                    problem = closeProblem(payload)
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
                        unmask(data[start : start + length], data[start - 4 : start]).decode()
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
        plain = unmask(data[start:stop], self._key[shift:] + self._key[:shift])
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
            sendNow(self._destination, data)
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
        dropConnector(self.transport)
        self.transport = None
        self._splice.sideLost(self)


# The splice's close sequence, as a table: (state, input) -> next state. A
# missing row: the input changes nothing. Which frames still pass is each
# Direction's own (``open``, ``closeSeen``); the sequence is the splice's.
RELAYING = "relaying"  # frames pass both ways
CLOSING = "closing"  # a close frame is on its way or a side is gone: the close timer runs
CLOSED = "closed"  # both connections are gone: logged, and counted out of its session

CLOSE_STARTED = "close started"  # wslb closes, a side sent its close, broke a rule or left
BOTH_GONE = "both gone"  # the last connection is lost

CLOSE_SEQUENCE = {
    (RELAYING, CLOSE_STARTED): CLOSING,
    (RELAYING, BOTH_GONE): CLOSED,
    (CLOSING, BOTH_GONE): CLOSED,
}


@implementer(IRelay)
class Splice:
    """
    One relayed session: the two L{Direction}s and the close sequence
    (L{CLOSE_SEQUENCE}), which runs only once a close begins: nothing of it
    is on the per-message path.
    """

    __slots__ = (
        "key", "cost", "placement", "requestId", "counted", "activity", "maxMessageSize", "traffic",
        "_context", "toWorker", "toUser", "_awaiting", "_state", "_closeTimer", "_reason",
        "_workerEnded",
    )

    def __init__(self, user, worker, context):
        self.key = user.key
        self.cost = user.cost
        self.placement = user.placement
        self.requestId = user.requestId  # what the registry counts this connection by
        self.counted = user.counted  # as the gate counts the user's connection
        self.activity = 0  # payload bytes both ways, for the idle sweep
        self.maxMessageSize = context.maxMessageSize
        self.traffic = context.traffic
        self._context = context
        self._awaiting = ()  # (direction, its wireBytes) of each side wslb just pinged
        self._state = RELAYING
        self._closeTimer = None  # while CLOSING
        self._reason = None  # why wslb closed, for the log
        self._workerEnded = False  # the worker closed first, with end_close_code
        userTransport, workerTransport = user.transport, worker.transport
        self.toWorker = Direction(self, userTransport, workerTransport, fromUser=True)
        self.toUser = Direction(self, workerTransport, userTransport, fromUser=False)

    @classmethod
    def replace(cls, user, worker, context):
        """
        Take over the connections of a L{UserHandshake} and a
        L{WorkerHandshake} whose handshakes are done; what each read beyond
        its handshake (``data``) is relayed first.
        """
        splice = cls(user, worker, context)
        takeOver(user, splice.toWorker)
        takeOver(worker, splice.toUser)
        userEarly, workerEarly = user.data, worker.data
        user.data = worker.data = b""
        user.transport.registerProducer(worker.transport, True)
        worker.transport.registerProducer(user.transport, True)
        if workerEarly:
            splice.toUser.dataReceived(workerEarly)
        if userEarly:
            splice.toWorker.dataReceived(userEarly)
        return splice

    # IRelay: what the session bookkeeping calls.

    def closeWith(self, code, reason):
        """Close both sides with ``code`` (session ended, idle, shutdown, moved)."""
        if self._state == CLOSED:
            return
        if self._reason is None:
            self._reason = (code, reason)
        self.toUser.send(closeFrame(code, reason, masked=False), last=True)
        self.toWorker.send(closeFrame(code, reason, masked=True), last=True)
        self._move(CLOSE_STARTED)

    def keepAlive(self):
        """
        One ``auto_ping`` tick: drop a side that did not answer the last
        ping, ping the others.
        """
        if self._state != RELAYING:
            return  # closing anyway
        for direction, before in self._awaiting:
            # Anything from that side since its ping counts, not just the pong
            # (as autobahn's autoPingRestartOnAnyTraffic does).
            if direction.wireBytes == before and direction.transport is not None:
                self._context.gate.limitHit("auto_ping")
                direction.transport.abortConnection()
        awaiting = []
        if self.toUser.send(PING_TO_USER):  # not while a long frame is on its way
            awaiting.append((self.toWorker, self.toWorker.wireBytes))
        if self.toWorker.send(pingToWorker()):
            awaiting.append((self.toUser, self.toUser.wireBytes))
        self._awaiting = tuple(awaiting)

    # What the directions call.

    def closeReceived(self, direction):
        if (direction is self.toUser and self.toWorker.open
                and direction.closeCode == self._context.endCloseCode):
            self._workerEnded = True  # the worker's own close, not its answer to one
        self._move(CLOSE_STARTED)
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
            self._context.gate.limitHit("max_message_size")
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
            self._context.registry.endSession(self.key)
        other = self.toUser if direction is self.toWorker else self.toWorker
        survivor = other.transport
        if survivor is None:
            self._move(BOTH_GONE)
            return
        self._move(CLOSE_STARTED)
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

    # The close sequence.

    def _move(self, event):
        state = CLOSE_SEQUENCE.get((self._state, event))
        if state is None:
            return
        self._state = state
        if state == CLOSING:
            self._closeTimer = self._context.closeTimers.start(self._abort)
        elif state == CLOSED:
            self._closed()

    def _abort(self):
        """The closing handshake took too long: drop what is left."""
        self._closeTimer = None
        for direction in (self.toWorker, self.toUser):
            if direction.transport is not None:
                direction.transport.abortConnection()

    def _closed(self):
        if self._closeTimer is not None:
            if self._closeTimer.active():
                self._closeTimer.cancel()
            self._closeTimer = None
        context = self._context
        code, reason = self._reason or (
            (self.toWorker.closeCode, self.toWorker.closeReason) if self.toWorker.closeSeen
            else (self.toUser.closeCode, self.toUser.closeReason))
        log.info(
            "{key} closed with {code}", event="closed", key=self.key, code=code,
            reason=reason, clean=self.toWorker.closeSeen and self.toUser.closeSeen,
            bytes_from_user=self.toWorker.wireBytes, bytes_to_user=self.toUser.wireBytes,
        )
        context.gate.connectionLost(self.counted)
        context.sessions.closed(self.key, self)
        context.sessions.release(self.key, self.requestId)
        # Nothing reads any more: the directions let go of the splice, so
        # that no reference cycle outlives the connections (see wslb.collector).
        self.toWorker._splice = self.toUser._splice = None
