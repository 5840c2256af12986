"""
The demo worker: a stateful WebSocket backend in one small process.

It stands in for a real per-session backend (a scene server holding one
user's scene in memory): each session key (the ``X-WSLB-Session`` header
wslb sends) has a message counter that survives reconnections, so tests can
see that stickiness works. Workers for wslb are built after this example.

    python -m wslb.worker.echo --port 9100 [--host 127.0.0.1] [--id NAME] [--log]

One port serves everything:

- ``GET /health``: 200 ``{"ok": true, "worker": id}`` (wslb's health check);
- ``GET /stats``: what this worker has seen, as JSON (see L{EchoWorker.stats}),
  including ``load``: the sum of its open sessions' costs, each read from
  the ``cost`` query parameter wslb passes on (1 when absent), so tests can
  check wslb's capacity accounting from the worker's side;
- plain HTTP under ``/session/`` (wslb's ``[http] paths = ["/session/"]``):
  ``GET /session/whoami`` names the worker and the session (``X-WSLB-Session``),
  ``POST /session/upload`` counts the body's bytes, and ``GET /session/demo``
  is a page whose script opens a WebSocket through wslb (which mints it a
  session cookie) and then calls those two with ``fetch``;
- WebSocket on any other path. Messages:
  - ``whoami``: a JSON reply naming the worker, session, counter, path, headers;
  - ``close CODE [REASON]``: the worker closes with that code;
  - ``end``: the session ends (close with ``--end-code``, 4000 by default)
    and its state is forgotten;
  - anything else, text or binary: echoed back unchanged, and counted.
"""

import argparse
import json
import re
import sys
from collections import Counter, deque
from urllib.parse import parse_qs, urlsplit

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.web.resource import Resource
from twisted.web.server import Site

SESSION_HEADER = "x-wslb-session"
NO_SESSION = "-"
HISTORY = 100  # entries kept in /stats "closes" and "connections"
CLOSE_COMMAND = re.compile(rb"close (\d{4})(?: (.*))?", re.DOTALL)

log = Logger()


class EchoWorker:
    """The worker's memory: per-session counters and what /stats reports."""

    def __init__(self, worker_id):
        self.id = worker_id
        self.counts = {}  # session key -> messages echoed
        self.open = Counter()  # session key -> open connections
        self.costs = {}  # session key -> cost, while it has open connections
        self.max_open_sessions = 0
        self.max_load = 0
        self.closes = deque(maxlen=HISTORY)
        self.connections = deque(maxlen=HISTORY)
        self.protocol_errors = 0  # connections it failed for a malformed frame
        self.accepted = 0  # TCP connections accepted, for WebSockets and HTTP alike

    def opened(self, key, record):
        self.open[key] += 1
        self.costs.setdefault(key, _cost(record["query"]))
        self.counts.setdefault(key, 0)
        self.max_open_sessions = max(self.max_open_sessions, len(self.open))
        self.max_load = max(self.max_load, self.load())
        self.connections.append(record)

    def closed(self, key, code, reason, malformed=False):
        self.protocol_errors += malformed
        self.open[key] -= 1
        if not self.open[key]:
            del self.open[key]
            del self.costs[key]
        self.closes.append({"session": key, "code": code, "reason": reason})

    def load(self):
        return sum(self.costs.values())

    def counted(self, key):
        self.counts[key] = self.counts.get(key, 0) + 1

    def ended(self, key):
        self.counts.pop(key, None)

    def stats(self):
        keys = sorted(set(self.counts) | set(self.open))
        return {
            "worker": self.id,
            "open": sum(self.open.values()),
            "open_sessions": len(self.open),
            "max_open_sessions": self.max_open_sessions,
            "load": self.load(),
            "max_load": self.max_load,
            "protocol_errors": self.protocol_errors,
            "accepted_connections": self.accepted,
            "sessions": {
                key: {"count": self.counts.get(key, 0), "connections": self.open[key]}
                for key in keys
            },
            "closes": list(self.closes),
            "connections": list(self.connections),
        }


def _cost(query):
    """A session's cost from its query string's ``cost`` (1 when absent or not a number)."""
    value = parse_qs(query).get("cost", ["1"])[0]
    return int(value) if value.isdigit() else 1


class EchoProtocol(WebSocketServerProtocol):
    """One user connection; the state lives in the factory's L{EchoWorker}."""

    isOpen = False  # onClose also runs for handshakes that never opened

    def onConnect(self, request):
        self.key = request.headers.get(SESSION_HEADER, NO_SESSION)
        self.record = {
            "session": self.key,
            "headers": request.headers,
            "path": request.path,
            "query": urlsplit(self.http_request_uri).query,
            # Accept the first subprotocol offered, so the client sees our choice.
            "protocol": request.protocols[0] if request.protocols else None,
        }
        return self.record["protocol"]

    def onOpen(self):
        self.isOpen = True
        log.info("open: session {key} on {path}", key=self.key, path=self.record["path"])
        self.factory.worker.opened(self.key, self.record)

    def onMessage(self, payload, isBinary):
        worker = self.factory.worker
        command = None if isBinary else payload  # only text messages are commands
        close = command and CLOSE_COMMAND.fullmatch(command)
        if command == b"whoami":
            self.sendMessage(json.dumps(self.whoami()).encode("utf-8"))
        elif command == b"end":
            worker.ended(self.key)
            self.sendClose(self.factory.endCode)
        elif close:
            self.close(int(close[1]), (close[2] or b"").decode("utf-8"))
        else:
            worker.counted(self.key)
            self.sendMessage(payload, isBinary)

    def onClose(self, wasClean, code, reason):
        if self.isOpen:
            log.info("closed: session {key} with {code} {reason}",
                     key=self.key, code=code, reason=reason)
            # failedByMe: autobahn refused something the peer sent.
            self.factory.worker.closed(self.key, code, reason, malformed=self.failedByMe)

    def whoami(self):
        record = self.record
        return {
            "worker": self.factory.worker.id,
            "session": self.key,
            "count": self.factory.worker.counts.get(self.key, 0),
            "path": record["path"],
            "query": record["query"],
            "headers": record["headers"],
        }

    def close(self, code, reason):
        # sendClose() refuses codes other than 1000 and 3000-4999.
        if code == 1000 or 3000 <= code <= 4999:
            self.sendClose(code, reason or None)
        else:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8"), isReply=False)


class JSONPage(Resource):
    """A GET-only page answering ``render()``'s dict as JSON."""

    isLeaf = True

    def __init__(self, render):
        super().__init__()
        self._render = render

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self._render()).encode("utf-8")


class WhoAmI(Resource):
    """``GET /session/whoami``: the worker and the session wslb said the request is for."""

    isLeaf = True

    def __init__(self, worker):
        super().__init__()
        self._worker = worker

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        headers = {name.decode("latin-1").lower(): b", ".join(values).decode("latin-1")
                   for name, values in request.requestHeaders.getAllRawHeaders()}
        return json.dumps({
            "worker": self._worker.id, "session": headers.get(SESSION_HEADER, NO_SESSION),
            "path": request.uri.decode("latin-1"), "headers": headers,
        }).encode("utf-8")


class Upload(Resource):
    """``POST /session/upload``: how many bytes the body had."""

    isLeaf = True

    def __init__(self, worker):
        super().__init__()
        self._worker = worker

    def render_POST(self, request):
        request.setHeader(b"content-type", b"application/json")
        size = request.content.seek(0, 2)
        return json.dumps({"worker": self._worker.id, "bytes": size}).encode("utf-8")


DEMO_PAGE = b"""<!doctype html>
<meta charset="utf-8">
<title>wslb: a WebSocket and plain HTTP, one session</title>
<pre id="out">running...</pre>
<script>
(async () => {
  const out = document.getElementById("out");
  // No key in the URL: wslb mints one and sends it back as a cookie with its 101.
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`);
  const overWs = await new Promise((resolve, reject) => {
    ws.onopen = () => ws.send("whoami");
    ws.onmessage = (e) => resolve(JSON.parse(e.data));
    ws.onerror = () => reject(new Error("the WebSocket failed"));
  });
  // The cookie goes with these: they reach the same worker, the same session.
  const overHttp = await (await fetch("/session/whoami")).json();
  const body = new Blob(["x".repeat(100000)]);
  const upload = await (await fetch("/session/upload", {method: "POST", body})).json();
  const result = {websocket: overWs.worker, http: overHttp.worker, upload: upload.worker,
                  session: overWs.session, http_session: overHttp.session,
                  uploaded: upload.bytes};
  out.textContent = JSON.stringify(result);
  out.dataset.same = String(result.websocket === result.http && result.http === result.upload
                            && result.session === result.http_session);
})().catch((e) => { document.getElementById("out").textContent = "failed: " + e; });
</script>
"""


class Page(Resource):
    """A fixed HTML page."""

    isLeaf = True

    def __init__(self, html):
        super().__init__()
        self._html = html

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return self._html


class Root(Resource):
    """/health, /stats and plain HTTP under /session/; every other path is the WebSocket."""

    def __init__(self, worker, websocket):
        super().__init__()
        self.putChild(b"health", JSONPage(lambda: {"ok": True, "worker": worker.id}))
        self.putChild(b"stats", JSONPage(worker.stats))
        self._session = {b"whoami": WhoAmI(worker), b"upload": Upload(worker),
                         b"demo": Page(DEMO_PAGE)}
        self._websocket = websocket

    def getChild(self, name, request):
        if name == b"session" and len(request.postpath) == 1:
            page = self._session.get(request.postpath[0])
            if page is not None:
                return page
        return self._websocket


class CountingSite(Site):
    """A Site that counts the connections it accepts."""

    def __init__(self, worker, resource):
        super().__init__(resource)
        self._worker = worker

    def buildProtocol(self, addr):
        self._worker.accepted += 1
        return super().buildProtocol(addr)


def makeSite(worker, endCode=4000, echoCloseCode=False):
    """The worker's whole HTTP and WebSocket surface, as one Site."""
    factory = WebSocketServerFactory()
    factory.protocol = EchoProtocol
    factory.worker = worker
    factory.endCode = endCode
    factory.setProtocolOptions(
        maxMessagePayloadSize=0, maxFramePayloadSize=0, allowNullOrigin=True,
        echoCloseCodeReason=echoCloseCode,
    )
    return CountingSite(worker, Root(worker, WebSocketResource(factory)))


def parseArgs(argv):
    parser = argparse.ArgumentParser(
        prog="python -m wslb.worker.echo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--id", help='worker id in replies (default "echo-<port>")')
    parser.add_argument("--end-code", type=int, default=4000,
                        help="close code that ends a session (wslb's end_close_code)")
    parser.add_argument("--echo-close-code", action="store_true",
                        help="answer a close with the peer's own code, as many servers do")
    parser.add_argument("--log", action="store_true", help="log every connection to stdout")
    return parser.parse_args(argv)


def main(argv=None):
    args = parseArgs(argv)
    worker = EchoWorker(args.id or f"echo-{args.port}")
    # Quiet by default: only warnings and errors, on stderr.
    level, stream = (LogLevel.info, sys.stdout) if args.log else (LogLevel.warn, sys.stderr)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(stream), [LogLevelFilterPredicate(level)])],
        redirectStandardIO=False,
    )
    try:
        site = makeSite(worker, args.end_code, args.echo_close_code)
        reactor.listenTCP(args.port, site, interface=args.host)
    except CannotListenError as e:
        sys.exit(f"echo worker: {e}")
    reactor.run()  # SIGTERM and SIGINT stop it


if __name__ == "__main__":
    main()
