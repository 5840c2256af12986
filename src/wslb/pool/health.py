"""HTTP health checks that move workers between states (leader only)."""

from collections import Counter

from treq.client import HTTPClient
from twisted.internet.defer import (
    DeferredList,
    DeferredSemaphore,
    inlineCallbacks,
    maybeDeferred,
    succeed,
)
from twisted.logger import Logger
from twisted.web.client import Agent

from wslb.httpclient import QuietPool
from wslb.registry import DEAD, STARTING, lifecycle
from wslb.registry.lifecycle import CHECK_PASSED, FAILURES_REACHED, START_TIMEOUT, UNHEALTHY_TIMEOUT
from wslb.worker_urls import healthUrl

STARTING_POLL = 1.0  # seconds between checks of a starting worker: users wait for it
# Checks in flight at once. A whole fleet falls due together: thousands of
# requests (and then registry calls) at once would starve the leader's
# reactor past its own timeouts, the leader lock's renewal included.
MAX_CHECKS = 100


# What one check found: the outcomes of wslb_health_checks_total.
PASSED = "passed"  # a 2xx answer
FAILED = "failed"  # another answer
UNREACHABLE = "unreachable"  # no answer: refused, reset, unresolvable
TIMED_OUT = "timeout"  # no answer within pool.health.timeout
OUTCOMES = (PASSED, FAILED, UNREACHABLE, TIMED_OUT)


class CheckPool(QuietPool):
    """
    One kept-alive connection per worker, reused check after check (quiet:
    with 100 workers checked every 5 s, each new connection's two log lines
    would make 40 a second); a worker that died closes its connection, and
    the next check connects afresh, and fails.
    """

    maxPersistentPerHost = 1  # one check at a time per worker


class HealthChecker:
    """
    C{GET http://host:port<path>} on every worker; 2xx passes. What a check
    found (a pass, C{failures} consecutive failures, C{start_timeout} or
    C{unhealthy_timeout} spent in the state) is an input of the lifecycle
    table (L{wslb.registry.lifecycle}), which decides the move. Dead workers are
    checked only when a pass could bring them back (static ones).

    Each L{check} is one round over the workers that are due: a starting
    one (every round), any other once per C{interval}. Run rounds every
    L{pollInterval}. A round reads the starting workers only, and the whole
    fleet (which the registry reads in pages) once per C{interval}; at most
    L{MAX_CHECKS} checks are in flight at once.
    """

    log = Logger()

    def __init__(self, registry, clock, path, interval, timeout, failures,
                 start_timeout, unhealthy_timeout, http=None):
        self._registry = registry
        self._clock = clock
        self._path = path
        self._interval = interval
        self._timeout = timeout
        self._failuresAllowed = failures
        self._startTimeout = start_timeout
        self._unhealthyTimeout = unhealthy_timeout
        self._pool = None
        if http is None:
            from twisted.internet import reactor

            self._pool = CheckPool(reactor)
            http = HTTPClient(Agent(reactor, pool=self._pool))
        self._http = http  # treq-like: get(url) -> Deferred[response with .code, .content()]
        self._failures = {}  # worker id -> consecutive failed checks
        self._lastCheck = {}  # worker id -> clock time its last check started
        self.outcomes = Counter({outcome: 0 for outcome in OUTCOMES})  # checks since start
        self._startingSince = None  # the longest-starting worker's state_since, last round
        self._inFlight = DeferredSemaphore(MAX_CHECKS)
        self._lastPass = None  # clock time of the last round that read the whole fleet

    def close(self):
        """Close the kept-alive connections; fires when they are closed."""
        return self._pool.closeCachedConnections() if self._pool else succeed(None)

    @property
    def pollInterval(self):
        return min(self._interval, STARTING_POLL)

    def check(self):
        """One round; fires with None when its checks are done. Never fails."""
        now = self._clock.seconds()
        whole = self._lastPass is None or self._isDue(self._lastPass, now)
        d = self._registry.listWorkers(sessions=False, state=None if whole else STARTING)
        d.addCallback(self._round, whole)
        d.addErrback(lambda failure: self.log.failure("health round failed", failure))
        return d

    def startingFor(self, now):
        """
        Seconds the longest-starting worker has been starting as of the last
        round, counted to ``now`` (0 when none was): it grows while rounds
        stop coming, as a stuck pool's would.
        """
        return 0.0 if self._startingSince is None else now - self._startingSince

    def _round(self, workers, whole):
        now = self._clock.seconds()
        self._startingSince = min(
            (worker.state_since for worker in workers if worker.state == STARTING), default=None)
        if whole:
            self._lastPass = now
            self._forgetAllBut({worker.id for worker in workers})
        due = [worker for worker in workers if self._due(worker, now)]
        for worker in due:
            self._lastCheck[worker.id] = now
        checks = DeferredList([self._inFlight.run(self._checkOne, worker) for worker in due])
        return checks.addCallback(lambda _: None)

    def _forgetAllBut(self, ids):
        for table in (self._failures, self._lastCheck):
            for worker_id in set(table) - ids:
                del table[worker_id]

    def _due(self, worker, now):
        if worker.state == DEAD and not lifecycle.nextState(DEAD, CHECK_PASSED, worker.provider):
            return False
        last = self._lastCheck.get(worker.id)
        return last is None or worker.state == STARTING or self._isDue(last, now)

    def _isDue(self, last, now):
        # Rounds come every pollInterval, a little late at times: half a
        # round of slack keeps a 5 s interval from slipping to 6 s.
        return now - last >= self._interval - self.pollInterval / 2

    def _checkOne(self, worker):
        d = maybeDeferred(self._probe, worker.url)
        d.addCallback(self._counted)
        d.addCallback(self._record, worker)
        d.addErrback(lambda failure: self.log.failure(
            "health check of {worker} failed", failure, worker=worker.id))
        return d

    def _probe(self, url):
        """Fires with the check's outcome (one of L{OUTCOMES}); never fails."""
        d = self._http.get(healthUrl(url, self._path))
        d.addCallback(lambda response: response.content().addCallback(
            lambda _: PASSED if 200 <= response.code < 300 else FAILED))
        # Cancelled requests fail in several ways: the timeout says which was ours.
        d.addTimeout(self._timeout, self._clock, onTimeoutCancel=lambda _, __: TIMED_OUT)
        d.addErrback(lambda _: UNREACHABLE)
        return d

    def _counted(self, outcome):
        self.outcomes[outcome] += 1
        return outcome == PASSED

    @inlineCallbacks
    def _record(self, passed, listed):
        worker_id = listed.id
        failures = 0 if passed else self._failures.get(worker_id, 0) + 1
        self._failures[worker_id] = failures
        worker = listed
        if not passed:
            # Decide on a fresh record: a failure's input depends on how long
            # the worker has been in its state. A pass leads to one state
            # whatever that age, so the record the round listed does. Either
            # way the registry's guard keeps a worker that died or moved
            # meanwhile as it is. Sessions are not read: a check costs the
            # same however many.
            worker = yield self._registry.getWorker(worker_id, sessions=False)
            if worker is None:
                return
        now = self._clock.seconds()
        event = self._input(worker, passed, failures, now)
        if event is None:
            return
        after = yield lifecycle.apply(self._registry, worker_id, event, now, worker.provider,
                                      sessions=False)
        if after is not None and after.state != worker.state:
            self.log.info(
                "worker {worker}: {old} -> {new} ({input})",
                worker=worker_id, old=worker.state, new=after.state, input=event,
            )

    def _input(self, worker, passed, failures, now):
        """What the check found, as the lifecycle input that applies to the worker, or None."""
        if passed:
            found = [CHECK_PASSED]
        else:
            in_state = now - worker.state_since
            found = [event for event, holds in (
                (FAILURES_REACHED, failures >= self._failuresAllowed),
                (START_TIMEOUT, in_state >= self._startTimeout),
                (UNHEALTHY_TIMEOUT, in_state >= self._unhealthyTimeout),
            ) if holds]
        return next(
            (e for e in found if lifecycle.nextState(worker.state, e, worker.provider)), None)
