"""
The admin port's HTTP plumbing, on klein: JSON routes, mounted pages, and
a quiet Site that bounds request bodies.

A JSON route is one small async handler ``(request, **params) ->
Response`` registered with L{JSONRoutes.add}. Around it the routes give
every answer the same shape: the guard (who may use the API) that may
refuse first, JSON bodies and errors, 503 when the registry does not answer
in time, and no write to a client that has gone.
"""

import json
from io import BytesIO
from typing import NamedTuple
from urllib.parse import unquote

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from werkzeug.exceptions import MethodNotAllowed, NotFound

log = Logger()

MAX_BODY = 64 * 1024  # bytes; the largest request body is a few dozen


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


def fields(body, *names, **optional):
    """
    The values of the keys ``names`` of ``body``, then of the keys named in
    ``optional`` (their defaults when absent), in that order; no other key.
    """
    problems = []
    every = [*names, *optional]
    if unknown := sorted(set(body) - set(every)):
        problems.append("unknown: " + ", ".join(unknown))
    if missing := [name for name in names if name not in body]:
        problems.append("missing: " + ", ".join(missing))
    if problems:
        raise HTTPError(400, f"expected the fields {', '.join(every)} ({'; '.join(problems)})")
    return [body[name] for name in names] + [body.get(n, d) for n, d in optional.items()]


def _written(response, request):
    """Put ``response`` on ``request``; the body bytes for klein to write."""
    request.setResponseCode(response.code)
    request.setHeader("Content-Type", "application/json")
    request.setHeader("Cache-Control", "no-store")
    for name, value in response.headers:
        request.setHeader(name, value)
    return json.dumps(response.body).encode("utf-8") + b"\n"


async def _answer(handler, request, params, checks):
    """The handler's Response, a check's refusal, or the error it came to."""
    try:
        for check in checks:
            refusal = check(request)
            if refusal is not None:
                return error(*refusal)
        return await handler(request, **params)
    except HTTPError as e:
        return error(e.code, str(e))
    except defer.TimeoutError:
        return error(503, "the registry did not answer in time")
    except Exception:
        log.failure("admin API: {method} {uri} failed", method=request.method, uri=request.uri)
        return error(500, "internal error")


class JSONRoutes:
    """
    A klein app for the admin port: JSON routes (L{add}) and pages of
    their own (L{mount}). A path ending in one slash is the path without
    it; unknown paths and methods get JSON 404 and 405 (with C{Allow}).
    """

    def __init__(self, guard=None):
        """
        ``guard(request)`` checks every route under C{/api/}: None to serve
        it, or a refusal ``(code, message, headers)`` to answer instead.
        """
        self._guard = guard
        self.app = Klein()
        self.app.url_map.strict_slashes = False
        self.app.handle_errors(NotFound)(self._notFound)
        self.app.handle_errors(MethodNotAllowed)(self._notAllowed)

    def add(self, method, path, handler):
        """
        Answer ``method path`` (klein's syntax: ``/api/v1/workers/<id>``;
        GET answers HEAD too) with ``await handler(request, **params)``;
        under C{/api/} only if the guard lets the request through (so a
        route added later cannot be left open by mistake).

        A handler runs to its end even when its client leaves (a mutation
        is never cut between two registry calls); only the answer is
        dropped.
        """
        checks = (self._guard,) if self._guard and path.startswith("/api/") else ()

        def route(request, **params):
            params = {name: unquote(value) for name, value in params.items()}
            answered = defer.Deferred()  # klein cancels this one when the client leaves
            defer.Deferred.fromCoroutine(
                _answer(handler, request, params, checks)).chainDeferred(answered)
            return answered.addCallback(_written, request)

        self.app.route(path, methods=[method], endpoint=f"{method} {path}")(route)

    def mount(self, name, resource):
        """Serve the twisted.web ``resource`` at C{/name} and below."""
        self.app.route(f"/{name}", branch=True, endpoint=f"page {name}")(lambda request: resource)

    def resource(self):
        return _Segments(self.app.resource())

    @staticmethod
    def _notFound(request, failure):
        return _written(error(404, "no such resource"), request)

    @staticmethod
    def _notAllowed(request, failure):
        allowed = ", ".join(sorted(set(failure.value.valid_methods) - {"HEAD"}))
        method = request.method.decode("ascii", "replace")
        return _written(error(405, f"method {method} not allowed; use {allowed}",
                              (("Allow", allowed),)), request)


class _Segments(Resource):
    """
    Klein joins the request's path segments with "/" to match routes; a
    "/" inside one (sent as %2F: an id may hold one) would split it. So
    each segment reaches klein with its "%" and "/" escaped again, and
    L{JSONRoutes.add} unescapes route parameters. A path (or Host) that is
    not UTF-8 gets a JSON 400 here, before klein.
    """

    isLeaf = True

    def __init__(self, routed):
        super().__init__()
        self._routed = routed

    def render(self, request):
        try:
            for part in (request.getRequestHostname(), *request.prepath, *request.postpath):
                part.decode("utf-8")
        except UnicodeDecodeError:  # klein would log a traceback and answer in HTML
            return _written(error(400, "the request's path and Host must be UTF-8"), request)
        request.postpath = [segment.replace(b"%", b"%25").replace(b"/", b"%2F")
                            for segment in request.postpath]
        return self._routed.render(request)


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
