"""Run wslb as a real ``twistd -n wslb`` process, as operators do."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from _polling import waitForBlocking
from conftest import free_port

TWISTD = str(Path(sys.executable).with_name("twistd"))


def rss(pid):
    """The resident memory of process ``pid``, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def alive(pid):
    """True while process ``pid`` exists (a zombie included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class TwistdWslb:
    """
    ``twistd -n wslb`` on free loopback ports, with extra ``--set`` overrides
    (and options of twistd's own in ``twistdArgs``). It logs to a file, or
    without ``logFile`` to its stdout, read once it has stopped.
    """

    def __init__(self, tmp_path, *overrides, config=None, env=None, twistdArgs=(),
                 logFile=True):
        self.port = free_port()
        self.adminPort = free_port()
        self.admin = f"http://127.0.0.1:{self.adminPort}"
        self.log = tmp_path / f"twistd-{self.port}.log"
        args = [TWISTD, "-n", "--pidfile=", *(["-l", str(self.log)] if logFile else []),
                *twistdArgs, "wslb"]
        if config is not None:
            args += ["--config", str(config)]
        for override in (
            f"listen.endpoint=tcp:{self.port}:interface=127.0.0.1",
            f"admin.endpoint=tcp:{self.adminPort}:interface=127.0.0.1",
            *overrides,
        ):
            args += ["--set", override]
        self.process = subprocess.Popen(
            args, cwd=tmp_path, env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )

    def url(self, path="/"):
        return f"ws://127.0.0.1:{self.port}{path}"

    def waitListening(self, timeout=15):
        """Block until the listener accepts connections (before the test's reactor work)."""
        waitForBlocking(self._listening, timeout=timeout, retrying=OSError,
                        what=lambda: f"twistd listening:\n{self.output()}")
        return self

    def _listening(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"twistd exited {self.process.returncode}:\n{self.output()}")
        socket.create_connection(("127.0.0.1", self.port), 0.2).close()
        return True

    def output(self):
        text = self.log.read_text() if self.log.exists() else ""
        return text[-5000:]

    def signal(self, signum):
        self.process.send_signal(signum)

    def stop(self, timeout=20):
        """SIGTERM and wait; returns the exit status (kills after ``timeout``)."""
        if self.process.stdout.closed:
            return self.process.returncode
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process_output = self.process.stdout.read().decode(errors="replace")
        self.process.stdout.close()
        return self.process.returncode
