"""LocalProvider with real child processes: tiny HTTP servers on loopback ports."""

import os
import socket
import sys

import pytest
import pytest_twisted
import treq
from _polling import waitFor, waitForBlocking
from _twistd_helpers import TwistdWslb, alive
from conftest import free_port
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from zope.interface.verify import verifyObject

from wslb.pool._interfaces import IProvider, LaunchedWorker
from wslb.pool.local import LocalProvider

# Floods stdout and stderr first (an undrained pipe would block it before it
# listens), then answers GET with 200; "--ignore-term" makes it shrug off SIGTERM.
SERVER = """
import http.server, signal, sys
if "--ignore-term" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
sys.stdout.write("o" * 200000)
sys.stdout.flush()
sys.stderr.write("e" * 200000)
sys.stderr.flush()
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""
COMMAND = ["{python}", "-c", SERVER, "{port}"]
DEADLINE = 10.0  # seconds any wait below may take


def answers(port):
    """Fires with True when GET /health on the port answers 200."""
    d = treq.get(f"http://127.0.0.1:{port}/health", persistent=False, timeout=1)
    d.addCallback(lambda response: response.content().addCallback(
        lambda _: response.code == 200))
    return d.addErrback(lambda _: False)


def pid(provider, worker_id):
    return provider._processes[worker_id].transport.pid


@pytest.fixture
def providers():
    """make(...) -> a LocalProvider whose children are stopped after the test."""
    made = []

    def make(command=COMMAND, ports=None, **kwargs):
        first = free_port()
        provider = LocalProvider(reactor, command, "127.0.0.1", ports or (first, first + 20),
                                 **kwargs)
        provider.startService()
        made.append(provider)
        return provider

    yield make
    for provider in made:
        for process in list(provider._processes.values()):
            process.transport.signalProcess("KILL")


@pytest_twisted.inlineCallbacks
def test_launch_kill_and_stop(providers):
    provider = providers()
    verifyObject(IProvider, provider)
    died = Deferred()
    provider.addDeathListener(died.callback)
    launched = yield provider.launch(2)
    ports = [int(worker.id.removeprefix("local-")) for worker in launched]
    assert [worker.url for worker in launched] == [f"ws://127.0.0.1:{p}" for p in ports]
    assert len(set(ports)) == 2
    for port in ports:
        yield waitFor(lambda port=port: answers(port), timeout=DEADLINE)
    assert sorted((yield provider.list()), key=lambda w: w.id) == sorted(launched, key=lambda w: w.id)

    victim, survivor = launched
    os.kill(pid(provider, victim.id), 9)
    assert (yield died) == victim.id
    assert (yield provider.list()) == [survivor]

    survivor_pid = pid(provider, survivor.id)
    yield provider.stopService()
    assert not alive(survivor_pid)
    assert (yield provider.list()) == []


@pytest_twisted.inlineCallbacks
def test_terminate_escalates_to_sigkill_and_is_no_death(providers):
    provider = providers(command=COMMAND + ["--ignore-term"], kill_after=0.5)
    died = []
    provider.addDeathListener(died.append)
    [worker] = yield provider.launch(1)
    port = int(worker.id.removeprefix("local-"))
    yield waitFor(lambda: answers(port), timeout=DEADLINE)
    process_id = pid(provider, worker.id)
    assert (yield provider.terminate([worker.id, "local-1"])) == [worker.id]
    assert (yield provider.list()) == []  # stopping: not listed any more
    yield deferLater(reactor, 0.3, lambda: None)  # the thing tested: alive until kill_after
    assert alive(process_id)  # SIGTERM ignored, SIGKILL not yet due
    yield waitFor(lambda: not alive(process_id), timeout=DEADLINE)
    yield waitFor(lambda: not provider._processes, timeout=DEADLINE)
    assert died == []


@pytest_twisted.inlineCallbacks
def test_busy_and_used_ports_are_skipped(providers):
    first = free_port()
    # A range of three ports whose middle one something else listens on.
    with socket.socket() as busy:
        while True:
            try:
                busy.bind(("127.0.0.1", first + 1))
                break
            except OSError:
                first = free_port()
        busy.listen()
        provider = providers(ports=(first, first + 2))
        one = yield provider.launch(1)
        more = yield provider.launch(3)  # only one port left
        assert [w.id for w in one + more] == [f"local-{first}", f"local-{first + 2}"]
        assert (yield provider.launch(1)) == []
    yield provider.stopService()


@pytest_twisted.inlineCallbacks
def test_placeholders_and_environment(providers, tmp_path):
    out = tmp_path / "args"
    script = (
        "import os, sys, time; open(sys.argv[2], 'w').write("
        "sys.executable + ' ' + sys.argv[1] + ' ' + os.environ.get('LOCAL_TEST', '-') + ' '"
        " + ','.join(sorted(v for v in os.environ if v.startswith('WSLB_'))) + '.'); "
        "time.sleep(30)"
    )
    provider = providers(
        command=["{python}", "-c", script, "--port={port}", str(out)],
        environ={"LOCAL_TEST": "yes", "WSLB_SESSION_SECRET": "s", "PATH": os.environ["PATH"]},
    )
    [worker] = yield provider.launch(1)
    yield waitFor(lambda: out.exists() and out.read_text().endswith("."), timeout=DEADLINE)
    port = worker.id.removeprefix("local-")
    assert out.read_text().split() == [sys.executable, f"--port={port}", "yes", "."]
    assert isinstance(worker, LaunchedWorker)
    yield provider.stopService()


# -- a real wslb and its workers -------------------------------------------------


def children(pid):
    """The pids whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry))
    return found


def portFree(port):
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.timeout(60)
def test_local_workers_see_no_wslb_variable_and_die_with_a_killed_wslb(tmp_path):
    first = free_port()
    ports = range(first, first + 2)
    wslb = TwistdWslb(
        tmp_path, "pool.provider=local", f'pool.local.ports="{first}-{first + 1}"',
        "pool.min_spare=2", "pool.max_spare=2",
        env={"WSLB_SESSION_SECRET": "s" * 40, "WSLB_ADMIN_TOKEN": "t" * 20},
    ).waitListening()
    workers = []
    try:
        waitForBlocking(lambda: not any(portFree(port) for port in ports), timeout=20,
                        interval=0.1, what=lambda: f"both workers listening:\n{wslb.output()}")
        workers += children(wslb.process.pid)
        assert len(workers) == 2
        for worker in workers:
            with open(f"/proc/{worker}/environ", "rb") as f:
                names = [item.partition(b"=")[0] for item in f.read().split(b"\0")]
            assert b"PATH" in names
            assert [name for name in names if name.startswith(b"WSLB_")] == []
        wslb.process.kill()
        wslb.process.wait()
        waitForBlocking(lambda: all(portFree(port) for port in ports), timeout=5, interval=0.1,
                        what="the workers gone with their wslb")
    finally:
        wslb.stop()
        for worker in workers:  # only when the test failed
            if alive(worker):
                os.kill(worker, 9)
