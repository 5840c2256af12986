"""
The worker lifecycle table, row by row, and applied through a real
registry: each input is one guarded setWorkerState that moves a worker only
from the states the table names.
"""

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from wslb.registry import DEAD, HEALTHY, STARTING, UNHEALTHY, WORKER_STATES, lifecycle
from wslb.registry.lifecycle import (
    CHECK_PASSED,
    FAILURES_REACHED,
    INSTANCE_GONE,
    INSTANCE_PENDING,
    INSTANCE_RUNNING,
    REPORTED_DEAD,
    REPORTED_HEALTHY,
    REPORTED_UNHEALTHY,
    REREGISTERED,
    START_TIMEOUT,
    UNHEALTHY_TIMEOUT,
)
from wslb.registry.memory import MemoryRegistry

# The specification, written out once more as a matrix: the next state from
# (starting, healthy, unhealthy, dead); None: the input does not apply.
FROM = (STARTING, HEALTHY, UNHEALTHY, DEAD)
EXPECTED = {
    CHECK_PASSED:       (HEALTHY,  HEALTHY,   HEALTHY,   None),
    FAILURES_REACHED:   (None,     UNHEALTHY, None,      None),
    START_TIMEOUT:      (DEAD,     None,      None,      None),
    UNHEALTHY_TIMEOUT:  (None,     None,      DEAD,      None),
    REPORTED_HEALTHY:   (HEALTHY,  HEALTHY,   HEALTHY,   None),
    REPORTED_UNHEALTHY: (None,     UNHEALTHY, UNHEALTHY, None),
    REPORTED_DEAD:      (DEAD,     DEAD,      DEAD,      None),
    INSTANCE_PENDING:   (STARTING, None,      None,      None),
    INSTANCE_RUNNING:   (STARTING, None,      None,      None),
    INSTANCE_GONE:      (DEAD,     DEAD,      DEAD,      None),
    REREGISTERED:       (None,     None,      None,      STARTING),
}
PROVIDERS = ("local", "ec2", "registered", "static")


def expected(state, event, provider):
    if provider == "static" and (state, event) == (DEAD, CHECK_PASSED):
        return HEALTHY  # a configured worker nobody replaces comes back
    return EXPECTED[event][FROM.index(state)]


def resultOf(d):
    results = []
    d.addBoth(results.append)
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def test_the_table_knows_exactly_these_inputs():
    assert lifecycle.INPUTS == set(EXPECTED)
    assert set(FROM) == set(WORKER_STATES)


@pytest.mark.parametrize("event", sorted(EXPECTED))
@pytest.mark.parametrize("state", FROM)
def test_every_row(state, event):
    for provider in PROVIDERS:
        assert lifecycle.nextState(state, event, provider) == expected(state, event, provider)


def test_dead_is_terminal_but_for_registering_again_and_static_revival():
    for provider in PROVIDERS:
        doors = {event for event in EXPECTED if lifecycle.nextState(DEAD, event, provider)}
        assert doors == ({REREGISTERED, CHECK_PASSED} if provider == "static"
                         else {REREGISTERED}), provider
    assert lifecycle.nextState(DEAD, CHECK_PASSED, "static") == HEALTHY
    assert lifecycle.nextState(DEAD, REREGISTERED) == STARTING


@pytest.mark.parametrize("event", sorted(EXPECTED))
def test_each_input_leads_to_one_state_from_the_states_it_applies_to(event):
    for provider in PROVIDERS:
        froms = {state for state in FROM if expected(state, event, provider)}
        assert lifecycle.sources(event, provider) == froms
        assert {expected(state, event, provider) for state in froms} == {lifecycle.target(event)}


def test_an_unknown_input_is_refused():
    with pytest.raises(ValueError, match="reboot"):
        lifecycle.target("reboot")
    assert lifecycle.nextState(HEALTHY, "reboot") is None


@pytest.mark.parametrize("event", sorted(EXPECTED))
@pytest.mark.parametrize("state", FROM)
def test_apply_moves_the_worker_only_where_the_table_says(state, event):
    for provider in ("ec2", "static"):
        registry = MemoryRegistry(Clock())
        resultOf(registry.addWorker("w", "ws://w:1", provider, 1, 0))
        before = resultOf(registry.setWorkerState("w", state, 1))
        after = resultOf(lifecycle.apply(registry, "w", event, 2, provider))
        to = expected(state, event, provider)
        assert after.state == (to or state), provider
        assert after.state_since == (2 if to not in (None, state) else before.state_since)
        assert resultOf(registry.getWorker("w")) == after


def test_apply_to_an_unknown_worker_fires_none():
    registry = MemoryRegistry(Clock())
    assert resultOf(lifecycle.apply(registry, "nope", INSTANCE_GONE, 1)) is None
