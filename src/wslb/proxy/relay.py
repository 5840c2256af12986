"""
Frame-streaming relay between two open WebSocket legs.

Each frame is passed on as it arrives, so a large or fragmented message never
sits whole in memory; and each leg's transport is the producer of the other's,
so a slow reader stops us reading from the fast writer (TCP backpressure
end to end). Autobahn's own buffering (``onMessageFrameEnd``,
``onMessageEnd``) is bypassed.
"""

from __future__ import annotations

from wslb.proxy._autobahn import skipDebugFormatting

skipDebugFormatting()  # both legs relay through this module

# Single-frame messages up to this size are relayed whole, as one frame;
# anything larger streams frame by frame, so memory stays bounded.
WHOLE_MESSAGE_LIMIT = 64 * 1024


# autobahn's sendClose accepts only these; others go as a raw close frame.
def _sendableByClose(code):
    return code == 1000 or 3000 <= code <= 4999


def closeWith(leg, code, reason):
    """Start the closing handshake on ``leg`` with any valid close code."""
    if leg.state != leg.STATE_OPEN:
        return
    if leg.send_state == leg.SEND_STATE_INSIDE_MESSAGE_FRAME:
        # The other leg died in the middle of a frame we were passing on: a
        # close frame now would be read as that frame's payload. Drop instead.
        leg.dropConnection(abort=True)
        return
    reasonUtf8 = reason.encode("utf-8")[:123] if reason else None
    if code is None:
        leg.sendCloseFrame(isReply=False)
    elif _sendableByClose(code):
        leg.sendClose(code, reason or None)
    else:
        leg.sendCloseFrame(code=code, reasonUtf8=reasonUtf8, isReply=False)


class RelayMixin:
    """
    Mixed into both legs. ``otherLeg`` is the other leg once both are open; until
    then the worker leg parks what it receives (a worker may speak first, in
    the same read as its handshake answer).
    """

    otherLeg = None
    traffic = None  # the instance's metrics.Traffic
    direction = None  # where what this leg receives goes: TO_WORKER or TO_USER
    received = 0  # payload bytes this leg received (idle detection)
    _parked = None
    _whole = None  # chunks of a small single-frame message being received
    _wholeBinary = False

    def parkUntilAttached(self):
        self._parked = []

    def attach(self, peer, traffic):
        """Start relaying to ``peer`` (open) and apply backpressure both ways."""
        self.otherLeg = peer
        self.traffic = traffic
        # The handshake is over: what autobahn kept of it is not needed again.
        self.http_request_data = self.http_response_data = None
        self.http_headers = {}
        self.transport.registerProducer(peer.transport, True)
        parked, self._parked = self._parked, None
        for name, args in parked or ():
            getattr(peer, name)(*args)

    def detach(self):
        """Stop relaying; returns the peer we had, if any."""
        peer, self.otherLeg = self.otherLeg, None
        if peer is not None and self.transport is not None:
            try:
                self.transport.unregisterProducer()
            except RuntimeError:
                pass  # the connection is already gone
        return peer

    def _send(self, name, *args):
        if self.otherLeg is not None:
            getattr(self.otherLeg, name)(*args)
        elif self._parked is not None:
            self._parked.append((name, args))

    def onMessageBegin(self, isBinary):
        super().onMessageBegin(isBinary)  # resets the size accounting
        frame = self.current_frame
        if frame.fin and frame.length <= WHOLE_MESSAGE_LIMIT:
            # The usual case: a small message in one frame. Pass it on as one
            # frame too (one write), not as a fragment plus an empty final one.
            self._whole = []
            self._wholeBinary = isBinary
        else:
            self._whole = None
            self._send("beginMessage", isBinary)

    def onMessageFrameBegin(self, length):
        # super() enforces maxMessagePayloadSize (close 1009) before we forward.
        super().onMessageFrameBegin(length)
        if not self.failedByMe and self._whole is None:
            self._send("beginMessageFrame", length)

    def onMessageFrameData(self, payload):
        if not self.failedByMe:
            self.received += len(payload)
            if self.traffic is not None:
                self.traffic.bytes[self.direction] += len(payload)
            if self._whole is not None:
                self._whole.append(payload)
            else:
                self._send("sendMessageFrameData", payload)

    def onMessageFrameEnd(self):
        pass  # frames went out as they came; a small whole message goes at its end

    def onMessageEnd(self):
        if not self.failedByMe:
            if self.traffic is not None:
                self.traffic.messages[self.direction] += 1
            whole, self._whole = self._whole, None
            if whole is not None:
                self._send("sendMessage", b"".join(whole), self._wholeBinary)
            else:
                self._send("endMessage")
