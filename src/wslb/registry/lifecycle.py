"""
The worker lifecycle (DESIGN §6) as one table: which input moves a worker
from which state to which. Health checks, lifecycle events (admin API,
Lambda handlers) and providers all go through it, so that they agree on
what may happen, and each input is applied as one guarded registry call
(``setWorkerState(..., allowedFrom)``): a check that raced a death, or an
event AWS delivered late or twice, finds the worker in a state the input
does not apply to and changes nothing.

Draining is a flag beside the state, not part of it. Dead is terminal but
for two doors: a re-registered worker starts over, and a static worker
(configured, so nobody replaces it) that passes a check comes back.
"""

from wslb.registry import DEAD, HEALTHY, STARTING, UNHEALTHY

# -- inputs ------------------------------------------------------------
CHECK_PASSED = "check passed"
FAILURES_REACHED = "failures reached"  # consecutive failed checks reached pool.health.failures
START_TIMEOUT = "start timeout"  # starting for pool.start_timeout without a pass
UNHEALTHY_TIMEOUT = "unhealthy timeout"  # unhealthy for pool.unhealthy_timeout
REPORTED_HEALTHY = "reported healthy"  # a lifecycle event (admin API, Lambda)
REPORTED_UNHEALTHY = "reported unhealthy"
REPORTED_DEAD = "reported dead"
INSTANCE_PENDING = "instance pending"  # EC2 state-change events
INSTANCE_RUNNING = "instance running"
# stopping/stopped/shutting-down/terminated, or the provider lost it
INSTANCE_GONE = "instance gone"
REREGISTERED = "re-registered"  # POST /api/v1/workers again for a registered worker

# (state, input) -> next state. A missing row: the input does not apply and
# nothing changes. Rows leading back to the same state change nothing but
# make a repeated input count as done (and a passing check refreshes
# last_seen).
TRANSITIONS = {
    (STARTING, CHECK_PASSED): HEALTHY,
    (HEALTHY, CHECK_PASSED): HEALTHY,
    (UNHEALTHY, CHECK_PASSED): HEALTHY,
    (HEALTHY, FAILURES_REACHED): UNHEALTHY,
    (STARTING, START_TIMEOUT): DEAD,
    (UNHEALTHY, UNHEALTHY_TIMEOUT): DEAD,
    (STARTING, REPORTED_HEALTHY): HEALTHY,
    (HEALTHY, REPORTED_HEALTHY): HEALTHY,
    (UNHEALTHY, REPORTED_HEALTHY): HEALTHY,
    (HEALTHY, REPORTED_UNHEALTHY): UNHEALTHY,
    (UNHEALTHY, REPORTED_UNHEALTHY): UNHEALTHY,
    (STARTING, REPORTED_DEAD): DEAD,
    (HEALTHY, REPORTED_DEAD): DEAD,
    (UNHEALTHY, REPORTED_DEAD): DEAD,
    # A pending or running instance still awaits its first passing check;
    # one that already passed got these events late and stays as it is.
    (STARTING, INSTANCE_PENDING): STARTING,
    (STARTING, INSTANCE_RUNNING): STARTING,
    (STARTING, INSTANCE_GONE): DEAD,
    (HEALTHY, INSTANCE_GONE): DEAD,
    (UNHEALTHY, INSTANCE_GONE): DEAD,
    (DEAD, REREGISTERED): STARTING,
}

# The lifecycle events workers send (admin API, Lambda), as inputs.
REPORTED = {"healthy": REPORTED_HEALTHY, "unhealthy": REPORTED_UNHEALTHY, "dead": REPORTED_DEAD}

STATIC = "static"  # the provider whose dead workers a passing check revives
STATIC_TRANSITIONS = {**TRANSITIONS, (DEAD, CHECK_PASSED): HEALTHY}

INPUTS = frozenset(event for _, event in STATIC_TRANSITIONS)


def _table(provider):
    return STATIC_TRANSITIONS if provider == STATIC else TRANSITIONS


def nextState(state, event, provider=None):
    """The state ``event`` moves a worker of ``provider`` to from ``state``, or None."""
    return _table(provider).get((state, event))


def target(event):
    """The one state ``event`` leads to, whatever state it comes from."""
    if event not in INPUTS:
        raise ValueError(f"unknown lifecycle input {event!r}")
    [state] = {to for (_, e), to in STATIC_TRANSITIONS.items() if e == event}
    return state


def sources(event, provider=None):
    """The states from which ``event`` applies to a worker of ``provider``."""
    return frozenset(state for state, e in _table(provider) if e == event)


def apply(registry, worker_id, event, now, provider=None, sessions=True):
    """
    Apply ``event`` in one atomic registry call. Fires with the worker
    afterwards: in ``target(event)`` unless the event did not apply to its
    state (then unchanged); None when the registry does not know it. With
    ``sessions`` False the worker's ``sessions`` is None (not read).
    """
    return registry.setWorkerState(
        worker_id, target(event), now, allowedFrom=sources(event, provider), sessions=sessions)
