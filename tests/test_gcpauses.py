"""wslb_gc_pause_seconds: each collection's pause, by generation, while the service runs."""

import gc

import pytest

from wslb.gcpauses import GCPauses
from wslb.metrics import Metrics


class SteppingTimer:
    """A duration's clock that moves ``step`` seconds each time it is read."""

    def __init__(self, step):
        self.step, self.now = step, 0.0

    def __call__(self):
        self.now += self.step
        return self.now


def observed(metrics, generation):
    """(count, sum) of wslb_gc_pause_seconds{generation}."""
    sample = {s.name: s.value for family in metrics.registry.collect()
              if family.name == "wslb_gc_pause_seconds" for s in family.samples
              if s.labels.get("generation") == str(generation)}
    return sample["wslb_gc_pause_seconds_count"], sample["wslb_gc_pause_seconds_sum"]


@pytest.mark.timeout(10)
def test_a_full_collection_is_timed_while_running_and_not_after():
    metrics = Metrics()
    pauses = GCPauses(metrics.gcPauses, timer=SteppingTimer(0.25))
    assert observed(metrics, 2) == (0, 0)  # the series exist before any pause
    pauses.startService()
    try:
        gc.collect(2)
        count, total = observed(metrics, 2)
        assert count >= 1 and total == pytest.approx(0.25 * count)
    finally:
        pauses.stopService()
    gc.collect(2)
    assert observed(metrics, 2) == (count, total)
    assert pauses._collecting not in gc.callbacks


@pytest.mark.timeout(10)
def test_young_collections_are_counted_under_their_generation():
    metrics = Metrics()
    pauses = GCPauses(metrics.gcPauses, timer=SteppingTimer(0.001))
    pauses.startService()
    try:
        gc.collect(0)
    finally:
        pauses.stopService()
    assert observed(metrics, 0)[0] >= 1


@pytest.mark.timeout(10)
def test_stopped_without_a_start_or_started_twice_it_times_each_collection_once():
    metrics = Metrics()
    GCPauses(metrics.gcPauses).stopService()  # a composition stops parts never started
    pauses = GCPauses(metrics.gcPauses, timer=SteppingTimer(0.5))
    pauses.startService()
    pauses.startService()
    try:
        before = observed(metrics, 2)[0]
        gc.collect(2)
        count, total = observed(metrics, 2)
        assert total == pytest.approx(0.5 * count) and count - before >= 1
        assert gc.callbacks.count(pauses._collecting) == 1
    finally:
        pauses.stopService()
