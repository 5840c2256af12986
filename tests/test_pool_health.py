"""
Health checks over real HTTP on 127.0.0.1 (the global reactor does the I/O)
while a task.Clock drives the policy: intervals, timeouts, state ages.
"""

import pytest
import pytest_twisted
from conftest import free_port
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from wslb.pool.health import HealthChecker
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


@pytest.fixture
def serve():
    """serve() -> (ws:// url, HealthEndpoint) of a real HTTP server on loopback."""
    ports = []

    def start():
        endpoint = HealthEndpoint()
        root = Resource()
        root.putChild(b"health", endpoint)
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        ports.append(port)
        return f"ws://127.0.0.1:{port.getHost().port}", endpoint

    yield start
    for port in ports:
        port.stopListening()


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
def test_starting_workers_pass_or_die_after_start_timeout(serve):
    ok_url, ok = serve()
    bad_url, bad = serve()
    bad.code = 500
    c = Checked()
    yield c.add("ok", ok_url)
    yield c.add("bad", bad_url)
    yield c.add("closed", f"ws://127.0.0.1:{free_port()}")
    yield c.checker.check()
    assert (yield c.states()) == {"ok": HEALTHY, "bad": STARTING, "closed": STARTING}
    assert (yield c.worker("ok")).last_seen == START
    yield c.round(START_TIMEOUT - 1)
    assert (yield c.states()) == {"ok": HEALTHY, "bad": STARTING, "closed": STARTING}
    yield c.round(1)
    assert (yield c.states()) == {"ok": HEALTHY, "bad": DEAD, "closed": DEAD}
    assert (ok.hits, bad.hits) == (2, 3)  # healthy: once per interval; starting: every round


@pytest_twisted.inlineCallbacks
def test_healthy_unhealthy_healthy_then_dead(serve):
    url, endpoint = serve()
    c = Checked(failures=3)
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
def test_new_and_starting_workers_are_checked_every_round_others_each_interval(serve):
    healthy_url, healthy = serve()
    starting_url, starting = serve()
    starting.code = 500
    c = Checked()
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
def test_a_check_that_hangs_fails_after_the_timeout(serve):
    url, endpoint = serve()
    endpoint.hang = True
    c = Checked(failures=1)
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
def test_dead_static_workers_come_back_on_a_pass(serve):
    url, _ = serve()
    c = Checked()
    yield c.add("127.0.0.1:1", url, provider="static")
    yield c.set("127.0.0.1:1", DEAD)
    yield c.checker.check()
    assert (yield c.worker("127.0.0.1:1")).state == HEALTHY


@pytest_twisted.inlineCallbacks
def test_dead_registered_workers_stay_dead_until_registered_again(serve):
    """Only static workers come back on a pass (the lifecycle table)."""
    url, endpoint = serve()
    c = Checked()
    yield c.add("127.0.0.1:2", url, provider="registered")
    yield c.set("127.0.0.1:2", DEAD)
    yield c.checker.check()
    yield c.round()
    assert endpoint.hits == 0
    assert (yield c.worker("127.0.0.1:2")).state == DEAD


@pytest_twisted.inlineCallbacks
def test_a_worker_that_died_during_its_check_stays_dead(serve):
    url, endpoint = serve()
    c = Checked()
    yield c.add("w", url)
    endpoint.onRequest = lambda: c.set("w", DEAD)  # e.g. the provider saw it exit
    yield c.checker.check()
    assert endpoint.hits == 1
    assert (yield c.worker("w")).state == DEAD


@pytest_twisted.inlineCallbacks
def test_a_worker_that_died_after_its_record_was_read_stays_dead(serve):
    """The move is guarded in the registry: no window between reading and setting."""
    url, _ = serve()
    c = Checked()
    yield c.add("w", url)
    read = c.registry.getWorker

    def readThenDie(worker_id):
        d = read(worker_id)
        return d.addCallback(lambda worker: c.set(worker_id, DEAD).addCallback(lambda _: worker))

    c.registry.getWorker = readThenDie  # e.g. a Lambda's "terminated" right then
    yield c.checker.check()
    del c.registry.getWorker
    worker = yield c.worker("w")
    assert (worker.state, worker.last_seen) == (DEAD, None)


@pytest_twisted.inlineCallbacks
def test_a_worker_removed_during_its_check_is_forgotten(serve):
    url, endpoint = serve()
    c = Checked()
    yield c.add("w", url)
    endpoint.onRequest = lambda: c.registry.removeWorker("w")
    yield c.checker.check()
    assert (yield c.registry.listWorkers()) == []
    yield c.round()
    assert endpoint.hits == 1
