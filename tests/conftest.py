"""
Fixtures shared by the whole suite: real redis-server, free ports, echo
workers, wslb in this process, and the connections a test opened.
"""

import inspect
import shutil
import socket
import subprocess
import sys

import pytest
import pytest_twisted


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A real redis-server on a free loopback port, killable and restartable."""

    def __init__(self, tmp_path, *options):
        self.port = free_port()
        self.dir = tmp_path
        self.options = options  # more redis-server options, e.g. ("--requirepass", "...")
        self.process = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (.ci/run installs it)")
        self.process = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir), *self.options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        from _polling import waitForBlocking  # imports the reactor: import late

        waitForBlocking(self._answering, timeout=10, retrying=OSError,
                        what=f"redis-server answering on port {self.port}")

    def _answering(self):
        if self.process.poll() is not None:  # e.g. its port was taken meanwhile
            raise RuntimeError(
                f"redis-server on port {self.port} exited with {self.process.returncode}")
        with socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))  # up (with a password)

    def stop(self):
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def flush(self):
        with socket.create_connection(("127.0.0.1", self.port), 1) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)


def _serving(server):
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One redis-server for the test session; tests flush it themselves."""
    yield from _serving(RedisServer(tmp_path_factory.mktemp("redis")))


@pytest.fixture(scope="module")
def moto_server():
    """moto's server on loopback (every AWS service it mocks), for a module: its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def tls_redis(tmp_path):
    """A TLS-only redis-server with an ACL user; its certificate names 127.0.0.1 only."""
    from _redis_helpers import TLSRedisServer  # imports conftest: import late

    yield from _serving(TLSRedisServer(tmp_path))


@pytest.fixture
def own_redis_server(tmp_path):
    """A redis-server for one test, which it may kill and restart."""
    yield from _serving(RedisServer(tmp_path))


@pytest.fixture
def log_events():
    """Every log event (twisted.logger's global publisher) during the test."""
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest.fixture(autouse=True)
def twisted_log_to_captured_stderr():
    """Show wslb's own log lines (info and up) with a failing test's output."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogPublisher,
        textFileLogObserver,
    )

    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)],
    )
    globalLogPublisher.addObserver(observer)
    yield
    globalLogPublisher.removeObserver(observer)


def _echoWorkers(count):
    from _echo_helpers import EchoWorkerProcess  # imports conftest: import late

    workers = [EchoWorkerProcess() for _ in range(count)]
    try:
        for worker in workers:
            worker.waitHealthy()
        yield workers
    finally:
        for worker in workers:
            worker.kill()


@pytest.fixture
def clients():
    """WebSocket clients (_echo_helpers.RecordingClient) the test opens: dropped after it."""
    from _echo_helpers import closeAll

    opened = []
    yield opened
    closeAll(opened)


@pytest.fixture
def raws():
    """Hand-made WebSocket connections (_raw_ws.RawClient) the test opens: dropped after it."""
    opened = []
    yield opened
    for raw in opened:
        raw.transport.abortConnection()


@pytest.fixture
def echo_workers(request):
    """Real echo worker processes: two, or as many as ``@pytest.mark.workers(n)`` says."""
    marker = request.node.get_closest_marker("workers")
    yield from _echoWorkers(marker.args[0] if marker else 2)


@pytest.fixture
def echo_worker():
    """One real echo worker process."""
    for workers in _echoWorkers(1):
        yield workers[0]


@pytest_twisted.async_yield_fixture()
async def start_wslb():
    """
    ``await start_wslb(workers, *overrides)``: wslb in this process over
    ``workers`` as its static pool (_wslb_helpers.staticWslb), once ``healthy``
    of them (all, unless told) passed their health check. Every instance
    started is stopped after the test.
    """
    from _wslb_helpers import staticWslb

    started = []

    async def start(workers=(), *overrides, healthy=None):
        wslb = staticWslb(workers, *overrides)
        started.append(wslb)
        await wslb.start()
        healthy = len(workers) if healthy is None else healthy
        if healthy:
            await wslb.waitHealthy(healthy)
        return wslb

    yield start
    for wslb in reversed(started):
        await wslb.stop()


@pytest_twisted.async_yield_fixture()
async def stop_after():
    """
    ``stop_after(thing)`` returns ``thing``, whose ``stop()`` (which may
    return a Deferred or a coroutine) is awaited after the test, the last
    given first.
    """
    things = []

    def add(thing):
        things.append(thing)
        return thing

    yield add
    for thing in reversed(things):
        stopped = thing.stop()
        if inspect.isawaitable(stopped):
            await stopped


@pytest.fixture
def guard(monkeypatch):
    """Every connection of the test goes to loopback (moto invents 10.x addresses)."""
    from _ec2_helpers import LoopbackOnly

    guard = LoopbackOnly(monkeypatch)
    yield guard
    assert guard.refused == [], "a connection left loopback"
