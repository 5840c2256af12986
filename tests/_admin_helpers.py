"""A real admin Site on 127.0.0.1 over a MemoryRegistry, for the mutation and CLI tests."""

import json

import treq
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.web.client import HTTPConnectionPool

from wslb.admin.api import makeAdminRoutes, makeAdminSite
from wslb.admin.auth import isLoopback
from wslb.registry import HEALTHY
from wslb.registry.memory import MemoryRegistry

T0 = 1644334020.0  # 2022-02-08T15:27:00Z
JSON = {"Content-Type": "application/json"}


class AdminServer:
    """
    The admin API listening on 127.0.0.1; the registry's clock is a Clock,
    so listener calls happen on ``clock.advance(0)``. ``ended`` collects
    the keys the session-ended listeners were told about.
    """

    def __init__(self, token="", isLocal=isLoopback):
        self.clock = Clock()
        self.clock.advance(T0)
        self.registry = MemoryRegistry(self.clock)
        self.ended = []
        self.registry.addSessionEndedListener(self.ended.append)
        self.routes = makeAdminRoutes(self.registry, self.clock, lambda: defer.succeed(True),
                                      token, timeout=3.0, isLocal=isLocal)
        self.site = makeAdminSite(self.routes, self.clock)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    async def request(self, method, path, body=None, *, token=None, data=None, headers=JSON):
        """Fire with (status, decoded JSON body, response); ``body`` is sent as JSON."""
        headers = dict(headers)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            data = json.dumps(body).encode("utf-8")
        response = await treq.request(method, self.url + path, data=data, headers=headers,
                                      pool=self.pool, timeout=5)
        return response.code, json.loads(await response.content()), response

    async def addHealthyWorker(self, worker_id, capacity=1):
        now = self.clock.seconds()
        await self.registry.addWorker(worker_id, f"ws://{worker_id}", "static", capacity, now)
        await self.registry.setWorkerState(worker_id, HEALTHY, now)

    async def close(self):
        await defer.maybeDeferred(self.port.stopListening)
        await self.pool.closeCachedConnections()
