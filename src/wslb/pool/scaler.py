"""The buffer policy: keep spare workers, launch for the queue, shed surplus (DESIGN §6)."""

import math
from collections import Counter, deque
from dataclasses import dataclass

from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from wslb.registry import DEAD, STARTING, lifecycle
from wslb.registry.lifecycle import INSTANCE_GONE

RECENT_ACTIONS = 50  # kept for the status page


@dataclass(frozen=True)
class ScalerAction:
    """
    One thing the scaler did: C{launch} and C{terminate} (through the
    provider), C{adopt} (a provider's worker the registry did not know) and
    C{lost} (a registry worker the provider no longer has).
    """

    time: float
    action: str
    workers: tuple[str, ...]
    fencing_token: int


class Scaler:
    """
    One L{tick} reconciles the registry with the provider, replaces dead
    workers and applies the policy. Run it on the leader only; it also asks
    C{leader.checkLeader()} right before each launch or terminate.
    """

    def __init__(self, registry, provider, clock, leader, min_spare, max_spare,
                 min_workers, max_workers, capacity, log=None):
        self._registry = registry
        self._provider = provider
        self._clock = clock
        self._leader = leader
        self._minSpare = min_spare
        self._maxSpare = max_spare
        self._minWorkers = min_workers
        self._maxWorkers = max_workers
        self._capacity = capacity
        self._log = log or Logger()
        self.recentActions = deque(maxlen=RECENT_ACTIONS)
        self.actionCounts = Counter()  # action -> workers it concerned, for metrics
        provider.addDeathListener(self._workerDied)

    def _workerDied(self, worker_id):
        # Dead at once, so no user is sent there; the next tick replaces it.
        d = lifecycle.apply(self._registry, worker_id, INSTANCE_GONE, self._clock.seconds(),
                            sessions=False)
        d.addErrback(lambda failure: self._log.failure(
            "could not mark {worker} dead", failure, worker=worker_id))

    @inlineCallbacks
    def tick(self):
        """
        Fires when done. Failing to read the provider or the registry fails
        it; a failed launch or terminate is logged and spares the others.
        The fleet is read once per tick (the registry reads it in pages).
        """
        workers = yield self._registry.listWorkers(sessions=False)
        workers = yield self._reconcile(workers)
        if not self._provider.managed:
            return
        queue = yield self._registry.queueInfo(self._clock.seconds())
        ours = [worker for worker in workers if worker.provider == self._provider.name]
        dead = [worker.id for worker in ours if worker.state == DEAD]
        launch, retiring, surplus = self._plan(workers, ours, queue.demand)
        yield self._attempt(self._removeDead, dead)
        yield self._attempt(self._launch, launch)
        yield self._attempt(self._terminateIdle, retiring + surplus)

    @inlineCallbacks
    def _reconcile(self, workers):
        """
        Adopt the provider's workers the registry lacks. Ones it lost are
        marked dead (and then removed with the other dead ones) when it
        manages its workers; an unmanaged one's are no longer configured and
        removed at once, or health checks would revive them. Fires with
        ``workers`` (the registry's) as these changes left them.
        """
        listed = yield self._provider.list()
        now = self._clock.seconds()
        byId = {worker.id: worker for worker in workers}
        adopted = [worker for worker in listed if worker.id not in byId]
        for worker in (yield self._addWorkers(adopted, now)):
            byId[worker.id] = worker
        self._record("adopt", [worker.id for worker in adopted])
        listed_ids = {worker.id for worker in listed}
        managed = self._provider.managed
        lost = [
            worker.id for worker in workers
            if worker.provider == self._provider.name and worker.id not in listed_ids
            and not (managed and worker.state == DEAD)
        ]
        for worker_id in lost:
            if managed:
                after = yield lifecycle.apply(self._registry, worker_id, INSTANCE_GONE, now,
                                              sessions=False)
            else:
                yield self._registry.removeWorker(worker_id)
                after = None
            byId.pop(worker_id)
            if after is not None:
                byId[worker_id] = after
        self._record("lost", lost)
        return [byId[worker_id] for worker_id in sorted(byId)]

    def _plan(self, workers, ours, demand):
        """
        (how many to launch, ids of our empty draining workers, ids of our
        surplus idle workers longest idle first). Every live worker counts,
        whatever its provider; only ours are terminated. Queued users keep
        idle workers from being shed as they make more be launched.
        """
        live = [worker for worker in workers if worker.state != DEAD]
        idle = [worker for worker in live if worker.assignable and worker.load == 0]
        starting = sum(worker.state == STARTING for worker in live)
        retiring = [
            worker.id for worker in ours
            if worker.state != DEAD and worker.draining and worker.load == 0
        ]
        remaining = len(live) - len(retiring)
        queued = math.ceil(demand / self._capacity)
        launch = max(
            self._minSpare + queued - len(idle) - starting,
            self._minWorkers - remaining,
        )
        launch = max(0, min(launch, self._maxWorkers - remaining))
        surplus = min(
            max(len(idle) - self._maxSpare - queued, remaining - self._maxWorkers),
            remaining - self._minWorkers,
        )
        our_idle = sorted(
            (worker for worker in idle if worker.provider == self._provider.name),
            key=lambda worker: (_idleSince(worker), worker.id),
        )
        return launch, retiring, [worker.id for worker in our_idle[:max(0, surplus)]]

    def _attempt(self, action, what):
        if not what:
            return None
        d = action(what)
        d.addErrback(lambda failure: self._log.failure(
            "scaler {action} failed", failure, action=action.__name__.strip("_")))
        return d

    @inlineCallbacks
    def _removeDead(self, worker_ids):
        """Terminate dead workers (whatever is left of them) and forget them."""
        if not (yield self._leader.checkLeader()):
            return
        yield self._provider.terminate(worker_ids)
        for worker_id in worker_ids:
            yield self._registry.removeWorker(worker_id)
        self._record("terminate", worker_ids)

    @inlineCallbacks
    def _launch(self, n):
        if not (yield self._leader.checkLeader()):
            return
        launched = yield self._provider.launch(n)
        self._record("launch", [worker.id for worker in launched])
        # Registered as starting at once, so the next tick counts them.
        yield self._addWorkers(launched, self._clock.seconds())

    @inlineCallbacks
    def _terminateIdle(self, worker_ids):
        """Claim each (atomically, only if still empty), then terminate the claimed."""
        if not (yield self._leader.checkLeader()):
            return
        claimed = []
        for worker_id in worker_ids:
            if (yield self._registry.claimIdleWorker(worker_id)):
                claimed.append(worker_id)
        if claimed:
            yield self._provider.terminate(claimed)
            self._record("terminate", claimed)

    @inlineCallbacks
    def _addWorkers(self, launched, now):
        """Register each; fires with their records."""
        added = []
        for worker in launched:
            added.append((yield self._registry.addWorker(
                worker.id, worker.url, self._provider.name, self._capacity, now)))
        return added

    def _record(self, action, worker_ids):
        if not worker_ids:
            return
        token = self._leader.fencingToken
        self.recentActions.append(
            ScalerAction(self._clock.seconds(), action, tuple(worker_ids), token))
        self.actionCounts[action] += len(worker_ids)
        self._log.info(
            "scaler {action} {workers} (fencing token {fencing_token})",
            action=action, workers=list(worker_ids), fencing_token=token,
        )


def _idleSince(worker):
    return worker.idle_since if worker.idle_since is not None else worker.started_at
