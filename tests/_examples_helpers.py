"""Running the files under examples/ as an operator would, and checking what they leave behind."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from _polling import waitForBlocking
from _twistd_helpers import TWISTD
from conftest import free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CLUSTER_SCRIPT = EXAMPLES / "redis-cluster-of-3.sh"


def running(pid):
    """True while ``pid`` is a live process (a zombie has ended: it only awaits its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def processGroup(pgid):
    """Pids of the live processes in process group ``pgid``."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


class ClusterScript:
    """
    examples/redis-cluster-of-3.sh on free ports against ``redis`` (three
    instances and two workers unless told otherwise), in a process group of
    its own as a terminal would run it, logs in ``tmp_path``.
    """

    def __init__(self, tmp_path, redis, *args, instances=3, workers=2):
        self.listenPorts = [free_port() for _ in range(instances)]
        self.adminPorts = [free_port() for _ in range(instances)]
        self.workerPorts = [free_port() for _ in range(workers)]
        self.output = tmp_path / "cluster-script.out"
        env = {
            **os.environ,
            "WSLB_REDIS_URL": redis.url,
            "INSTANCE_PORTS": " ".join(f"{a}:{b}" for a, b in zip(self.listenPorts, self.adminPorts)),
            "WORKER_PORTS": " ".join(map(str, self.workerPorts)),
            "LOG_DIR": str(tmp_path / "cluster-logs"),
            "TWISTD": TWISTD,
            "PYTHON": sys.executable,
        }
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(
                [str(CLUSTER_SCRIPT), *args], env=env, cwd=tmp_path,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def url(self, n, path="/"):
        """The listener of instance ``n`` (1, 2 or 3)."""
        return f"ws://127.0.0.1:{self.listenPorts[n - 1]}{path}"

    def admin(self, n):
        return f"http://127.0.0.1:{self.adminPorts[n - 1]}"

    def text(self):
        return self.output.read_text()

    def waitReady(self, timeout=40):
        """Block until the script says every instance is healthy."""
        waitForBlocking(self._ready, timeout=timeout, interval=0.1,
                        what=lambda: f"ready:\n{self.text()}")
        return self

    def _ready(self):
        if self.process.poll() is not None and "ready:" not in self.text():
            raise RuntimeError(f"script exited {self.process.returncode}:\n{self.text()}")
        return "ready:" in self.text()

    def processes(self):
        """Every live process the script started, itself included."""
        return processGroup(self.process.pid)

    def interrupt(self, timeout=40):
        """Ctrl-C, as a terminal sends it (to the whole group); fires with the exit status."""
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout)

    def kill(self):
        """Last resort after a failed test: nothing of the group may outlive it."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
