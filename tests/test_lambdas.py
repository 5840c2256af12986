"""
The Lambda handlers against a real redis-server, fed EventBridge-shaped
events; what they do is seen by wslb's own RedisRegistry in the same
namespace, and end to end by a running wslb relaying a user.
"""

import itertools
import uuid

import pytest
import pytest_twisted
import redis
from _echo_helpers import getJSON
from twisted.internet import reactor

from wslb.aws import lambdas
from wslb.registry import (
    DEAD,
    HEALTHY,
    STARTING,
    UNHEALTHY,
    Assigned,
    AssignRequest,
    Queued,
    redis_ops,
)
from wslb.registry.keys import Keys
from wslb.registry.redis import RedisRegistry


def ec2Event(instance, state):
    """An "EC2 Instance State-change Notification" as EventBridge delivers it."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "account": "123456789012",
        "time": "2024-05-06T07:08:09Z",
        "region": "eu-central-1",
        "resources": [f"arn:aws:ec2:eu-central-1:123456789012:instance/{instance}"],
        "detail": {"instance-id": instance, "state": state},
    }


class Store:
    """A namespace's records, set up and read with redis-py and the registry scripts."""

    def __init__(self, url, namespace):
        self.namespace = namespace
        self.client = redis.Redis.from_url(url)
        self._keys = Keys(namespace).scriptKeys()

    def run(self, op):
        return op.decode(self.client.eval(op.source, len(self._keys), *self._keys, *op.args))

    def add(self, worker_id, state=STARTING, provider="ec2", capacity=1):
        self.run(redis_ops.addWorker(worker_id, f"ws://{worker_id}.test:9000", provider,
                                     capacity, 0))
        return self.run(redis_ops.setWorkerState(worker_id, state, 1))

    def worker(self, worker_id):
        return self.run(redis_ops.getWorker(worker_id))


@pytest.fixture
def store(redis_server, monkeypatch):
    """A cold start configured for a fresh namespace on the real Redis."""
    redis_server.flush()
    namespace = "aws-" + uuid.uuid4().hex[:8]
    monkeypatch.setenv("WSLB_REDIS_URL", redis_server.url)
    monkeypatch.setenv("WSLB_NAMESPACE", namespace)
    monkeypatch.setattr(lambdas, "_handlers", None)
    store = Store(redis_server.url, namespace)
    yield store
    if lambdas._handlers is not None:
        lambdas._handlers.client.close()
    store.client.close()


def ec2(instance, state):
    return lambdas.ec2_state_change(ec2Event(instance, state), None)


def report(worker, event, **extra):
    return lambdas.worker_event({"worker": worker, "event": event, **extra}, None)


# -- EC2 state changes ---------------------------------------------------


def test_an_instance_through_its_life(store):
    store.add("i-0a1")
    assert ec2("i-0a1", "pending") == {
        "ec2_state": "pending", "worker": "i-0a1", "input": "instance pending",
        "state": STARTING, "outcome": "done"}
    assert ec2("i-0a1", "running")["state"] == STARTING  # it awaits its health check
    store.run(redis_ops.setWorkerState("i-0a1", HEALTHY, 2))  # the check passed
    for late in ("pending", "running"):
        answer = ec2("i-0a1", late)
        assert (answer["state"], answer["outcome"]) == (HEALTHY, "ignored"), late
    assert store.worker("i-0a1").state == HEALTHY
    assert ec2("i-0a1", "stopping") == {
        "ec2_state": "stopping", "worker": "i-0a1", "input": "instance gone",
        "state": DEAD, "outcome": "done"}
    for later in ("stopped", "terminated"):
        assert (ec2("i-0a1", later)["outcome"], store.worker("i-0a1").state) == ("done", DEAD)
    for revival in ("pending", "running"):
        answer = ec2("i-0a1", revival)
        assert (answer["state"], answer["outcome"]) == (DEAD, "ignored"), revival
    assert store.worker("i-0a1").state == DEAD


def test_duplicate_and_out_of_order_deliveries_end_in_the_same_state(store):
    gone_in = ("shutting-down", "terminated")
    for n, order in enumerate(itertools.permutations(("pending", "running", *gone_in))):
        worker_id = f"i-{n:03d}"
        store.add(worker_id)
        for state in order:
            for _ in range(2):
                ec2(worker_id, state)
        settled = store.worker(worker_id)
        assert settled.state == DEAD, order
        for state in order:  # delivered once more, much later: nothing moves
            ec2(worker_id, state)
        assert store.worker(worker_id) == settled, order
    for state in (STARTING, HEALTHY, UNHEALTHY):
        for order in itertools.permutations(("pending", "running", "running")):
            worker_id = f"i-{state}"
            store.add(worker_id, state)
            for ec2_state in order:
                ec2(worker_id, ec2_state)
            assert store.worker(worker_id).state == state, order


def test_no_record_is_made_for_an_unknown_instance(store):
    for state in ("pending", "running", "terminated"):
        assert ec2("i-0ff", state)["outcome"] == "unknown worker"
    assert store.run(redis_ops.listWorkers()) == []


# -- worker events -------------------------------------------------------


def test_worker_events(store):
    worker_id = "10.0.2.7:9000"
    store.add(worker_id, provider="registered")
    assert report(worker_id, "unhealthy") == {
        "event": "unhealthy", "worker": worker_id, "input": "reported unhealthy",
        "state": STARTING, "outcome": "ignored"}  # starting: only healthy or dead
    assert report(worker_id, "healthy")["outcome"] == "done"
    seen = store.worker(worker_id).last_seen
    assert (store.worker(worker_id).state, seen is not None) == (HEALTHY, True)
    assert report(worker_id, "heartbeat") == {
        "worker": worker_id, "event": "heartbeat", "outcome": "done"}
    assert store.worker(worker_id).last_seen >= seen
    assert report(worker_id, "drain")["outcome"] == "done"
    assert store.worker(worker_id).draining
    assert report(worker_id, "unhealthy")["state"] == UNHEALTHY
    assert report(worker_id, "dead")["state"] == DEAD
    assert report(worker_id, "dead")["outcome"] == "done"  # again: already so
    assert report(worker_id, "healthy")["outcome"] == "ignored"
    assert store.worker(worker_id).state == DEAD
    for event in ("healthy", "unhealthy", "dead", "drain", "heartbeat"):
        assert report("nope:1", event)["outcome"] == "unknown worker", event
    assert report("nope:1", "session-ended", session="k")["outcome"] == "unknown session"


BAD_EC2 = [
    ("not a dict", "JSON object"),
    ({**ec2Event("i-1", "running"), "detail-type": "AWS API Call via CloudTrail"}, "detail-type"),
    ({k: v for k, v in ec2Event("i-1", "running").items() if k != "detail"}, "detail"),
    ({**ec2Event("i-1", "running"), "detail": {"state": "running"}}, "detail.instance-id"),
    ({**ec2Event("i-1", "running"), "detail": {"instance-id": "i-1"}}, "detail.state"),
    (ec2Event("i-1", "rebooting"), "rebooting"),
    (ec2Event("", "running"), "detail.instance-id"),
]
BAD_WORKER = [
    (["healthy"], "JSON object"),
    ({"event": "healthy"}, "worker"),
    ({"worker": 7, "event": "healthy"}, "worker"),
    ({"worker": "w1"}, "event"),
    ({"worker": "w1", "event": "reboot"}, "reboot"),
    ({"worker": "w1", "event": "session-ended"}, "session"),
    ({"worker": "w1", "event": "session-ended", "session": ""}, "session"),
    ({"worker": "w1", "event": "healthy", "session": "k"}, "session"),
    ({"worker": "w1", "event": "healthy", "state": "x"}, "unknown fields: state"),
]


@pytest.mark.parametrize("event, named", BAD_EC2)
def test_bad_ec2_events_raise_value_error(store, event, named):
    with pytest.raises(ValueError, match=named):
        lambdas.ec2_state_change(event, None)


@pytest.mark.parametrize("event, named", BAD_WORKER)
def test_bad_worker_events_raise_value_error(store, event, named):
    with pytest.raises(ValueError, match=named):
        lambdas.worker_event(event, None)


def test_one_client_per_cold_start_and_the_default_namespace(store, redis_server, monkeypatch):
    store.add("i-1")
    ec2("i-1", "running")
    first = lambdas.handlers()
    ec2("i-1", "running")
    assert lambdas.handlers() is first and lambdas.handlers().client is first.client

    first.client.close()
    monkeypatch.setattr(lambdas, "_handlers", None)
    monkeypatch.delenv("WSLB_NAMESPACE")
    default = Store(redis_server.url, "wslb")
    try:
        default.add("i-2")
        assert ec2("i-2", "terminated")["outcome"] == "done"
        assert default.worker("i-2").state == DEAD
        assert store.worker("i-1").state == STARTING  # the other namespace is untouched
    finally:
        default.client.close()

    lambdas._handlers.client.close()
    monkeypatch.setattr(lambdas, "_handlers", None)
    monkeypatch.delenv("WSLB_REDIS_URL")
    with pytest.raises(RuntimeError, match="WSLB_REDIS_URL"):
        ec2("i-2", "running")


# -- seen by wslb's side -------------------------------------------------


async def startedRegistry(url, namespace):
    registry = RedisRegistry(reactor, url, namespace)
    registry.startService()
    await registry.whenNoticesDelivered()
    return registry


@pytest.mark.parametrize("death", [
    lambda worker_id: ec2(worker_id, "terminated"),
    lambda worker_id: report(worker_id, "dead"),
], ids=["ec2 terminated", "worker reports dead"])
@pytest_twisted.ensureDeferred
async def test_a_death_is_seen_by_a_running_registry(store, redis_server, death):
    registry = await startedRegistry(redis_server.url, store.namespace)
    ended = []
    registry.addSessionEndedListener(ended.append)
    try:
        for worker_id in ("i-a", "i-b"):
            await registry.addWorker(worker_id, f"ws://{worker_id}:1", "ec2", 1, 0)
            await registry.setWorkerState(worker_id, HEALTHY, 0)
        first = await registry.assign(AssignRequest("alice", 1, "wslb-1"), 1)
        assert first.worker.id == "i-a"
        await registry.whenNoticesDelivered()

        assert death("i-a")["outcome"] == "done"
        await registry.whenNoticesDelivered()
        assert ended == ["alice"]
        assert (await registry.getWorker("i-a")).state == DEAD
        assert await registry.getSession("alice") is None
        again = await registry.assign(AssignRequest("alice", 1, "wslb-1"), 2)
        assert isinstance(again, Assigned) and (again.worker.id, again.fresh) == ("i-b", True)
    finally:
        await registry.stopService()


@pytest_twisted.ensureDeferred
async def test_session_ended_frees_the_slot_and_tells_the_registry(store, redis_server):
    registry = await startedRegistry(redis_server.url, store.namespace)
    ended, capacity = [], []
    registry.addSessionEndedListener(ended.append)
    registry.addCapacityListener(lambda: capacity.append(True))
    try:
        await registry.addWorker("w1", "ws://w1:1", "registered", 1, 0)
        await registry.setWorkerState("w1", HEALTHY, 0)
        await registry.assign(AssignRequest("alice", 1, "wslb-1"), 1)
        waiting = await registry.assign(AssignRequest("bob", 1, "wslb-1"), 1)
        assert isinstance(waiting, Queued)
        await registry.whenNoticesDelivered()
        capacity.clear()

        assert report("w2", "session-ended", session="alice")["outcome"] == "ignored"
        assert (await registry.getSession("alice")).worker == "w1"  # not w2's to end
        assert report("w1", "session-ended", session="alice") == {
            "worker": "w1", "event": "session-ended", "session": "alice", "outcome": "done"}
        assert report("w1", "session-ended", session="alice")["outcome"] == "unknown session"
        await registry.whenNoticesDelivered()
        assert ended == ["alice"] and capacity
        served = await registry.assign(
            AssignRequest("bob", 1, "wslb-1", ticket=waiting.ticket), 2)
        assert isinstance(served, Assigned) and served.worker.id == "w1"
    finally:
        await registry.stopService()


# -- end to end ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_lambda_death_closes_the_user_and_a_reconnect_lands_elsewhere(
        store, redis_server, echo_workers, start_wslb, clients):
    wslb = await start_wslb(
        echo_workers, "registry.backend=redis", f'registry.url="{redis_server.url}"',
        f'registry.namespace="{store.namespace}"',
        "pool.scale_interval=0.2",  # adopts the static workers soon after it leads
    )
    user = await wslb.connect("alice")
    clients.append(user)
    first = (await user.ask("whoami"))["worker"]
    _, session = await getJSON(wslb.admin + "/api/v1/sessions/alice")

    assert report(session["worker"], "dead")["outcome"] == "done"
    code, _ = await user.waitClosed()
    assert code == wslb.config.session.end_close_code

    again = await wslb.connect("alice")
    clients.append(again)
    assert (await again.ask("whoami"))["worker"] != first
    _, moved = await getJSON(wslb.admin + "/api/v1/sessions/alice")
    assert moved["worker"] != session["worker"]
