"""
The waiting room on the listener (``[queue] status_path``, ``client_path``):
a user's place in the queue as JSON and as Server-Sent Events, and the small
browser client that follows them.

``GET <status_path>?session=KEY`` answers the key's status once;
``GET <status_path>/events`` streams it: an event when its position changes
(at most one a second), ending with the READY status once its session is
bound (its held handshake is answered). The key comes from the same sources,
checked the same way, as a handshake's; none is minted.
"""

from __future__ import annotations

import json
import math
from importlib import resources

from twisted.internet import task
from twisted.web import server
from twisted.web.resource import Resource

from wslb.logs import Logger
from wslb.proxy.errors import HandshakeRefused
from wslb.proxy.queue_watch import NOT_QUEUED, READY

log = Logger()

EVENT_INTERVAL = 1.0  # seconds: at most one event this often per stream
KEEPALIVE = 15.0  # a comment this often keeps idle timeouts (an NLB's) away

CLIENT_SCRIPT = resources.files("wslb.proxy") / "static" / "wslb-client.js"


def _answer(request, code, body):
    request.setResponseCode(code)
    request.setHeader("Content-Type", "application/json")
    request.setHeader("Cache-Control", "no-store")
    return json.dumps(body).encode("utf-8") + b"\n"


def _open(request):
    """Whether ``request`` may still be answered (its client is there, it is not finished)."""
    return request.channel is not None and not request.finished


def _allowOrigin(request):
    """Pages of other origins may read it (the gate refused origins not allowed)."""
    origin = request.getHeader("origin")
    if origin:
        request.setHeader("Access-Control-Allow-Origin", origin)
        request.setHeader("Vary", "Origin")


class QueueStatusPage(Resource):
    """C{<path>} and C{<path>/events}, mounted at C{<path>}."""

    isLeaf = True

    def __init__(self, path, watch, identifier, clock, notQueuedFor):
        super().__init__()
        self._paths = {path.encode(): self._once, (path + "/events").encode(): self._stream}
        self._watch = watch
        self._identifier = identifier
        self._clock = clock
        self._notQueuedFor = notQueuedFor  # [queue] timeout

    def render_GET(self, request):
        serve = self._paths.get(request.path)
        if serve is None:
            return _answer(request, 404, {"error": "no such resource"})
        _allowOrigin(request)
        try:
            key = self._identifier.sessionKey(request.fields())
        except HandshakeRefused as refused:
            return _answer(request, refused.code, {"error": refused.reason})
        if key is None:
            return _answer(request, 400, {"error": "no session key in the request"})
        d = self._watch.statusOf(key)
        d.addCallback(serve, request, key)
        d.addErrback(self._unavailable, request)
        return server.NOT_DONE_YET

    def _once(self, status, request, key):
        if _open(request):
            request.write(_answer(request, 200, status))
            request.finish()

    def _stream(self, status, request, key):
        if not _open(request):
            return
        if status is READY:
            # Bound already: 204 also stops an EventSource reconnecting to a stream
            # that ended with READY.
            request.setResponseCode(204)
            request.finish()
            return
        _EventStream(request, self._clock, self._notQueuedFor).start(
            status, lambda listener: self._watch.follow(key, listener))

    def _unavailable(self, failure, request):
        log.warn("queue status: {error}", error=failure.getErrorMessage())
        if _open(request) and not request.startedWriting:
            request.write(_answer(request, 503, {"error": "the registry is unavailable"}))
            request.finish()


class _EventStream:
    """
    One client's stream of its key's status: an event per change of
    position, at most one per EVENT_INTERVAL (the latest one waits for its
    turn); READY ends it, and so does NOT_QUEUED once it was queued (its
    place is gone), or when no place came within ``notQueuedFor``.
    """

    def __init__(self, request, clock, notQueuedFor):
        self._request = request
        self._clock = clock
        self._notQueuedFor = notQueuedFor
        self._sent = None  # the last status sent
        self._sentAt = -math.inf
        self._waiting = None  # the status waiting for its turn
        self._turn = None  # the DelayedCall sending it
        self._queued = False  # it was queued at some point
        self._unfollow = None
        self._giveUp = None
        self._keepAlive = task.LoopingCall(self._write, b": \n\n")
        self._keepAlive.clock = clock

    def start(self, first, follow):
        request = self._request
        request.setHeader("Content-Type", "text/event-stream")
        request.setHeader("Cache-Control", "no-store")
        request.setHeader("X-Accel-Buffering", "no")
        request.notifyFinish().addBoth(self._gone)
        self._write(b"retry: 2000\n\n")
        self._keepAlive.start(KEEPALIVE, now=False)
        self._giveUp = self._clock.callLater(self._notQueuedFor, self._end, NOT_QUEUED)
        self.heard(first)
        if _open(request):
            self._unfollow = follow(self.heard)

    def heard(self, status):
        if not _open(self._request):
            return
        if status is READY or (status is NOT_QUEUED and self._queued):
            self._end(status)
        elif status is NOT_QUEUED:
            if self._sent is None:
                self._send(status)  # not queued (yet): its handshake may still come
        else:
            if not self._queued:
                self._queued = True
                self._giveUp.cancel()
            if status["position"] != (self._waiting or self._sent or {}).get("position"):
                self._offer(status)

    def _offer(self, status):
        wait = self._sentAt + EVENT_INTERVAL - self._clock.seconds()
        if wait <= 0:
            self._send(status)
            return
        self._waiting = status
        if self._turn is None:
            self._turn = self._clock.callLater(wait, self._sendWaiting)

    def _sendWaiting(self):
        self._turn = None
        status, self._waiting = self._waiting, None
        self._send(status)

    def _send(self, status):
        self._sent, self._sentAt = status, self._clock.seconds()
        self._write(b"data: " + json.dumps(status).encode("utf-8") + b"\n\n")

    def _write(self, data):
        if _open(self._request):
            self._request.write(data)

    def _end(self, status):
        self._send(status)
        if _open(self._request):
            self._request.finish()

    def _gone(self, _):
        """Finished, or the client left: stop everything."""
        if self._unfollow is not None:
            self._unfollow()
        for call in (self._turn, self._giveUp):
            if call is not None and call.active():
                call.cancel()
        if self._keepAlive.running:
            self._keepAlive.stop()


class ClientScript(Resource):
    """C{wslb-client.js}, served at ``[queue] client_path``."""

    isLeaf = True

    def __init__(self, path):
        super().__init__()
        self._path = path.encode()
        self._body = CLIENT_SCRIPT.read_bytes()

    def render_GET(self, request):
        if request.path != self._path:
            return _answer(request, 404, {"error": "no such resource"})
        request.setHeader("Content-Type", "text/javascript; charset=utf-8")
        request.setHeader("Cache-Control", "max-age=300")
        return self._body
