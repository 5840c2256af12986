"""[gc] freeze: full collections trace only what is new, and a thaw collects what they skip."""

import gc
import weakref

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from wslb.collector import FrozenSurvivors
from wslb.config import ConfigError, load_config

HOUR = 3600.0


class Node:
    """A container object, weakly referenceable."""

    def __init__(self):
        self.other = None


def cycle():
    """A weak reference to one of two objects that only name each other."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def frozen(obj):
    """Whether the collector skips ``obj``: gc.get_objects lists no frozen object."""
    return gc.is_tracked(obj) and not any(o is obj for o in gc.get_objects())


@pytest.fixture
def survivors():
    """A running FrozenSurvivors on a Clock, thawing hourly; stopped after the test."""
    clock = Clock()
    freezer = FrozenSurvivors(clock, HOUR)
    freezer.startService()
    yield freezer, clock
    freezer.stopService()


@pytest.mark.timeout(30)
def test_what_lives_at_start_is_frozen_and_what_survives_a_full_pass_too(survivors):
    freezer, _ = survivors
    assert frozen(freezer)  # it lived at its start
    kept = Node()
    assert not frozen(kept)
    gc.collect()
    assert frozen(kept)


@pytest.mark.timeout(30)
def test_a_young_cycle_is_still_collected(survivors):
    young = cycle()
    gc.collect()
    assert young() is None


@pytest.mark.timeout(30)
def test_a_frozen_cycle_waits_for_the_thaw(survivors):
    _, clock = survivors
    held = Node()
    held.other = Node()
    held.other.other = held  # a cycle, alive while ``held`` is
    gone = weakref.ref(held)
    gc.collect()  # it survives: frozen
    del held
    gc.collect()
    assert gone() is not None  # frozen: not traced, so not freed
    clock.advance(HOUR - 1)
    gc.collect()
    assert gone() is not None
    clock.advance(1)  # the thaw: one full pass over everything
    assert gone() is None


@pytest.mark.timeout(30)
def test_stopping_thaws_and_stops_freezing():
    clock = Clock()
    freezer = FrozenSurvivors(clock, HOUR)
    freezer.stopService()  # a composition stops parts never started
    freezer.startService()
    assert gc.get_freeze_count() > 0
    freezer.stopService()
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert gc.get_freeze_count() == 0
    assert clock.getDelayedCalls() == []


@pytest.mark.timeout(30)
def test_stopping_one_that_never_ran_leaves_a_running_one_freezing(survivors):
    FrozenSurvivors(Clock(), HOUR).stopService()
    kept = Node()
    gc.collect()
    assert frozen(kept)


@pytest.mark.timeout(30)
def test_thaw_interval_zero_never_thaws():
    clock = Clock()
    freezer = FrozenSurvivors(clock, 0)
    freezer.startService()
    try:
        assert clock.getDelayedCalls() == []
    finally:
        freezer.stopService()


def test_the_gc_keys_are_read_and_checked():
    config = load_config(overrides=["gc.freeze=false", 'gc.thaw_interval="0"'])
    assert (config.gc.freeze, config.gc.thaw_interval) == (False, 0)
    with pytest.raises(ConfigError, match="gc.thaw_interval"):
        load_config(overrides=['gc.thaw_interval="often"'])


@pytest.mark.timeout(30)
@pytest_twisted.ensureDeferred
async def test_wslb_freezes_by_default(start_wslb):
    wslb = await start_wslb()
    assert wslb.service.getServiceNamed("gc-freeze").running
    assert gc.get_freeze_count() > 0
    await wslb.stop()
    assert gc.get_freeze_count() == 0


@pytest.mark.timeout(30)
@pytest_twisted.ensureDeferred
async def test_wslb_with_freeze_off_leaves_the_collector_alone(start_wslb):
    wslb = await start_wslb((), "gc.freeze=false")
    with pytest.raises(KeyError):
        wslb.service.getServiceNamed("gc-freeze")
    gc.collect()
    assert gc.get_freeze_count() == 0
