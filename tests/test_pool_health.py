"""
Health checks driven by a task.Clock (intervals, timeouts, state ages) over
HTTP in memory: treq's StubTreq carries each check to the worker its Host
names (WorkerHosts), no socket. The kept-alive connection a worker's checks
reuse is a socket's matter: that test checks real workers on 127.0.0.1.
"""

import itertools

import pytest
import pytest_twisted
from _fired import fired
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from wslb.pool.health import MAX_CHECKS, HealthChecker
from wslb.registry import DEAD, HEALTHY, STARTING, UNHEALTHY
from wslb.registry.memory import MemoryRegistry

START = 1000.0
INTERVAL = 5.0
TIMEOUT = 2.0
START_TIMEOUT = 60.0
UNHEALTHY_TIMEOUT = 30.0
NOBODY = "ws://nobody.test:9000"  # no worker answers there


class HealthEndpoint(Resource):
    """GET /health answering ``code``, or never (``hang``); counts requests."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.code = 200
        self.hits = 0
        self.hang = False
        self.onRequest = lambda: None
        self.held = []  # the requests it hangs on, oldest first

    def render_GET(self, request):
        self.hits += 1
        self.onRequest()
        if self.hang:
            self.held.append(request)
            return NOT_DONE_YET
        request.setResponseCode(self.code)
        return b"{}"

    def answerHeld(self, count):
        """Answer the ``count`` oldest requests it hangs on (flush the client to deliver)."""
        answered, self.held = self.held[:count], self.held[count:]
        for request in answered:
            request.setResponseCode(self.code)
            request.write(b"{}")
            request.finish()


class WorkerHosts(Resource):
    """
    Every worker's HTTP side, found by the Host a request is sent to. A
    host nobody serves (L{NOBODY}) drops the connection unanswered, as a
    refused or reset one gives no answer.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self._hosts = {}  # "name:port" -> HealthEndpoint

    def serve(self, name, endpoint=None):
        """(ws:// url, HealthEndpoint) of a worker that answers (on ``endpoint``, or a new one)."""
        self._hosts[f"{name}:9000"] = endpoint = endpoint or HealthEndpoint()
        return f"ws://{name}:9000", endpoint

    def render(self, request):
        endpoint = self._hosts.get(request.getHeader(b"host").decode("ascii"))
        if endpoint is None:
            request.transport.abortConnection()
            return NOT_DONE_YET
        if request.path != b"/health":
            request.setResponseCode(404)
            return b""
        return endpoint.render(request)


class WorkerHost(WrappingFactory):
    """A real worker's HTTP side: counts the connections it accepts, and can go away."""

    def __init__(self, site):
        super().__init__(site)
        self.accepted = 0

    def registerProtocol(self, p):
        self.accepted += 1
        super().registerProtocol(p)

    def die(self):
        """Stop listening and drop every connection, as a killed worker's host does."""
        self.port.stopListening()
        for p in list(self.protocols):
            p.transport.abortConnection()


@pytest.fixture
def serveOnLoopback():
    """serve() -> (ws:// url, HealthEndpoint) of a real HTTP server on 127.0.0.1."""
    ports = []

    def start():
        endpoint = HealthEndpoint()
        root = Resource()
        root.putChild(b"health", endpoint)
        endpoint.host = WorkerHost(Site(root))
        endpoint.host.port = reactor.listenTCP(0, endpoint.host, interface="127.0.0.1")
        ports.append(endpoint.host.port)
        return f"ws://127.0.0.1:{endpoint.host.port.getHost().port}", endpoint

    yield start
    for port in ports:
        port.stopListening()


def spy(registry, name):
    """Wrap ``registry.<name>``; the list it returns gets each call's keyword arguments."""
    calls = []
    method = getattr(registry, name)

    def spied(*args, **kwargs):
        calls.append(kwargs)
        return method(*args, **kwargs)

    setattr(registry, name, spied)
    return calls


@pytest.fixture
def hosts():
    return WorkerHosts()


@pytest.fixture
def serve(hosts):
    """serve() -> (ws:// url, HealthEndpoint) of one more worker of ``hosts``."""
    names = itertools.count(1)
    return lambda: hosts.serve(f"w{next(names)}.test")


@pytest.fixture
def checked(hosts):
    """checked(failures=3) -> a L{Checked} whose checks reach ``hosts`` in memory."""
    return lambda failures=3: Checked(StubTreq(hosts), failures)


class Checked:
    """A HealthChecker on a Clock with the real MemoryRegistry; ``http`` carries its checks."""

    def __init__(self, http, failures=3):
        self.clock = Clock()
        self.clock.advance(START)
        self.registry = MemoryRegistry(self.clock)
        self.http = http
        self.checker = HealthChecker(
            self.registry, self.clock, "/health", INTERVAL, TIMEOUT, failures,
            START_TIMEOUT, UNHEALTHY_TIMEOUT, http=http,
        )

    def add(self, worker_id, url, provider="local"):
        return self.registry.addWorker(worker_id, url, provider, 1, self.clock.seconds())

    def set(self, worker_id, state):
        return self.registry.setWorkerState(worker_id, state, self.clock.seconds())

    @inlineCallbacks
    def worker(self, worker_id):
        return (yield self.registry.getWorker(worker_id))

    @inlineCallbacks
    def states(self):
        return {w.id: w.state for w in (yield self.registry.listWorkers())}

    @inlineCallbacks
    def round(self, advance=INTERVAL):
        """Advance the clock, then run one round to its end."""
        self.clock.advance(advance)
        yield self.checker.check()


@pytest_twisted.inlineCallbacks
def test_starting_workers_pass_or_die_after_start_timeout(serve, checked):
    ok_url, ok = serve()
    bad_url, bad = serve()
    bad.code = 500
    c = checked()
    assert c.checker.startingFor(START) == 0  # none seen yet
    yield c.add("ok", ok_url)
    yield c.add("bad", bad_url)
    yield c.add("closed", NOBODY)
    yield c.checker.check()
    assert (yield c.states()) == {"ok": HEALTHY, "bad": STARTING, "closed": STARTING}
    assert (yield c.worker("ok")).last_seen == START
    assert c.checker.startingFor(START + 10) == 10  # as of that round, counted to now
    yield c.round(START_TIMEOUT - 1)
    assert (yield c.states()) == {"ok": HEALTHY, "bad": STARTING, "closed": STARTING}
    yield c.round(1)
    assert (yield c.states()) == {"ok": HEALTHY, "bad": DEAD, "closed": DEAD}
    assert (ok.hits, bad.hits) == (2, 3)  # healthy: once per interval; starting: every round
    yield c.round(1)
    assert c.checker.startingFor(c.clock.seconds()) == 0


@pytest_twisted.inlineCallbacks
def test_healthy_unhealthy_healthy_then_dead(serve, checked):
    url, endpoint = serve()
    c = checked(failures=3)
    yield c.add("w", url)
    yield c.checker.check()
    assert (yield c.worker("w")).state == HEALTHY
    endpoint.code = 503
    for _ in range(2):
        yield c.round()
    assert (yield c.worker("w")).state == HEALTHY  # two failures are not three
    yield c.round()
    assert (yield c.worker("w")).state == UNHEALTHY
    endpoint.code = 204
    yield c.round()
    assert (yield c.worker("w")).state == HEALTHY
    assert (yield c.worker("w")).last_seen == c.clock.seconds()
    endpoint.code = 500
    for _ in range(2):
        yield c.round()
    assert (yield c.worker("w")).state == HEALTHY  # the pass reset the count
    yield c.round()
    unhealthy_at = c.clock.seconds()
    assert (yield c.worker("w")).state == UNHEALTHY
    while c.clock.seconds() + INTERVAL < unhealthy_at + UNHEALTHY_TIMEOUT:
        yield c.round()
        assert (yield c.worker("w")).state == UNHEALTHY
    yield c.round()
    assert (yield c.worker("w")).state == DEAD
    hits = endpoint.hits
    yield c.round()
    assert endpoint.hits == hits  # a dead local worker is not checked: the scaler replaces it


@pytest_twisted.inlineCallbacks
def test_new_and_starting_workers_are_checked_every_round_others_each_interval(serve, checked):
    healthy_url, healthy = serve()
    starting_url, starting = serve()
    starting.code = 500
    c = checked()
    assert c.checker.pollInterval == 1.0
    yield c.add("healthy", healthy_url)
    yield c.checker.check()
    yield c.add("starting", starting_url)
    yield c.round(1)  # new: checked at once; healthy: not due
    assert (healthy.hits, starting.hits) == (1, 1)
    for _ in range(3):
        yield c.round(1)
    assert (healthy.hits, starting.hits) == (1, 4)
    yield c.round(1)  # five seconds since the healthy one's check
    assert (healthy.hits, starting.hits) == (2, 5)


@pytest_twisted.inlineCallbacks
def test_a_round_reads_the_starting_workers_and_the_fleet_once_per_interval(serve, checked):
    url, _ = serve()
    c = checked()
    yield c.add("w", url)
    reads = spy(c.registry, "listWorkers")
    yield c.checker.check()
    for _ in range(10):
        yield c.round(1)
    whole, starting = {"sessions": False, "state": None}, {"sessions": False, "state": STARTING}
    assert reads == [whole] + [starting] * 4 + [whole] + [starting] * 4 + [whole]


@pytest_twisted.inlineCallbacks
def test_a_check_reads_no_session_list_and_a_pass_no_record(serve, checked):
    """
    A worker's sessions may be thousands: a check costs the same without
    them. A pass is one registry call; a failure reads the worker first.
    """
    url, endpoint = serve()
    c = checked(failures=1)
    yield c.add("w", url)
    got, moved = spy(c.registry, "getWorker"), spy(c.registry, "setWorkerState")
    yield c.checker.check()
    assert got == [] and [kw["sessions"] for kw in moved] == [False]
    endpoint.code = 500
    yield c.round()
    assert got == [{"sessions": False}] and len(moved) == 2 and not moved[1]["sessions"]
    assert (yield c.worker("w")).state == UNHEALTHY


@pytest_twisted.inlineCallbacks
def test_a_whole_fleet_due_at_once_is_checked_a_bounded_number_at_a_time(hosts, checked):
    c = checked()
    fleet = HealthEndpoint()  # every worker's, answering when the test says
    fleet.hang = True
    for i in range(MAX_CHECKS + 30):
        url, _ = hosts.serve(f"w{i:03}.test", fleet)
        yield c.add(f"w{i:03}", url)
    done = c.checker.check()
    assert fleet.hits == MAX_CHECKS
    fleet.answerHeld(30)
    c.http.flush()
    assert fleet.hits == MAX_CHECKS + 30  # each answer let one more start
    fleet.answerHeld(MAX_CHECKS)
    c.http.flush()
    assert fired(done)
    states = {w.state for w in (yield c.registry.listWorkers(sessions=False))}
    assert states == {HEALTHY}


@pytest_twisted.inlineCallbacks
def test_a_check_that_hangs_fails_after_the_timeout(serve, checked):
    url, endpoint = serve()
    endpoint.hang = True
    c = checked(failures=1)
    yield c.add("w", url)
    yield c.set("w", HEALTHY)
    done = c.checker.check()
    assert endpoint.hits == 1
    c.clock.advance(TIMEOUT - 0.1)
    assert not fired(done)
    c.clock.advance(0.1)
    assert fired(done)
    assert (yield c.worker("w")).state == UNHEALTHY
    assert c.checker.outcomes["timeout"] == 1


@pytest_twisted.inlineCallbacks
def test_dead_static_workers_come_back_on_a_pass(serve, checked):
    url, _ = serve()
    c = checked()
    yield c.add("127.0.0.1:1", url, provider="static")
    yield c.set("127.0.0.1:1", DEAD)
    yield c.checker.check()
    assert (yield c.worker("127.0.0.1:1")).state == HEALTHY


@pytest_twisted.inlineCallbacks
def test_dead_registered_workers_stay_dead_until_registered_again(serve, checked):
    """Only static workers come back on a pass (the lifecycle table)."""
    url, endpoint = serve()
    c = checked()
    yield c.add("127.0.0.1:2", url, provider="registered")
    yield c.set("127.0.0.1:2", DEAD)
    yield c.checker.check()
    yield c.round()
    assert endpoint.hits == 0
    assert (yield c.worker("127.0.0.1:2")).state == DEAD


@pytest_twisted.inlineCallbacks
def test_a_worker_that_died_during_its_check_stays_dead(serve, checked):
    url, endpoint = serve()
    c = checked()
    yield c.add("w", url)
    endpoint.onRequest = lambda: c.set("w", DEAD)  # e.g. the provider saw it exit
    yield c.checker.check()
    assert endpoint.hits == 1
    assert (yield c.worker("w")).state == DEAD


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize("passing", [True, False])
def test_a_worker_that_died_after_its_record_was_read_stays_dead(serve, checked, passing):
    """
    The move is guarded in the registry: no window between reading and
    setting, whether the decision rests on the round's listing (a pass) or
    on a fresh read (a failure: how long the worker was in its state counts).
    """
    url, endpoint = serve()
    endpoint.code = 200 if passing else 500
    c = checked(failures=1)
    yield c.add("w", url)
    if not passing:
        yield c.set("w", HEALTHY)
    name = "listWorkers" if passing else "getWorker"
    read = getattr(c.registry, name)

    def readThenDie(*args, **kwargs):  # e.g. a Lambda's "terminated" right then
        return read(*args, **kwargs).addCallback(
            lambda found: c.set("w", DEAD).addCallback(lambda _: found))

    setattr(c.registry, name, readThenDie)
    yield c.checker.check()
    delattr(c.registry, name)
    worker = yield c.worker("w")
    assert worker.state == DEAD
    assert (worker.last_seen is None) == passing  # a pass never set it


@pytest_twisted.inlineCallbacks
def test_a_worker_removed_during_its_check_is_forgotten(serve, checked):
    url, endpoint = serve()
    c = checked()
    yield c.add("w", url)
    endpoint.onRequest = lambda: c.registry.removeWorker("w")
    yield c.checker.check()
    assert (yield c.registry.listWorkers()) == []
    yield c.round()
    assert endpoint.hits == 1


@pytest_twisted.inlineCallbacks
def test_each_check_is_counted_by_its_outcome(serve, checked):
    passing_url, _ = serve()
    failing_url, failing = serve()
    failing.code = 500
    hanging_url, hanging = serve()
    hanging.hang = True
    c = checked()
    for worker, url in (("passing", passing_url), ("failing", failing_url),
                        ("closed", NOBODY), ("hanging", hanging_url)):
        yield c.add(worker, url)
    done = c.checker.check()
    assert sum(c.checker.outcomes.values()) == 3  # all but the hanging one, at once
    c.clock.advance(TIMEOUT)
    assert fired(done)
    assert c.checker.outcomes == {"passed": 1, "failed": 1, "unreachable": 1, "timeout": 1}


@pytest_twisted.inlineCallbacks
def test_checks_reuse_one_kept_alive_connection_that_a_dead_worker_breaks(serveOnLoopback):
    """The checker's own HTTP client, over real sockets: the connection is the point."""
    url, endpoint = serveOnLoopback()
    c = Checked(http=None, failures=1)
    try:
        yield c.add("w", url)
        logged = []
        globalLogPublisher.addObserver(logged.append)
        try:
            for _ in range(4):
                yield c.round()
        finally:
            globalLogPublisher.removeObserver(logged.append)
        assert (endpoint.hits, endpoint.host.accepted) == (4, 1)
        # The pool's connection factory (Twisted's, made quiet) says nothing.
        assert not [e for e in logged if "factory" in e.get("log_format", "")]
        endpoint.host.die()
        yield c.round()
        assert (yield c.worker("w")).state == UNHEALTHY  # the kept connection did not hide it
        assert c.checker.outcomes["unreachable"] == 1
    finally:
        yield c.checker.close()

