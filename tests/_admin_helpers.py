"""
The admin API over a MemoryRegistry driven by a Clock, for the admin and CLI
tests: in memory through treq's StubTreq (L{Admin}: no socket, answers
delivered when the test flushes), or listening on 127.0.0.1 (L{AdminServer})
where the socket is the point: the peer's address, the Host and Origin a
client sends, the Site's own request class, a real CLI process.
"""

import json

from _fired import fired
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.web.client import Agent, HTTPConnectionPool

from wslb.admin.api import makeAdminRoutes, makeAdminSite
from wslb.admin.auth import isLoopback
from wslb.registry import HEALTHY
from wslb.registry.memory import MemoryRegistry

T0 = 1644334020.0  # 2022-02-08T15:27:00Z
TIMEOUT = 3.0  # seconds the admin API waits for the registry
JSON = {"Content-Type": "application/json"}


class Admin:
    """
    The admin routes in memory. The registry's clock is a Clock, so
    listener calls happen on ``clock.advance(0)``; ``ended`` collects the
    keys the session-ended listeners were told about; ``serving`` feeds
    /healthz (a bool, an exception, or a Deferred that has not fired).
    """

    base = "http://localhost"

    def __init__(self, token="", isLocal=isLoopback, makeRegistry=MemoryRegistry):
        self.clock = Clock()
        self.clock.advance(T0)
        self.registry = makeRegistry(self.clock)
        self.ended = []
        self.registry.addSessionEndedListener(self.ended.append)
        self.serving = True
        self.routes = makeAdminRoutes(self.registry, self.clock, self.isServing, token,
                                      timeout=TIMEOUT, isLocal=isLocal)
        self.site = makeAdminSite(self.routes, self.clock)
        self.http = StubTreq(self.routes.resource())

    def isServing(self):
        if isinstance(self.serving, Exception):
            return defer.fail(self.serving)
        if isinstance(self.serving, defer.Deferred):
            return self.serving
        return defer.succeed(self.serving)

    def send(self, method, path, body=None, *, token=None, data=None, headers=JSON):
        """
        Send one request (``body`` as JSON); a Deferred of (status, decoded
        JSON body or b"" when empty, response). Every answer is JSON.
        """
        headers = dict(headers)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            data = json.dumps(body).encode("utf-8")
        answer = self.http.request(method, self.base + path, data=data, headers=headers)
        self.flush()
        return answer.addCallback(lambda response: defer.Deferred.fromCoroutine(
            _decoded(response)))

    def flush(self):
        """Deliver what the server has written (an answer that came later)."""
        self.http.flush()

    async def request(self, method, path, body=None, **kwargs):
        """L{send}, answered at once: the routes answer in memory, on this Clock's time."""
        answer = self.send(method, path, body, **kwargs)
        self.flush()
        assert fired(answer), f"{method} {path} is not answered yet"
        return await answer

    async def get(self, path):
        """(status, decoded body) of GET ``path``."""
        code, body, _ = await self.request("GET", path)
        return code, body

    async def addHealthyWorker(self, worker_id, capacity=1):
        now = self.clock.seconds()
        await self.registry.addWorker(worker_id, f"ws://{worker_id}", "static", capacity, now)
        await self.registry.setWorkerState(worker_id, HEALTHY, now)


async def _decoded(response):
    body = await response.content()
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    return response.code, json.loads(body) if body else body, response


class AdminServer(Admin):
    """The same routes served by the admin Site, listening on 127.0.0.1; L{close} it."""

    def __init__(self, token="", isLocal=isLoopback, makeRegistry=MemoryRegistry):
        super().__init__(token, isLocal, makeRegistry)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.url = self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=self.pool))

    def flush(self):
        pass  # the reactor delivers

    async def request(self, method, path, body=None, **kwargs):
        return await self.send(method, path, body, **kwargs).addTimeout(5, reactor)

    async def close(self):
        await defer.maybeDeferred(self.port.stopListening)
        await self.pool.closeCachedConnections()
