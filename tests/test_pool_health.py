"""
Health checks over real HTTP on 127.0.0.1 (the global reactor does the I/O)
while a task.Clock drives the policy: intervals, timeouts, state ages.
"""


import pytest
import pytest_twisted
from conftest import free_port
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import Clock, deferLater
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


class HealthEndpoint(Resource):
    """GET /health answering ``code``, or never (``hang``); counts requests."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.code = 200
        self.hits = 0
        self.hang = False
        self.onRequest = lambda: None
        self.arrived = Deferred()  # fires at the first request

    def render_GET(self, request):
        self.hits += 1
        self.onRequest()
        if not self.arrived.called:
            self.arrived.callback(None)
        if self.hang:
            return NOT_DONE_YET
        request.setResponseCode(self.code)
        return b"{}"


class WorkerHost(WrappingFactory):
    """A worker's HTTP side: counts the connections it accepts, and can go away."""

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
def serve():
    """serve() -> (ws:// url, HealthEndpoint) of a real HTTP server on loopback."""
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


@pytest_twisted.async_yield_fixture()
async def checked():
    """checked(failures=3) -> a L{Checked}; their kept-alive connections are closed after."""
    made = []

    def make(failures=3):
        made.append(Checked(failures))
        return made[-1]

    yield make
    for c in made:
        await c.checker.close()


class Checked:
    """A HealthChecker on a Clock with the real MemoryRegistry."""

    def __init__(self, failures=3):
        self.clock = Clock()
        self.clock.advance(START)
        self.registry = MemoryRegistry(self.clock)
        self.checker = HealthChecker(
            self.registry, self.clock, "/health", INTERVAL, TIMEOUT, failures,
            START_TIMEOUT, UNHEALTHY_TIMEOUT,
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
    yield c.add("closed", f"ws://127.0.0.1:{free_port()}")
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


class HeldChecks:
    """A treq-like client whose requests wait until the test answers them."""

    def __init__(self):
        self.waiting = []

    def get(self, url):
        self.waiting.append(Deferred())
        return self.waiting[-1]


class Ok:
    code = 200

    def content(self):
        return succeed(b"{}")


@pytest_twisted.inlineCallbacks
def test_a_whole_fleet_due_at_once_is_checked_a_bounded_number_at_a_time():
    clock, http = Clock(), HeldChecks()
    registry = MemoryRegistry(clock)
    for i in range(MAX_CHECKS + 30):
        yield registry.addWorker(f"w{i:03}", f"ws://127.0.0.1:{10000 + i}", "local", 1, 0)
    checker = HealthChecker(registry, clock, "/health", INTERVAL, TIMEOUT, 3, START_TIMEOUT,
                            UNHEALTHY_TIMEOUT, http=http)
    done = checker.check()
    assert len(http.waiting) == MAX_CHECKS
    for answered in range(30):
        http.waiting[answered].callback(Ok())
    assert len(http.waiting) == MAX_CHECKS + 30  # each answer let one more start
    for d in http.waiting[30:]:
        d.callback(Ok())
    yield done
    states = {w.state for w in (yield registry.listWorkers(sessions=False))}
    assert states == {HEALTHY}


@pytest_twisted.inlineCallbacks
def test_a_check_that_hangs_fails_after_the_timeout(serve, checked):
    url, endpoint = serve()
    endpoint.hang = True
    c = checked(failures=1)
    yield c.add("w", url)
    yield c.set("w", HEALTHY)
    done = []
    c.checker.check().addCallback(done.append)
    yield endpoint.arrived
    assert not done
    c.clock.advance(TIMEOUT - 0.1)
    assert not done
    c.clock.advance(0.1)
    while not done:  # the cancelled request unwinds through the reactor
        yield deferLater(reactor, 0.01, lambda: None)
    assert (yield c.worker("w")).state == UNHEALTHY


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
                        ("closed", f"ws://127.0.0.1:{free_port()}"), ("hanging", hanging_url)):
        yield c.add(worker, url)
    done = c.checker.check()
    yield hanging.arrived
    while sum(c.checker.outcomes.values()) < 3:  # the others are answered (or refused)
        yield deferLater(reactor, 0.01, lambda: None)
    c.clock.advance(TIMEOUT)
    yield done
    assert c.checker.outcomes == {"passed": 1, "failed": 1, "unreachable": 1, "timeout": 1}


@pytest_twisted.inlineCallbacks
def test_checks_reuse_one_kept_alive_connection_that_a_dead_worker_breaks(serve, checked):
    url, endpoint = serve()
    c = checked(failures=1)
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

