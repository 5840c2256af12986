"""
Workers as child processes of this wslb instance, one port each.

A worker gets wslb's environment without its ``WSLB_*`` variables (the
session secret and the admin token among them), and dies with wslb even
when wslb is killed with SIGKILL and cannot stop it: each child is started
through a small exec wrapper (L{DIE_WITH_PARENT}) that asks Linux for
SIGKILL when its parent goes (``PR_SET_PDEATHSIG``), then execs the command.
"""

import itertools
import os
import socket
import sys

from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    execute,
    maybeDeferred,
    succeed,
)
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from zope.interface import implementer

from wslb.pool._interfaces import IProvider, LaunchedWorker

# Linux sends a signal to a process when the thread that forked it exits
# (PR_SET_PDEATHSIG, prctl(2)). reactor.spawnProcess forks from the reactor's
# thread, which lives as long as wslb. argv: [1] wslb's pid, [2:] the
# command. A parent gone before prctl took effect is seen by getppid.
DIE_WITH_PARENT = """
import ctypes, os, signal, sys
prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
if prctl is not None:
    if prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # 1: PR_SET_PDEATHSIG
        sys.exit("wslb worker wrapper: prctl failed: " + os.strerror(ctypes.get_errno()))
    if os.getppid() != int(sys.argv[1]):
        sys.exit(0)
os.execvp(sys.argv[2], sys.argv[2:])
"""

OUTPUT_TAIL = 4096  # bytes of a child's output kept for the log line when it dies
STOP_GRACE = 2.0  # seconds stopService waits beyond the SIGKILL before giving up


def workerEnvironment(environ):
    """``environ`` without wslb's own variables: a worker needs none of its secrets."""
    return {name: value for name, value in environ.items() if not name.startswith("WSLB_")}


def portBusy(port):
    """
    True when something listens on 127.0.0.1:C{port} already. SO_REUSEADDR,
    as the worker's own listener would set, so that TIME_WAIT is no obstacle.
    """
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class _WorkerProcess(ProcessProtocol):
    """One child: drains its output (a full pipe would block it), keeps the tail."""

    def __init__(self, worker, port, ended):
        self.worker = worker  # its LaunchedWorker
        self.port = port
        self.stopping = False
        self.output = b""
        self._ended = ended
        self._killer = None
        self._waiters = []

    def connectionMade(self):
        self.transport.closeStdin()

    def outReceived(self, data):
        self.output = (self.output + data)[-OUTPUT_TAIL:]

    errReceived = outReceived

    def stop(self, clock, kill_after):
        """SIGTERM now, SIGKILL after C{kill_after} seconds if still alive."""
        self.stopping = True
        self._signal("TERM")
        self._killer = clock.callLater(kill_after, self._signal, "KILL")

    def _signal(self, name):
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass

    def whenEnded(self):
        waiter = Deferred()
        self._waiters.append(waiter)
        return waiter

    def processEnded(self, reason):
        if self._killer is not None and self._killer.active():
            self._killer.cancel()
        self._ended(self, reason)
        for waiter in self._waiters:
            waiter.callback(None)


@implementer(IProvider)
class LocalProvider(Service):
    """
    Spawns C{command} (C{"{python}"} and C{"{port}"} substituted) once per
    worker on a free port of the inclusive range C{ports}; worker id
    C{local-<port>}, url C{ws://<host>:<port>}. Stopping the service stops
    every child: they must not outlive wslb (nor do they when it is killed).
    """

    name = "local"
    managed = True
    log = Logger()

    def __init__(self, reactor, command, host, ports, environ=None, kill_after=5.0):
        self._reactor = reactor
        self._command = tuple(command)
        self._host = host
        self._ports = range(ports[0], ports[1] + 1)
        self._environ = environ  # None: ours; WSLB_* is never passed on
        self._killAfter = kill_after
        self._processes = {}  # worker id -> _WorkerProcess, running or stopping
        self._deathListeners = []

    def launch(self, n):
        return execute(self._launch, n)

    def _launch(self, n):
        launched = [self._spawn(port) for port in itertools.islice(self._freePorts(), n)]
        if len(launched) < n:
            self.log.warn(
                "local provider: only {launched} of {wanted} workers launched, "
                "no free port left in {first}-{last}",
                launched=len(launched), wanted=n,
                first=self._ports.start, last=self._ports.stop - 1,
            )
        return launched

    def _freePorts(self):
        taken = {process.port for process in self._processes.values()}
        return (port for port in self._ports if port not in taken and not portBusy(port))

    def _spawn(self, port):
        args = [
            arg.replace("{python}", sys.executable).replace("{port}", str(port))
            for arg in self._command
        ]
        worker = LaunchedWorker(f"local-{port}", f"ws://{self._host}:{port}")
        process = _WorkerProcess(worker, port, self._processEnded)
        wrapped = [sys.executable, "-c", DIE_WITH_PARENT, str(os.getpid()), *args]
        environ = workerEnvironment(os.environ if self._environ is None else self._environ)
        self._reactor.spawnProcess(process, sys.executable, wrapped, env=environ)
        self._processes[worker.id] = process
        return worker

    def terminate(self, worker_ids):
        """Fires with the ids it started stopping (unknown ones are ignored)."""
        stopped = []
        for worker_id in worker_ids:
            process = self._processes.get(worker_id)
            if process is not None and not process.stopping:
                process.stop(self._reactor, self._killAfter)
                stopped.append(worker_id)
        return succeed(stopped)

    def list(self):
        """The children running and not asked to stop: a stopping one is no longer ours to adopt."""
        return succeed([
            process.worker for process in self._processes.values() if not process.stopping
        ])

    def addDeathListener(self, listener):
        self._deathListeners.append(listener)

    def _processEnded(self, process, reason):
        del self._processes[process.worker.id]
        if process.stopping:
            return
        self.log.warn(
            "worker {worker} exited unexpectedly ({reason}); its last output: {output}",
            worker=process.worker.id, reason=reason.getErrorMessage(),
            output=process.output.decode("utf-8", "replace"),
        )
        for listener in self._deathListeners:
            maybeDeferred(listener, process.worker.id).addErrback(
                lambda failure: self.log.failure(
                    "death listener failed for {worker}", failure, worker=process.worker.id))

    def stopService(self):
        """Stop every child; fires when all are gone, or after a bound past the SIGKILL."""
        super().stopService()
        processes = list(self._processes.values())
        self.terminate([process.worker.id for process in processes])
        gone = DeferredList([process.whenEnded() for process in processes])
        gone.addTimeout(self._killAfter + STOP_GRACE, self._reactor)
        gone.addErrback(lambda failure: self.log.error(
            "local workers still running after SIGKILL: {workers}",
            workers=sorted(self._processes),
        ))
        return gone
