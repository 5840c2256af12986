"""
Metrics.refresh, the registry reads behind each /metrics scrape: the
sessions and workers gauges are counts, and a scrape reads no session and
no worker.
"""

import re
import uuid
from pathlib import Path

import pytest
import pytest_twisted
from prometheus_client import generate_latest
from registry_contract import addHealthy, request
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import Clock
from twisted.protocols.basic import LineReceiver

import wslb
from wslb.metrics import LIMITS, Metrics
from wslb.registry.memory import MemoryRegistry
from wslb.registry.redis import RedisRegistry

SESSIONS = 40


class CountingRegistry:
    """A real registry, passed through; it counts the calls made to it."""

    def __init__(self, registry):
        self._registry = registry
        self.calls = []

    def __getattr__(self, name):
        method = getattr(self._registry, name)

        def counted(*args, **kwargs):
            self.calls.append(name)
            return method(*args, **kwargs)

        return counted


@defer.inlineCallbacks
def withSessions(registry, n, now=0):
    yield addHealthy(registry, "w1", capacity=n, now=now)
    for i in range(n):
        yield registry.assign(request(f"k{i}"), now)


def gauge(metrics, name):
    text = generate_latest(metrics.registry).decode()
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


@pytest.mark.timeout(10)
@pytest_twisted.inlineCallbacks
def test_aScrapeCountsTheSessionsWithoutListingThem():
    clock = Clock()
    registry = CountingRegistry(MemoryRegistry(clock))
    yield withSessions(registry, SESSIONS)
    metrics = Metrics()
    for _ in range(3):
        registry.calls.clear()
        yield metrics.refresh(registry, clock)
        assert sorted(registry.calls) == [
            "countSessions", "countSessions", "countWorkers", "queueInfo", "workerTotals"]
        assert gauge(metrics, "wslb_sessions") == SESSIONS
        assert gauge(metrics, "wslb_sessions_in_grace") == 0


@pytest.mark.timeout(10)
@pytest_twisted.inlineCallbacks
def test_aScrapeReportsTheQueueAndHowLongItsFirstUserHasWaited():
    clock = Clock()
    registry = MemoryRegistry(clock)
    metrics = Metrics()
    yield metrics.refresh(registry, clock)
    assert (gauge(metrics, "wslb_queue_length"), gauge(metrics, "wslb_queue_oldest_wait_seconds")) == (0, 0)
    clock.advance(10)
    yield registry.assign(request("first"), clock.seconds())  # no worker: queued
    clock.advance(5)
    yield registry.assign(request("second"), clock.seconds())
    clock.advance(20)
    yield metrics.refresh(registry, clock)
    assert (gauge(metrics, "wslb_queue_length"), gauge(metrics, "wslb_queue_oldest_wait_seconds")) == (2, 25)


class Monitor(LineReceiver):
    """A MONITOR connection: every command the server runs, one line each."""

    MAX_LENGTH = 1 << 20  # an EVAL's line carries the whole script

    def __init__(self):
        self.lines = []
        self._waiting = {}  # text -> Deferred fired when a line holds it

    def connectionMade(self):
        self.sendLine(b"MONITOR")

    def lineReceived(self, line):
        line = line.decode("utf-8", "replace")
        self.lines.append(line)
        for text in [t for t in self._waiting if t in line]:
            self._waiting.pop(text).callback(None)

    def seen(self, text):
        """Fire once a line holding ``text`` came (bounded)."""
        if any(text in line for line in self.lines):
            return defer.succeed(None)
        d = self._waiting[text] = defer.Deferred()
        return d.addTimeout(5, reactor)


@defer.inlineCallbacks
def between(monitor, registry, name, call, *args):
    """The lines MONITOR showed while ``call(*args)`` ran, told apart by ECHO markers."""
    before, after = (f"{name} {when} {uuid.uuid4().hex}" for when in ("before", "after"))
    yield registry.connection.execute("ECHO", before)
    yield call(*args)
    yield registry.connection.execute("ECHO", after)
    yield monitor.seen(after)
    lines = monitor.lines
    start = next(i for i, line in enumerate(lines) if before in line)
    end = next(i for i, line in enumerate(lines) if after in line)
    return lines[start + 1:end]


@pytest.mark.timeout(20)
@pytest_twisted.inlineCallbacks
def test_aScrapeReadsNoSessionFromRedis(redis_server):
    """
    MONITOR shows what each scrape runs: one ZCARD of the sessions (and one
    of those in grace), nothing else of them, and no worker's record.
    """
    redis_server.flush()
    namespace = uuid.uuid4().hex[:8]
    registry = RedisRegistry(reactor, redis_server.url, namespace)
    registry.startService()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", redis_server.port)
    monitor = yield endpoint.connect(protocol.Factory.forProtocol(Monitor))
    try:
        yield monitor.seen("+OK")
        yield withSessions(registry, SESSIONS, now=1)
        metrics = Metrics()
        prefix = "{" + namespace + "}:"
        for scrape in range(3):
            lines = yield between(monitor, registry, f"scrape {scrape}", metrics.refresh,
                                  registry, reactor)
            run = [line for line in lines if re.search(r"\[\d+ lua\]", line)]
            touchingSessions = [
                line for line in run
                if any(f'"{prefix}{name}' in line for name in ("sessions", "session:", "disconn"))
            ]
            assert sorted(line.split("] ", 1)[1] for line in touchingSessions) == [
                f'"ZCARD" "{prefix}disconnected"', f'"ZCARD" "{prefix}sessions"']
            assert not [line for line in run if f'"{prefix}worker:' in line]
            assert gauge(metrics, "wslb_sessions") == SESSIONS
    finally:
        monitor.transport.loseConnection()
        yield registry.stopService()


def test_everyLimitThatIsHitIsASeriesFromTheStart():
    """The limit names the code counts are those LIMITS names (a new one must join them)."""
    source = Path(wslb.__file__).parent
    named = set()
    for path in source.rglob("*.py"):
        named |= set(re.findall(r'(?:limitHit|limitHits\.labels)\("([a-z_]+)"\)', path.read_text()))
    assert named == set(LIMITS)
    text = generate_latest(Metrics().registry).decode()
    assert {f'wslb_limit_hits_total{{limit="{limit}"}} 0.0' for limit in LIMITS} <= set(
        text.splitlines())
