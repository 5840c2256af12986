"""
``GET /status``, the live status page for operators, and ``GET
/api/v1/status``, the part of what it shows that the registry does not
hold: this instance, its leadership and what its scaler did lately.

The page is static (``static/status.*``, no build step, nothing fetched
from elsewhere): the browser polls the JSON API and builds the DOM itself,
so the page shows nothing the API does not, and needs no templating here.
"""

from importlib import resources

from twisted.web.resource import Resource

from wslb.admin.api import isoTime
from wslb.admin.web import Response

_STATIC = resources.files("wslb.admin") / "static"
PAGE = "status.html"
ASSETS = {  # what /status/<name> may serve, with its content type
    "status.css": "text/css; charset=utf-8",
    "status.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
}

# The page runs only its own script and talks only to its own origin: even
# markup slipped into the data could not load or run anything.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class StatusPage(Resource):
    """
    ``/status`` is the page, ``/status/<asset>`` its parts (L{ASSETS}); the
    page names them relative to itself (and polls
    ``api/v1/...``), so it also works behind a proxy that adds a path prefix.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        # Read once, when the service is built, not on the reactor per request.
        self._files = {
            name: (_STATIC / name).read_bytes() for name in (PAGE, *ASSETS)
        }

    def render_GET(self, request):
        path = [segment.decode("utf-8", "replace") for segment in request.postpath]
        if path == [""]:
            # /status/ would resolve the page's relative links one level too deep.
            request.redirect(b"../status")
            return b""
        if not path:
            return self._serve(request, PAGE, "text/html; charset=utf-8")
        if len(path) == 1 and path[0] in ASSETS:
            return self._serve(request, path[0], ASSETS[path[0]])
        request.setResponseCode(404)
        request.setHeader("Content-Type", "text/plain; charset=utf-8")
        return b"no such resource\n"

    def _serve(self, request, name, contentType):
        request.setHeader("Content-Type", contentType)
        for header, value in SECURITY_HEADERS.items():
            request.setHeader(header, value)
        return self._files[name]


def actionRecord(action):
    """A L{wslb.pool.scaler.ScalerAction} as JSON."""
    return {
        "time": isoTime(action.time),
        "action": action.action,
        "workers": list(action.workers),
        "fencing_token": action.fencing_token,
    }


class StatusAPI:
    """
    ``GET /api/v1/status``, a route of the admin API (see L{addRoutes}),
    so that it answers like every other API path: JSON errors, C{HEAD},
    C{405}, no caching.

    ``leaderInfo()`` returns ``{"leader": bool, "fencing_token": int}``;
    ``recentActions()`` the scaler's recent actions, oldest first. ``now``
    in the answer is this instance's clock, against which the page reckons
    ages (the browser's clock may be off).
    """

    def __init__(self, instance, clock, leaderInfo, recentActions):
        self._instance = instance
        self._clock = clock
        self._leaderInfo = leaderInfo
        self._recentActions = recentActions

    def addRoutes(self, routes):
        routes.add("GET", "/api/v1/status", self.status)

    async def status(self, request):
        leader = self._leaderInfo()
        return Response(200, {
            "instance": self._instance,
            "now": isoTime(self._clock.seconds()),
            "leader": bool(leader["leader"]),
            "fencing_token": leader["fencing_token"],
            "scaler_actions": [actionRecord(a) for a in reversed(list(self._recentActions()))],
        })
