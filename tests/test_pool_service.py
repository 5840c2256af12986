"""PoolService: timers on the leader only, errors survived, and a real pool of echo workers."""

import dataclasses
import os

import pytest
import pytest_twisted
from _polling import waitFor
from _pool_helpers import RecordingProvider, SwitchableLeader
from conftest import free_port
from test_pool_local import DEADLINE, answers
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import Logger

from wslb.config import load_config
from wslb.pool.ec2 import Ec2Provider
from wslb.pool.leader import AlwaysLeader
from wslb.pool.local import LocalProvider
from wslb.pool.service import PoolService, makeProvider
from wslb.pool.static import StaticProvider
from wslb.registry import HEALTHY
from wslb.registry.memory import MemoryRegistry


def poolConfig(*overrides):
    return load_config(overrides=overrides).pool


def test_makeProvider_chooses_by_config():
    local = makeProvider(reactor, poolConfig("pool.local.ports=9300-9310"))
    assert isinstance(local, LocalProvider) and local.name == "local"
    static = makeProvider(
        reactor, poolConfig('pool.provider="static"', 'pool.static.workers=["ws://10.0.0.1:9000"]'))
    assert isinstance(static, StaticProvider)
    ec2 = makeProvider(reactor, poolConfig('pool.provider="ec2"', 'pool.ec2.launch_template="lt-1"',
                                           'pool.ec2.region="eu-central-1"',
                                           'pool.ec2.pool_id="prod"'))
    assert isinstance(ec2, Ec2Provider) and ec2.name == "ec2"
    with pytest.raises(ValueError, match="pool.provider = 'nope'"):
        makeProvider(reactor, dataclasses.replace(poolConfig(), provider="nope"))


class FlakyProvider(RecordingProvider):
    """Its first list() fails, as a provider's API may."""

    failed = False

    def list(self):
        if not self.failed:
            self.failed = True
            raise RuntimeError("provider API down")
        return super().list()


@pytest_twisted.inlineCallbacks
def test_ticks_only_on_the_leader_and_go_on_after_an_error():
    clock = Clock()
    provider = FlakyProvider()
    leader = SwitchableLeader()
    leader.leading = False
    pool = PoolService(MemoryRegistry(clock), provider, leader, clock,
                       poolConfig("pool.scale_interval=5", "pool.min_spare=1"))
    events = []
    pool.log = Logger(observer=events.append)
    pool.startService()
    clock.advance(5)
    assert provider.launches == [] and not provider.failed
    leader.leading = True
    clock.advance(5)
    assert provider.launches == []
    assert [str(e["log_failure"].value) for e in events] == ["provider API down"]
    clock.advance(5)
    assert provider.launches == [1]
    yield pool.stopService()
    clock.advance(5)
    assert provider.launches == [1]


@pytest_twisted.inlineCallbacks
def test_a_pool_of_echo_workers_keeps_its_spares_and_replaces_a_killed_one():
    first = free_port()
    config = poolConfig(
        "pool.min_spare=2", "pool.max_spare=2", "pool.scale_interval=0.2",
        "pool.health.interval=0.2", f"pool.local.ports={first}-{first + 20}",
    )
    registry = MemoryRegistry(reactor)
    provider = makeProvider(reactor, config)
    pool = PoolService(registry, provider, AlwaysLeader(), reactor, config)
    pool.startService()
    try:
        yield waitFor(lambda: healthyWorkers(registry, 2), timeout=DEADLINE)
        workers = yield registry.listWorkers()
        for worker in workers:
            assert (yield answers(worker.url.rsplit(":", 1)[1]))
        victim = workers[0].id
        victim_pid = provider._processes[victim].transport.pid
        os.kill(victim_pid, 9)
        yield waitFor(lambda: any(
            a.action == "terminate" and a.workers == (victim,) for a in pool.scaler.recentActions),
            timeout=DEADLINE)
        yield waitFor(lambda: healthyWorkers(registry, 2), timeout=DEADLINE)
        assert [a.action for a in pool.scaler.recentActions].count("launch") == 2
        pids = [process.transport.pid for process in provider._processes.values()]
        assert len(pids) == 2 and victim_pid not in pids
    finally:
        yield pool.stopService()
    assert provider._processes == {}
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)


def healthyWorkers(registry, n):
    d = registry.listWorkers()
    return d.addCallback(lambda workers: sum(w.state == HEALTHY for w in workers) == n)


@pytest_twisted.inlineCallbacks
def test_the_longest_starting_worker_is_reported_by_the_leader_only():
    clock = Clock()
    clock.advance(1000)
    registry = MemoryRegistry(clock)
    yield registry.addWorker("w", f"ws://127.0.0.1:{free_port()}", "static", 1, clock.seconds())
    leader = SwitchableLeader()
    pool = PoolService(registry, RecordingProvider(), leader, clock, poolConfig("pool.min_spare=0"))
    assert pool.startingFor() == 0  # no round yet
    pool.startService()  # a first health round at once: "w" is starting
    yield waitFor(lambda: pool.health.outcomes["unreachable"], interval=0.01,
                  what="the first health round over")
    clock.advance(40)  # the rounds it runs meanwhile find it still starting
    assert pool.startingFor() == 40
    leader.leading = False
    assert pool.startingFor() == 0
    yield pool.stopService()
