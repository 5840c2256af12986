"""
The admin HTTP API (DESIGN section 7): health for the load balancer in front,
JSON views of workers, sessions and the queue, read from the registry, and
the few changes an operator or a worker makes: register a worker, report a
worker's event, end a session.

Routes are one explicit table of (method, path template, handler). A handler
is ``async (request, **path_params) -> Response``; it awaits the registry
through ``_ask``, which bounds the wait, so no admin request hangs on a
registry that does not answer. Mutating routes join the same table, each
wrapped in the check of L{wslb.admin.auth.MutationAuth}.
"""

import json
from datetime import UTC, datetime
from io import BytesIO
from typing import NamedTuple
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from wslb.admin.auth import MutationAuth, isLoopback
from wslb.pool.urls import hostPort
from wslb.registry import DEAD, lifecycle

log = Logger()

DEFAULT_TIMEOUT = 3.0  # seconds the registry may take; NLB health checks wait ~5 s
MAX_BODY = 64 * 1024  # bytes; the largest request body is a few dozen
REGISTERED = "registered"  # the provider of workers registered through the API


class Response(NamedTuple):
    code: int
    body: dict
    headers: tuple = ()  # (name, value) pairs


def error(code, message, headers=()):
    return Response(code, {"error": message}, headers)


class HTTPError(Exception):
    """A 4xx answer decided deep inside a handler (a bad body, a bad field)."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


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


def sessionRecord(session):
    return {
        "key": session.key,
        "worker": session.worker,
        "cost": session.cost,
        "connected": session.connected,
        "since": isoTime(session.since),
    }


def jsonObject(request):
    """The request body as a JSON object, or L{HTTPError} 413, 415 or 400."""
    # Only application/json: a cross-site page can POST text/plain to
    # 127.0.0.1 without a CORS preflight, but not application/json.
    contentType = (request.getHeader(b"content-type") or b"").partition(b";")[0]
    if contentType.strip().lower() != b"application/json":
        raise HTTPError(415, "the body must be sent as Content-Type: application/json")
    request.content.seek(0)
    data = request.content.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise HTTPError(413, f"the body is larger than {MAX_BODY} bytes")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise HTTPError(400, f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "the body must be a JSON object")
    return body


def fields(body, *names):
    """The values of exactly the keys ``names`` of ``body``, in that order."""
    problems = []
    if unknown := sorted(set(body) - set(names)):
        problems.append("unknown: " + ", ".join(unknown))
    if missing := [name for name in names if name not in body]:
        problems.append("missing: " + ", ".join(missing))
    if problems:
        raise HTTPError(400, f"expected the fields {', '.join(names)} ({'; '.join(problems)})")
    return [body[name] for name in names]


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


def positiveInt(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HTTPError(400, f"{name} must be a positive integer")
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


class Route:
    """One row of the routing table, e.g. GET /api/v1/workers/{id}."""

    def __init__(self, method, template, handler):
        self.method = method
        self.segments = template.strip("/").split("/")
        self.handler = handler

    def match(self, segments):
        """The path parameters when ``segments`` fit the template, else None."""
        if len(segments) != len(self.segments):
            return None
        params = {}
        for pattern, segment in zip(self.segments, segments):
            if pattern.startswith("{"):
                params[pattern[1:-1]] = segment
            elif pattern != segment:
                return None
        return params

    def accepts(self, method):
        return method == self.method or (method == "HEAD" and self.method == "GET")


class AdminAPI(Resource):
    """The JSON API: routes every path itself (a leaf), answers JSON only."""

    isLeaf = True

    def __init__(self, registry, clock, isServing, auth, timeout=DEFAULT_TIMEOUT):
        super().__init__()
        self._registry = registry
        self._clock = clock
        self._isServing = isServing
        self._auth = auth
        self._timeout = timeout
        self.routes = [
            Route("GET", "/healthz", self.healthz),
            Route("GET", "/api/v1/workers", self.listWorkers),
            Route("POST", "/api/v1/workers", self._mutation(self.registerWorker)),
            Route("GET", "/api/v1/workers/{id}", self.getWorker),
            Route("POST", "/api/v1/workers/{id}/events", self._mutation(self.workerEvent)),
            Route("GET", "/api/v1/sessions", self.listSessions),
            Route("GET", "/api/v1/sessions/{key}", self.getSession),
            Route("DELETE", "/api/v1/sessions/{key}", self._mutation(self.endSession)),
            Route("GET", "/api/v1/queue", self.queue),
        ]

    # -- handlers -------------------------------------------------------

    async def healthz(self, request):
        try:
            serving = await self._ask(defer.maybeDeferred(self._isServing))
        except Exception as e:
            log.warn("healthz: not serving: {error!r}", error=e)
            serving = False
        return Response(200 if serving else 503, {"ok": bool(serving)})

    async def listWorkers(self, request):
        workers = await self._ask(self._registry.listWorkers())
        return Response(200, {"workers": [workerRecord(w) for w in workers]})

    async def getWorker(self, request, id):
        worker = await self._ask(self._registry.getWorker(id))
        if worker is None:
            return error(404, f"no worker {id!r}")
        return Response(200, workerRecord(worker))

    async def listSessions(self, request):
        sessions = await self._ask(self._registry.listSessions())
        return Response(200, {"sessions": [sessionRecord(s) for s in sessions]})

    async def getSession(self, request, key):
        session = await self._ask(self._registry.getSession(key))
        if session is None:
            return error(404, f"no session {key!r}")
        return Response(200, sessionRecord(session))

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

    def _mutation(self, handler):
        """``handler`` behind the mutation check: it runs only when allowed."""

        async def checked(request, **params):
            refusal = self._auth.refusal(request)
            if refusal is not None:
                return error(*refusal)
            return await handler(request, **params)

        return checked

    def _ask(self, d):
        """Bound a registry call: past the timeout it fails with TimeoutError."""
        return d.addTimeout(self._timeout, self._clock)

    def render(self, request):
        gone = []  # the client went away: write nothing to its request
        request.notifyFinish().addErrback(gone.append)
        d = defer.Deferred.fromCoroutine(self._dispatch(request))
        d.addCallback(self._write, request, gone)
        return NOT_DONE_YET

    async def _dispatch(self, request):
        # prepath + postpath is the whole path, already split and unquoted
        # (so a quoted id like "10.0.2.110%3A9000" arrives as one segment).
        segments = [s.decode("utf-8", "replace") for s in request.prepath + request.postpath]
        if len(segments) > 1 and segments[-1] == "":
            segments.pop()  # tolerate one trailing slash
        method = request.method.decode("ascii", "replace")
        matching = [(r, p) for r in self.routes if (p := r.match(segments)) is not None]
        if not matching:
            return error(404, "no such resource")
        for route, params in matching:
            if route.accepts(method):
                return await self._handle(route, request, params)
        allowed = ", ".join(sorted({route.method for route, _ in matching}))
        return error(405, f"method {method} not allowed; use {allowed}", (("Allow", allowed),))

    async def _handle(self, route, request, params):
        try:
            return await route.handler(request, **params)
        except HTTPError as e:
            return error(e.code, str(e))
        except defer.TimeoutError:
            return error(503, "the registry did not answer in time")
        except Exception:
            log.failure("admin API: {method} {uri} failed",
                        method=request.method, uri=request.uri)
            return error(500, "internal error")

    def _write(self, response, request, gone):
        if gone:
            return
        request.setResponseCode(response.code)
        request.setHeader("Content-Type", "application/json")
        request.setHeader("Cache-Control", "no-store")
        for name, value in response.headers:
            request.setHeader(name, value)
        request.write(json.dumps(response.body).encode("utf-8") + b"\n")
        request.finish()


class AdminRoot(Resource):
    """
    The admin site's root: pages mounted with ``putChild`` (such as
    ``/metrics`` and ``/status``) are served first; every other path goes
    to the JSON API.
    """

    def __init__(self, api):
        super().__init__()
        self.api = api

    def getChild(self, name, request):
        return self.api


class BoundedRequest(Request):
    """
    A request that keeps at most C{MAX_BODY + 1} bytes of its body, in
    memory: enough for L{jsonObject} to answer 413, while a huge upload
    costs neither memory nor a temporary file.
    """

    def gotLength(self, length):
        self.content = BytesIO()

    def handleContentChunk(self, data):
        room = MAX_BODY + 1 - self.content.tell()
        if room > 0:
            self.content.write(data[:room])


class QuietSite(Site):
    """A Site without per-request access log lines, bounding request bodies."""

    noisy = False
    requestFactory = BoundedRequest

    def log(self, request):
        pass


def makeAdminResource(registry, clock, isServing, token="", timeout=DEFAULT_TIMEOUT,
                      isLocal=isLoopback):
    """
    The admin resource tree. ``isServing()`` fires with True while this
    instance serves users (registry reachable, not shutting down). With a
    ``token``, mutations need it as a bearer token; without, they are taken
    only from peers for which ``isLocal(address)`` is true.
    """
    auth = MutationAuth(token, isLocal)
    return AdminRoot(AdminAPI(registry, clock, isServing, auth, timeout))


def makeAdminSite(registry, clock, isServing, token="", timeout=DEFAULT_TIMEOUT,
                  isLocal=isLoopback):
    """The admin API as a quiet Site, ready for an endpoint to listen on."""
    resource = makeAdminResource(registry, clock, isServing, token, timeout, isLocal)
    return QuietSite(resource, reactor=clock)
