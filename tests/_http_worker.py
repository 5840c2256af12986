"""
A worker in the test's own process for the HTTP proxy's tests: the echo
worker (WebSocket sessions, /health) plus plain HTTP pages under /session/
that stream, stall and tell what they got. It counts the connections it
accepts and the requests it saw.
"""

import hashlib
import json

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IPushProducer
from twisted.web import server
from twisted.web.resource import Resource
from zope.interface import implementer

from wslb.worker.echo import EchoWorker, makeSite

CHUNK = 64 * 1024


class _Digest:
    """A request body's stand-in for twisted.web's file: counted and hashed, not kept."""

    def __init__(self):
        self.size = 0
        self.sha = hashlib.sha256()

    def write(self, data):
        self.size += len(data)
        self.sha.update(data)

    def tell(self):
        return self.size

    def seek(self, *args):
        return self.size

    def read(self, *args):
        return b""

    def close(self):
        pass


class DigestingRequest(server.Request):
    def gotLength(self, length):
        self.content = _Digest()
        pause = self.requestHeaders.getRawHeaders(b"x-pause-reading")
        if pause:  # a worker slow to take the body: it reads none for that long
            self.channel.transport.pauseProducing()
            reactor.callLater(float(pause[0]), self.channel.transport.resumeProducing)


@implementer(IPushProducer)
class Download:
    """``size`` bytes of a repeating pattern, written as the client takes them."""

    def __init__(self, request, size, stopped=lambda: None):
        self._request = request
        self._stopped = stopped
        self._left = size
        self._paused = False
        self._block = bytes(range(256)) * (CHUNK // 256)
        request.registerProducer(self, True)
        reactor.callLater(0, self.resumeProducing)

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        while not self._paused and self._left > 0:
            block = self._block[:self._left]
            self._left -= len(block)
            self._request.write(block)
        if self._left <= 0 and self._request is not None:
            request, self._request = self._request, None
            request.unregisterProducer()
            request.finish()

    def stopProducing(self):
        self._left = 0
        self._request = None
        self._stopped()


class Pages(Resource):
    """/session/<page>: what the tests ask a worker for."""

    isLeaf = True

    def __init__(self, worker):
        super().__init__()
        self.worker = worker
        self.seen = []  # (method, uri, headers) of every request
        self.stalled = []
        self.downloadsStopped = 0  # downloads whose reader went away

    def render(self, request):
        headers = {name.decode().lower(): b", ".join(values).decode("latin-1")
                   for name, values in request.requestHeaders.getAllRawHeaders()}
        self.seen.append((request.method.decode(), request.uri.decode(), headers))
        page = request.postpath[0] if request.postpath else b""
        if page == b"stall":
            self.stalled.append(request)
            return server.NOT_DONE_YET
        if page == b"halfway":  # 1000 bytes of the 2000 it announces, then nothing
            self.stalled.append(request)
            request.setHeader(b"Content-Length", b"2000")
            request.write(b"x" * 1000)
            return server.NOT_DONE_YET
        if page == b"download":
            size = int(request.args[b"bytes"][0])
            if b"chunked" not in request.args:
                request.setHeader(b"Content-Length", b"%d" % size)
            Download(request, size, self._downloadStopped)
            return server.NOT_DONE_YET
        if page == b"status":
            request.setResponseCode(int(request.args[b"code"][0]))
            request.setHeader(b"X-Hop", b"kept")
            request.setHeader(b"Keep-Alive", b"timeout=5")
            return b""
        body = request.content
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({
            "worker": self.worker.id, "method": request.method.decode(),
            "uri": request.uri.decode(), "headers": headers,
            "bytes": body.size, "sha256": body.sha.hexdigest(),
        }).encode()


    def _downloadStopped(self):
        self.downloadsStopped += 1


class HTTPWorker:
    """Listening on a free loopback port; ``url`` is what wslb's static pool names."""

    def __init__(self, name="http-worker"):
        self.worker = EchoWorker(name)
        self.site = makeSite(self.worker)
        self.site.requestFactory = DigestingRequest
        self.pages = Pages(self.worker)
        self.site.resource.putChild(b"session", self.pages)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.url = f"ws://127.0.0.1:{self.port.getHost().port}"

    @property
    def accepted(self):
        return self.worker.accepted

    def stop(self):
        for request in self.pages.stalled:
            request.transport.abortConnection()
        return defer.maybeDeferred(self.port.stopListening)
