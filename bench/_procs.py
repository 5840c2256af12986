"""
Child processes of the benchmark, and what /proc says about them.

Every child gets its own process group, so stopping it stops whatever it
started too; L{Children.stopAll} runs from the runner's ``finally``, so a
failure or Ctrl-C leaves nothing behind.
"""

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STOP_WAIT = 5.0
# Before each measurement, wait (at most QUIET_TIMEOUT s) until the whole
# machine uses under QUIET_LIMIT % of one core: on a shared box other users'
# work would otherwise land in one target's numbers.
QUIET_LIMIT = 25.0
QUIET_TIMEOUT = 3.0


def raiseOpenFileLimit():
    """Soft NOFILE up to the hard limit; children inherit it (each proxied user costs 2 fds)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def freePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def waitListening(port, process, timeout=20.0, what="process"):
    """Block until 127.0.0.1:port accepts, or raise (also when ``process`` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout} s")


def cpuTicks(pid):
    """utime + stime of a process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)


def rssKiB(pid):
    """VmRSS of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def busyTicks():
    """Clock ticks all CPUs spent not idle since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return sum(values) - values[3] - values[4]  # minus idle and iowait


def waitQuiet(window=0.5):
    """Wait (bounded) for a nearly idle machine; returns its last busy share (% of one core)."""
    deadline = time.monotonic() + QUIET_TIMEOUT
    while True:
        t0, busy0 = time.monotonic(), busyTicks()
        time.sleep(window)
        share = 100.0 * (busyTicks() - busy0) / CLOCK_TICKS / (time.monotonic() - t0)
        if share <= QUIET_LIMIT or time.monotonic() >= deadline:
            return share


class CpuMeter:
    """
    CPU share (percent of one core) of some processes between start() and
    stop(), and "other": everything else on the machine (other users of a
    shared box skew the numbers; this shows when they did).
    """

    def __init__(self, groups):
        self._groups = groups  # name -> list of pids

    def _sample(self):
        ticks = {name: sum(cpuTicks(pid) for pid in pids) for name, pids in self._groups.items()}
        ticks["other"] = busyTicks() - sum(ticks.values())
        return time.monotonic(), ticks

    def start(self):
        self._first = self._sample()

    def stop(self):
        t0, ticks0 = self._first
        t1, ticks1 = self._sample()
        wall = t1 - t0
        # Per-process and machine counters are read a moment apart: clamp at 0.
        return {
            name: max(0.0, round(100.0 * (ticks1[name] - ticks0[name]) / CLOCK_TICKS / wall, 1))
            for name in ticks0
        }


class Children:
    """The processes this run started, each in its own process group."""

    def __init__(self):
        self._processes = []

    def start(self, args, *, log=None, **popen):
        """Popen ``args`` in a new session; output to ``log`` (a path) unless piped."""
        if log is not None:
            popen.setdefault("stdout", open(log, "ab"))
            popen.setdefault("stderr", subprocess.STDOUT)
        process = subprocess.Popen(args, start_new_session=True, **popen)
        if log is not None:
            popen["stdout"].close()  # the child has its own copy
        self._processes.append(process)
        return process

    def stop(self, process):
        """SIGTERM the process group, SIGKILL it after STOP_WAIT."""
        if process in self._processes:
            self._processes.remove(process)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                process.wait(STOP_WAIT)
                break
            except subprocess.TimeoutExpired:
                continue
        # The group may outlive its leader: make sure nothing is left in it.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    def stopAll(self):
        for process in reversed(list(self._processes)):
            self.stop(process)


def runWithChildren(prefix, work):
    """
    ``work(children, logDir)`` with a fresh temp directory for the logs; every
    child is stopped at the end, also on failure or Ctrl-C, and the logs are
    deleted after a success, named after a failure. Returns the exit status.
    """
    children = Children()
    logDir = Path(tempfile.mkdtemp(prefix=prefix))
    ok = False
    try:
        work(children, logDir)
        ok = True
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        children.stopAll()
        if ok:
            shutil.rmtree(logDir, ignore_errors=True)
        else:
            print(f"logs kept in {logDir}", file=sys.stderr)
    return 0
