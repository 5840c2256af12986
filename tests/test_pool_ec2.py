"""
Ec2Provider against moto's real EC2 server on loopback, alone and under the
real Scaler with the MemoryRegistry. Moto invents private addresses
(10.x/172.x): resolveAddress maps each instance to an echo worker on
127.0.0.1, and a guard refuses any connection that is not to loopback.
"""

import socket
import threading

import pytest
import pytest_twisted
from _ec2_helpers import (
    REGION,
    LoopbackOnly,
    LoopbackWorkers,
    MotoEc2,
    ThrottlingProxy,
)
from _echo_helpers import EchoWorkerProcess
from _polling import waitFor
from _pool_helpers import resultOf
from botocore.exceptions import ClientError, EndpointConnectionError
from conftest import free_port
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater
from zope.interface.verify import verifyObject

from wslb.config import load_config
from wslb.pool import ec2
from wslb.pool._interfaces import IProvider, LaunchedWorker
from wslb.pool.ec2 import Ec2Provider
from wslb.pool.health import HealthChecker
from wslb.pool.leader import AlwaysLeader
from wslb.pool.scaler import Scaler
from wslb.pool.service import PoolService, makeProvider
from wslb.registry import DEAD, HEALTHY, STARTING
from wslb.registry.memory import MemoryRegistry

POOL_ID = "ec2test@redis.test:6379/0"
TEMPLATE = "wslb-workers"
DEADLINE = 10.0  # real seconds any wait below may take


@pytest.fixture(scope="module")
def moto():
    server = MotoEc2()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def echo_ports():
    """Two echo workers that stand in for every instance's worker."""
    workers = [EchoWorkerProcess() for _ in range(2)]
    try:
        yield [worker.waitHealthy().port for worker in workers]
    finally:
        for worker in workers:
            worker.kill()


@pytest.fixture
def aws(moto, monkeypatch):
    """A clean moto with the workers' launch template; AWS settings from the environment only."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    moto.reset()
    moto.templateId = moto.createLaunchTemplate(TEMPLATE)
    return moto


@pytest_twisted.async_yield_fixture()
async def providers(aws, guard, echo_ports):
    """make(**overrides) -> a started Ec2Provider on moto, stopped after the test."""
    made = []

    def make(**overrides):
        settings = dict(
            region=REGION, launch_template=TEMPLATE, port=9000, address="private_ip",
            poolId=POOL_ID, endpoint_url=aws.url,
            resolveAddress=LoopbackWorkers(echo_ports),
        )
        settings.update(overrides)
        provider = Ec2Provider(reactor, **settings)
        provider.resolver = settings["resolveAddress"]
        provider.startService()
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.stopService()


def poolTag(poolId=POOL_ID):
    return {"Name": "tag:wslb:pool", "Values": [poolId]}


def tags(instance):
    return {tag["Key"]: tag["Value"] for tag in instance.get("Tags", ())}


def timely(d):
    return d.addTimeout(DEADLINE, reactor)


@inlineCallbacks
def onClockUntil(clock, predicate):
    """
    Move C{clock} to its next timer whenever one is set, until C{predicate()}
    is true (boto3 calls themselves finish on the real reactor).
    """
    deadline = reactor.seconds() + DEADLINE
    while not predicate():
        assert reactor.seconds() < deadline, f"not true in time: {predicate}"
        calls = clock.getDelayedCalls()
        if calls:
            clock.advance(min(call.getTime() for call in calls) - clock.seconds())
        yield deferLater(reactor, 0.01, lambda: None)


@inlineCallbacks
def onClock(clock, d):
    """Fire with C{d}'s result, driving C{clock} meanwhile."""
    yield onClockUntil(clock, lambda: d.called)
    return (yield d)


def retryDelays(events):
    return [event["delay"] for event in events if "retrying in" in event.get("log_format", "")]


# -- the provider alone ----------------------------------------------------------


def test_the_guard_refuses_anything_but_loopback(monkeypatch):
    guard = LoopbackOnly(monkeypatch)
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("10.1.2.3", 9000))
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("ip-10-1-2-3.ec2.internal", 9000)
    assert guard.refused == [("connect", ("10.1.2.3", 9000)),
                             ("getaddrinfo", "ip-10-1-2-3.ec2.internal")]


@pytest_twisted.inlineCallbacks
def test_makeProvider_builds_it_from_config(aws, guard):
    config = load_config(overrides=[
        'pool.provider="ec2"', f'pool.ec2.launch_template="{aws.templateId}"',
        f'pool.ec2.endpoint_url="{aws.url}"', f'pool.ec2.region="{REGION}"',
        "pool.ec2.port=9100", 'pool.ec2.address="private_dns"', 'pool.ec2.pool_id="pool7"',
    ])
    provider = makeProvider(reactor, config.pool)
    verifyObject(IProvider, provider)
    assert (provider.name, provider.managed) == ("ec2", True)
    provider.startService()
    try:
        [worker] = yield timely(provider.launch(1))
    finally:
        yield timely(provider.stopService())
    instance = aws.instances(poolTag("pool7"))[worker.id]
    assert worker.url == f"ws://{instance['PrivateDnsName']}:9100"


@pytest_twisted.inlineCallbacks
def test_boto3_runs_in_the_providers_own_threads_which_stop_with_it(providers, aws, guard):
    provider = providers()
    del guard.connections[:]  # the test's own set-up calls
    assert len((yield timely(provider.launch(1)))) == 1
    assert len((yield timely(provider.list()))) == 1
    threads = {name for _, _, name in guard.connectionsTo(aws.port)}
    assert threads and all(name.startswith("PoolThread-wslb-ec2-") for name in threads), threads
    yield timely(provider.stopService())
    assert not [t.name for t in threading.enumerate() if "wslb-ec2" in t.name]
    with pytest.raises(RuntimeError, match="stopped"):
        yield provider.list()


@pytest.mark.parametrize("template, address", [("name", "private_ip"), ("id", "private_dns")])
@pytest_twisted.inlineCallbacks
def test_launch_runs_the_template_tagged_for_the_pool(providers, aws, template, address):
    provider = providers(
        launch_template=TEMPLATE if template == "name" else aws.templateId, address=address)
    launched = yield timely(provider.launch(2))
    instances = aws.instances(poolTag())
    assert sorted(worker.id for worker in launched) == sorted(instances)
    field = {"private_ip": "PrivateIpAddress", "private_dns": "PrivateDnsName"}[address]
    for worker in launched:
        instance = instances[worker.id]
        assert tags(instance)["wslb:pool"] == POOL_ID
        assert tags(instance)["aws:ec2launchtemplate:id"] == aws.templateId
        assert instance["ImageId"] == aws.imageId
        # The provider's own address (never contacted), mapped to a loopback echo worker.
        assert provider.resolver.asked[worker.id] == f"{instance[field]}:9000"
        assert worker.url.startswith("ws://127.0.0.1:")


@pytest_twisted.inlineCallbacks
def test_without_resolveAddress_the_url_is_the_instances_address(providers, aws):
    provider = providers(resolveAddress=None, port=9100)
    [worker] = yield timely(provider.launch(1))
    instance = aws.instances(poolTag())[worker.id]
    assert worker == LaunchedWorker(worker.id, f"ws://{instance['PrivateIpAddress']}:9100")


@pytest_twisted.inlineCallbacks
def test_list_shows_the_pools_live_instances_only(providers, aws):
    provider = providers()
    launched = yield timely(provider.launch(2))
    orphan = aws.run(tags=[("wslb:pool", POOL_ID)])
    aws.run(tags=[("wslb:pool", "another-pool")])
    aws.run()
    gone = aws.run(tags=[("wslb:pool", POOL_ID)])
    aws.terminate(gone)
    listed = yield timely(provider.list())
    assert sorted(worker.id for worker in listed) == sorted(
        [worker.id for worker in launched] + [orphan])
    assert gone not in provider.resolver.asked


@pytest_twisted.inlineCallbacks
def test_an_instance_that_disappears_goes_to_the_death_listeners(providers, aws):
    provider = providers()
    died = []
    provider.addDeathListener(died.append)
    first, second = (worker.id for worker in (yield timely(provider.launch(2))))
    yield timely(provider.list())
    aws.terminate(first)
    assert [worker.id for worker in (yield timely(provider.list()))] == [second]
    assert died == [first]
    yield timely(provider.list())
    assert died == [first], "reported once"
    # Its own terminations are no deaths.
    assert (yield timely(provider.terminate([second]))) == [second]
    assert (yield timely(provider.list())) == []
    assert died == [first]
    assert aws.states(POOL_ID)[second] in ("shutting-down", "terminated")


@pytest_twisted.inlineCallbacks
def test_terminate_touches_only_the_pools_instances(providers, aws):
    provider = providers()
    [ours] = yield timely(provider.launch(1))
    foreign = aws.run(tags=[("wslb:pool", "another-pool")])
    untagged = aws.run()
    unknown = "i-0123456789abcdef0"
    terminated = yield timely(
        provider.terminate([ours.id, foreign, untagged, unknown, "local-9100"]))
    assert terminated == [ours.id]
    states = {i: instance["State"]["Name"] for i, instance in aws.instances().items()}
    assert states[ours.id] in ("shutting-down", "terminated")
    assert states[foreign] == states[untagged] == "running"
    assert (yield timely(provider.terminate([ours.id]))) == [], "already terminated"


@pytest_twisted.inlineCallbacks
def test_tag_addresses_are_polled_for_and_an_instance_without_one_is_terminated(
        providers, aws, log_events):
    clock = Clock()
    provider = providers(address="tag:wslb:address", clock=clock)
    d = provider.launch(3)
    yield waitFor(clock.getDelayedCalls, timeout=DEADLINE, interval=0.01)  # no address yet: polling
    with_port, bare, never = sorted(aws.instances(poolTag()))
    aws.client.create_tags(Resources=[with_port], Tags=[
        {"Key": "wslb:address", "Value": "worker-a.internal:9100"}])
    aws.client.create_tags(Resources=[bare], Tags=[
        {"Key": "wslb:address", "Value": "worker-b.internal"}])
    launched = yield onClock(clock, d)
    assert sorted(worker.id for worker in launched) == [with_port, bare]
    assert provider.resolver.asked == {
        with_port: "worker-a.internal:9100", bare: "worker-b.internal:9000"}
    assert clock.seconds() >= ec2.ADDRESS_TIMEOUT
    assert aws.states(POOL_ID)[never] in ("shutting-down", "terminated")
    assert any("have no address" in event.get("log_format", "") for event in log_events)
    assert sorted(worker.id for worker in (yield timely(provider.list()))) == [with_port, bare]


# -- failures ------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_throttling_is_retried_with_backoff_until_it_passes(providers, aws, log_events):
    proxy = ThrottlingProxy(aws.url, throttle=3)
    try:
        clock = Clock()
        provider = providers(endpoint_url=proxy.url, clock=clock)
        launched = yield onClock(clock, provider.launch(2))
    finally:
        yield proxy.close()
    assert len(launched) == 2 and len(aws.instances(poolTag())) == 2
    assert proxy.requests == 4
    assert retryDelays(log_events) == [0.5, 1.0, 2.0]


@pytest_twisted.inlineCallbacks
def test_throttling_gives_up_after_bounded_attempts(providers, aws, log_events):
    proxy = ThrottlingProxy(aws.url, throttle=1000)
    try:
        clock = Clock()
        provider = providers(endpoint_url=proxy.url, clock=clock)
        with pytest.raises(ClientError) as raised:
            yield onClock(clock, provider.list())
    finally:
        yield proxy.close()
    assert raised.value.response["Error"]["Code"] == "RequestLimitExceeded"
    assert proxy.requests == ec2.ATTEMPTS, "botocore must not retry on its own"
    assert retryDelays(log_events) == [0.5, 1.0, 2.0, 4.0]


@pytest_twisted.inlineCallbacks
def test_an_unreachable_endpoint_fails_after_bounded_attempts(providers, guard):
    closed = free_port()
    clock = Clock()
    provider = providers(endpoint_url=f"http://127.0.0.1:{closed}", clock=clock)
    with pytest.raises(EndpointConnectionError):
        yield onClock(clock, provider.terminate(["i-0123456789abcdef0"]))
    assert len(guard.connectionsTo(closed)) == ec2.ATTEMPTS


@pytest_twisted.inlineCallbacks
def test_a_client_error_fails_at_once(providers):
    clock = Clock()
    provider = providers(launch_template="no-such-template", clock=clock)
    with pytest.raises(ClientError) as raised:
        yield timely(provider.launch(1))
    assert "LaunchTemplate" in raised.value.response["Error"]["Code"]
    assert clock.seconds() == 0 and not clock.getDelayedCalls(), "no retry"


# -- under the real Scaler -------------------------------------------------------------


class Pool:
    """The real Scaler and HealthChecker on a MemoryRegistry, with an Ec2Provider on moto."""

    def __init__(self, provider, registry=None, **policy):
        self.provider = provider
        self.registry = registry or MemoryRegistry(reactor)
        settings = {"min_spare": 2, "max_spare": 3, "min_workers": 0, "max_workers": 10,
                    "capacity": 1, **policy}
        self.scaler = Scaler(self.registry, provider, reactor, AlwaysLeader(), **settings)
        self.health = HealthChecker(self.registry, reactor, "/health", interval=5, timeout=2,
                                    failures=3, start_timeout=180, unhealthy_timeout=30)

    def tick(self):
        return timely(self.scaler.tick())

    def checkHealth(self):
        return timely(self.health.check())

    @inlineCallbacks
    def states(self):
        return {worker.id: worker.state for worker in (yield self.registry.listWorkers())}

    def actions(self, action):
        return [list(done.workers) for done in self.scaler.recentActions if done.action == action]


@pytest_twisted.inlineCallbacks
def test_scaler_grows_the_pool_to_min_spare_instances(providers, aws):
    pool = Pool(providers(), min_spare=2)
    yield pool.tick()
    instances = aws.instances(poolTag())
    assert len(instances) == 2
    for instance in instances.values():
        assert tags(instance)["aws:ec2launchtemplate:id"] == aws.templateId
        assert instance["ImageId"] == aws.imageId
    assert (yield pool.states()) == dict.fromkeys(instances, STARTING)
    workers = yield pool.registry.listWorkers()
    assert {worker.provider for worker in workers} == {"ec2"}
    assert all(worker.url.startswith("ws://127.0.0.1:") for worker in workers)
    yield pool.checkHealth()  # the echo workers answer for them
    assert (yield pool.states()) == dict.fromkeys(instances, HEALTHY)
    yield pool.tick()
    assert len(aws.instances(poolTag())) == 2, "enough spare: nothing more launched"
    assert [sorted(ids) for ids in pool.actions("launch")] == [sorted(instances)]


@pytest_twisted.inlineCallbacks
def test_scaler_terminates_surplus_idle_instances(providers, aws):
    provider = providers()
    died = []
    provider.addDeathListener(died.append)
    grown = Pool(provider, min_spare=3, max_spare=3)
    yield grown.tick()
    yield grown.checkHealth()
    assert set((yield grown.states()).values()) == {HEALTHY}
    shrunk = Pool(provider, registry=grown.registry, min_spare=1, max_spare=1)
    yield shrunk.tick()
    [terminated] = shrunk.actions("terminate")
    assert len(terminated) == 2
    states = aws.states(POOL_ID)
    assert {states[instance_id] for instance_id in terminated} <= {"shutting-down", "terminated"}
    kept = set(states) - set(terminated)
    assert len(kept) == 1 and states[kept.pop()] == "running"
    assert len((yield shrunk.states())) == 1
    yield shrunk.tick()
    assert died == [] and len((yield shrunk.states())) == 1


@pytest_twisted.inlineCallbacks
def test_scaler_replaces_an_instance_terminated_behind_its_back(providers, aws):
    pool = Pool(providers(), min_spare=2)
    yield pool.tick()
    yield pool.checkHealth()
    victim, survivor = sorted((yield pool.states()))
    aws.terminate(victim)
    yield timely(pool.provider.list())  # the provider tells the scaler at once
    assert (yield pool.states())[victim] == DEAD
    yield pool.tick()
    states = yield pool.states()
    assert victim not in states and states[survivor] == HEALTHY
    [replacement] = set(states) - {survivor}
    assert states[replacement] == STARTING
    assert aws.states(POOL_ID)[replacement] == "running"
    assert [victim] in pool.actions("terminate") and [replacement] in pool.actions("launch")


@pytest_twisted.inlineCallbacks
def test_scaler_adopts_an_orphan_tagged_instance(providers, aws):
    orphan = aws.run(tags=[("wslb:pool", POOL_ID)])
    pool = Pool(providers(), min_spare=1)
    yield pool.tick()
    assert (yield pool.states()) == {orphan: STARTING}
    assert pool.actions("adopt") == [[orphan]] and pool.actions("launch") == []
    assert list(aws.instances(poolTag())) == [orphan]
    yield pool.checkHealth()
    assert (yield pool.states()) == {orphan: HEALTHY}


@pytest_twisted.inlineCallbacks
def test_throttling_does_not_stop_the_pool_service(providers, aws, log_events):
    """A tick that fails after its retries is log_events; the next one goes on and launches."""
    proxy = ThrottlingProxy(aws.url, throttle=ec2.ATTEMPTS)
    clock = Clock()
    registry = MemoryRegistry(clock)
    service = PoolService(
        registry, providers(endpoint_url=proxy.url, clock=clock), AlwaysLeader(), clock,
        load_config(overrides=["pool.min_spare=2", "pool.scale_interval=5"]).pool,
    )
    try:
        service.startService()  # the first tick runs at once
        def failed():
            return [e for e in log_events if "pool {tick} failed" in e.get("log_format", "")]

        yield onClockUntil(clock, failed)
        [event] = failed()
        assert event["log_failure"].value.response["Error"]["Code"] == "RequestLimitExceeded"
        assert proxy.requests == ec2.ATTEMPTS
        yield onClockUntil(clock, lambda: len(resultOf(registry.listWorkers())) == 2)
        assert len(aws.instances(poolTag())) == 2
        assert len(failed()) == 1
    finally:
        yield timely(service.stopService())
        yield proxy.close()
