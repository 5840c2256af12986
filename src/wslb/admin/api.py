"""
The admin HTTP API (DESIGN section 7): health for the load balancer in front,
JSON views of workers, sessions and the queue, read from the registry, and
the few changes an operator, a worker or an application makes: register a
worker, report a worker's event, allocate a session before its user
connects, end a session.

Each route is one handler of L{AdminAPI}, listed in L{AdminAPI.addRoutes}.
A handler awaits the registry through ``_ask``, which bounds the wait, so no
admin request hangs on a registry that does not answer. Every route under
``/api/`` passes the check of L{wslb.admin.auth.AdminAuth} first.
"""

from datetime import UTC, datetime
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.logger import Logger

from wslb.admin.auth import AdminAuth, isLoopback
from wslb.admin.web import HTTPError, JSONRoutes, QuietSite, Response, error, fields, jsonObject
from wslb.registry import DEAD, SESSION_KEY, Assigned, Queued, QueueFull, lifecycle
from wslb.worker_urls import hostPort

log = Logger()

DEFAULT_TIMEOUT = 3.0  # seconds the registry may take; NLB health checks wait ~5 s
REGISTERED = "registered"  # the provider of workers registered through the API
PAGE = 500  # records per answer of a list endpoint, unless ?limit= says otherwise
MAX_PAGE = 5000


def isoTime(seconds):
    """Clock seconds (since the epoch) as ISO-8601 UTC, e.g. 2022-02-08T15:27:00Z."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def workerRecord(worker):
    """A L{Worker} as the JSON record of DESIGN section 6."""
    return {
        "id": worker.id,
        "url": worker.url,
        "provider": worker.provider,
        "state": worker.state,
        "draining": worker.draining,
        "capacity": worker.capacity,
        "load": worker.load,
        "sessions": list(worker.sessions),
        "last_seen": isoTime(worker.last_seen),
        "started_at": isoTime(worker.started_at),
    }


def sessionRecord(session, httpRequests=0):
    return {
        "key": session.key,
        "worker": session.worker,
        "cost": session.cost,
        "connected": session.connected,
        "since": isoTime(session.since),
        "http_requests": httpRequests,
    }


def registeredUrl(url):
    """The canonical C{ws(s)://host:port} of a URL given to register a worker."""
    bad = HTTPError(400, 'url must be a string "ws://HOST:PORT" or "wss://HOST:PORT"')
    if not isinstance(url, str):
        raise bad
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise bad from None
    if not (parts.scheme in ("ws", "wss") and parts.hostname and port
            and parts.path in ("", "/") and not (parts.query or parts.fragment or parts.username)):
        raise bad
    return f"{parts.scheme}://{hostPort(url)}"


def pageOf(request):
    """
    (cursor, limit) of a list request: ``?cursor=`` is the ``next`` of the
    page before (absent: the first page), ``?limit=`` at most how many
    records (default PAGE).
    """
    cursor = request.args.get(b"cursor", [b""])[-1].decode("utf-8", "replace") or None
    limit = request.args.get(b"limit", [str(PAGE).encode()])[-1]
    try:
        limit = int(limit)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE:
        raise HTTPError(400, f"limit must be an integer from 1 to {MAX_PAGE}")
    return cursor, limit


def paged(name, records, limit, cursorOf, record):
    """
    The JSON body of one page: ``records`` were asked for with ``limit + 1``,
    so one more than ``limit`` means more remain: ``next`` is the cursor.
    """
    body = {name: [record(r) for r in records[:limit]]}
    if len(records) > limit:
        body["next"] = cursorOf(records[limit - 1])
    return body


def positiveInt(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HTTPError(400, f"{name} must be a positive integer")
    return value


def sessionKey(value):
    if not isinstance(value, str) or not SESSION_KEY.match(value):
        raise HTTPError(400, "key must be 1-128 characters of A-Za-z0-9._~-")
    return value


def seconds(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e9:
        raise HTTPError(400, f"{name} must be a number of seconds >= 0")
    return value


def _reported(event):
    return lambda registry, worker, now: lifecycle.apply(registry, worker, event, now)


# What each event of POST /api/v1/workers/{id}/events does to the registry:
# the lifecycle ones go through the lifecycle table.
WORKER_EVENTS = {
    **{name: _reported(event) for name, event in lifecycle.REPORTED.items()},
    "drain": lambda registry, worker, now: registry.setDraining(worker, True),
    "heartbeat": lambda registry, worker, now: registry.heartbeat(worker, now),
}


class AdminAPI:
    """The JSON API's handlers, over the registry."""

    def __init__(self, registry, clock, isServing, timeout=DEFAULT_TIMEOUT, allocator=None,
                 httpRequests=lambda key: 0):
        """
        ``allocator`` (None: no allocation) has ``allocate(key, cost, wait)``
        (firing with an L{Assigned}, a L{Queued}, L{QueueFull}, or None when
        its wait ran out), ``defaultCost`` and ``largestCapacity()``.
        ``httpRequests(key)``: the plain HTTP requests this instance proxied
        for a session.
        """
        self._registry = registry
        self._clock = clock
        self._isServing = isServing
        self._timeout = timeout
        self._allocator = allocator
        self._httpRequests = httpRequests

    def addRoutes(self, routes):
        """Add the API's routes to L{JSONRoutes} (whose guard checks those under /api/)."""
        routes.add("GET", "/healthz", self.healthz)
        routes.add("GET", "/api/v1/workers", self.listWorkers)
        routes.add("POST", "/api/v1/workers", self.registerWorker)
        routes.add("GET", "/api/v1/workers/<id>", self.getWorker)
        routes.add("POST", "/api/v1/workers/<id>/events", self.workerEvent)
        routes.add("GET", "/api/v1/sessions", self.listSessions)
        routes.add("GET", "/api/v1/sessions/<key>", self.getSession)
        if self._allocator is not None:
            routes.add("POST", "/api/v1/sessions", self.allocateSession)
        routes.add("DELETE", "/api/v1/sessions/<key>", self.endSession)
        routes.add("GET", "/api/v1/queue", self.queue)

    # -- handlers -------------------------------------------------------

    async def healthz(self, request):
        try:
            serving = await self._ask(defer.maybeDeferred(self._isServing))
        except Exception as e:
            log.warn("healthz: not serving: {error!r}", error=e)
            serving = False
        return Response(200 if serving else 503, {"ok": bool(serving)})

    async def listWorkers(self, request):
        cursor, limit = pageOf(request)
        workers = await self._ask(self._registry.listWorkers(after=cursor, limit=limit + 1))
        return Response(200, paged("workers", workers, limit, lambda w: w.id, workerRecord))

    async def getWorker(self, request, id):
        worker = await self._ask(self._registry.getWorker(id))
        if worker is None:
            return error(404, f"no worker {id!r}")
        return Response(200, workerRecord(worker))

    async def listSessions(self, request):
        cursor, limit = pageOf(request)
        sessions = await self._ask(self._registry.listSessions(after=cursor, limit=limit + 1))
        return Response(200, paged("sessions", sessions, limit, lambda s: s.key, self._record))

    async def getSession(self, request, key):
        session = await self._ask(self._registry.getSession(key))
        if session is None:
            return error(404, f"no session {key!r}")
        return Response(200, self._record(session))

    async def registerWorker(self, request):
        url, capacity = fields(jsonObject(request), "url", "capacity")
        url, capacity = registeredUrl(url), positiveInt(capacity, "capacity")
        workerId = hostPort(url)
        worker = await self._ask(self._registry.addWorker(
            workerId, url, REGISTERED, capacity, self._clock.seconds()))
        if (worker.url, worker.capacity, worker.provider) != (url, capacity, REGISTERED):
            return error(409, f"worker {workerId!r} exists already: {worker.url}, capacity "
                              f"{worker.capacity}, provider {worker.provider}")
        if worker.state == DEAD:  # registering again starts it over
            worker = await self._ask(lifecycle.apply(
                self._registry, workerId, lifecycle.REREGISTERED, self._clock.seconds()))
            if worker is None:
                return error(409, f"worker {workerId!r} was removed meanwhile; register again")
        return Response(201, workerRecord(worker))

    async def workerEvent(self, request, id):
        [event] = fields(jsonObject(request), "event")
        if not isinstance(event, str) or event not in WORKER_EVENTS:
            raise HTTPError(400, "event must be one of " + ", ".join(WORKER_EVENTS))
        worker = await self._ask(WORKER_EVENTS[event](self._registry, id, self._clock.seconds()))
        if worker is None:
            return error(404, f"no worker {id!r}")
        reported = lifecycle.REPORTED.get(event)
        if reported and worker.state != lifecycle.target(reported):
            again = worker.state == DEAD and worker.provider == REGISTERED
            return error(409, f"worker {id!r} is {worker.state}: {event!r} does not apply"
                              + (" (register it again)" if again else ""))
        return Response(200, workerRecord(worker))

    async def allocateSession(self, request):
        """
        Bind a worker to a session key before its user connects (DESIGN §7):
        201 with the worker, 202 with the place it holds in the queue, 503
        when the queue is full. The same key again: the same binding.
        """
        allocator = self._allocator
        key, cost, wait = fields(jsonObject(request), "key", cost=None, wait=0)
        key, wait = sessionKey(key), seconds(wait, "wait")
        cost = allocator.defaultCost if cost is None else positiveInt(cost, "cost")
        if cost > allocator.largestCapacity():
            raise HTTPError(400, f"cost {cost} is larger than any worker's capacity "
                                 f"({allocator.largestCapacity()})")
        try:
            result = await allocator.allocate(key, cost, wait)
        except Exception as e:
            log.warn("allocating {key}: {error!r}", key=key, error=e)
            return error(503, "the registry is unavailable", (("Retry-After", "1"),))
        if isinstance(result, Assigned):
            worker = await self._ask(self._registry.getWorker(result.worker.id))
            if worker is not None:
                return Response(201, {"key": key, "worker": workerRecord(worker),
                                      "url": worker.url})
            result = None  # its worker is gone already: so is the session
        if isinstance(result, Queued):
            return Response(202, {"key": key, "queued": result.position,
                                  "ticket": result.ticket})
        if isinstance(result, QueueFull):
            return error(503, "the queue is full", (("Retry-After", "1"),))
        return error(503, "the allocation was neither bound nor kept queued: try again",
                     (("Retry-After", "1"),))

    async def endSession(self, request, key):
        ended = await self._ask(self._registry.endSession(key))
        if ended is None:
            return error(404, f"no session {key!r}")
        return Response(200, {"ended": key})

    async def queue(self, request):
        info = await self._ask(self._registry.queueInfo(self._clock.seconds()))
        return Response(200, {
            "length": info.length,
            "oldest_wait_seconds": round(info.oldest_wait, 3),
        })

    # -- plumbing -------------------------------------------------------

    def _record(self, session):
        return sessionRecord(session, self._httpRequests(session.key))

    def _ask(self, d):
        """Bound a registry call: past the timeout it fails with TimeoutError."""
        return d.addTimeout(self._timeout, self._clock)


def makeAdminRoutes(registry, clock, isServing, token="", timeout=DEFAULT_TIMEOUT,
                    isLocal=isLoopback, allocator=None, httpRequests=lambda key: 0):
    """
    The admin port's routes. ``isServing()`` fires with True while this
    instance serves users (registry reachable, not shutting down). With a
    ``token``, every /api/ request needs it as a bearer token; without, they
    are answered only for peers for which ``isLocal(address)`` is true (see
    L{AdminAuth}). Pages such as C{/metrics} are mounted on the result
    (L{JSONRoutes.mount}). ``httpRequests(key)`` is how many plain HTTP
    requests this instance proxied for a session (its records say).
    """
    routes = JSONRoutes(guard=AdminAuth(token, isLocal).refusal)
    AdminAPI(registry, clock, isServing, timeout, allocator, httpRequests).addRoutes(routes)
    return routes


def makeAdminSite(routes, clock):
    """The admin port's routes as a quiet Site, ready for an endpoint to listen on."""
    return QuietSite(routes.resource(), reactor=clock)
