"""MemoryRegistry passes the registry contract and provides IRegistry."""

import pytest
import pytest_twisted
from registry_contract import RegistryContract, request
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from wslb.registry import HEALTHY, IRegistry
from wslb.registry.memory import MemoryRegistry


class MemoryHarness:
    """Registries on a Clock; settling runs the listener calls it holds."""

    def __init__(self):
        self.clock = Clock()

    def make(self):
        return defer.succeed(MemoryRegistry(self.clock))

    def settle(self):
        self.clock.advance(0)
        return defer.succeed(None)

    def audit(self):
        """The memory registry keeps no index beside its records."""
        return defer.succeed(None)


@pytest.fixture
def harness():
    return MemoryHarness()


class TestMemoryRegistry(RegistryContract):
    def test_providesIRegistry(self):
        assert verifyObject(IRegistry, MemoryRegistry(Clock()))

    def test_listenersWaitForTheClock(self, harness):
        """Listeners run from the reactor, even after the call's Deferred fired."""
        registry = MemoryRegistry(harness.clock)
        calls = []
        registry.addCapacityListener(lambda: calls.append("capacity"))
        registry.addWorker("w1", "ws://h:1", "local", 1, 0)
        assert calls == []
        harness.clock.advance(0)
        assert calls == ["capacity"]

    @pytest_twisted.inlineCallbacks
    def test_endSessionDatesIdleFromTheClock(self, harness):
        """endSession has no ``now``: the worker's idle_since comes from the clock."""
        registry = MemoryRegistry(harness.clock)
        yield registry.addWorker("w1", "ws://h:1", "local", 1, 0)
        yield registry.setWorkerState("w1", HEALTHY, 0)
        yield registry.assign(request("a"), 1)
        harness.clock.advance(42)
        yield registry.endSession("a")
        assert (yield registry.getWorker("w1")).idle_since == 42
