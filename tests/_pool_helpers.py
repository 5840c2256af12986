"""Test doubles for the pool tests: a provider and a leader (never a registry)."""

from twisted.internet.defer import succeed
from zope.interface import implementer

from wslb.pool._interfaces import ILeader, IProvider, LaunchedWorker


def resultOf(d):
    """The result of a Deferred that must have fired already (all here is synchronous)."""
    results = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


@implementer(IProvider)
class RecordingProvider:
    """A provider whose workers are just ids; it records what it was asked."""

    name = "local"
    managed = True

    def __init__(self):
        self.running = {}
        self.launches = []  # n of each launch call
        self.terminations = []  # ids of each terminate call
        self._listeners = []
        self._next = 0

    def launch(self, n):
        self.launches.append(n)
        launched = []
        for _ in range(n):
            self._next += 1
            worker = LaunchedWorker(f"w{self._next:02d}", f"ws://127.0.0.1:{9000 + self._next}")
            self.running[worker.id] = worker
            launched.append(worker)
        return succeed(launched)

    def terminate(self, worker_ids):
        self.terminations.append(list(worker_ids))
        for worker_id in worker_ids:
            self.running.pop(worker_id, None)
        return succeed(list(worker_ids))

    def list(self):
        return succeed(list(self.running.values()))

    def addDeathListener(self, listener):
        self._listeners.append(listener)

    def die(self, worker_id):
        del self.running[worker_id]
        for listener in self._listeners:
            listener(worker_id)


@implementer(ILeader)
class SwitchableLeader:
    """Leadership a test can take away between isLeader and checkLeader."""

    fencingToken = 7

    def __init__(self):
        self.leading = True

    def isLeader(self):
        return self.leading

    def checkLeader(self):
        return succeed(self.leading)

    def addLeadershipListener(self, listener):
        pass
