"""
RedisRegistry against a real redis-server: the registry contract, plus what
only a shared registry has to survive (Redis going away and coming back
empty, a dead instance).
"""

import uuid

import pytest
import pytest_twisted
import redis
import txredisapi
from _polling import waitFor
from _redis_audit import auditRedisRegistry
from _redis_helpers import USER, TLSRedisServer
from registry_contract import Calls, RegistryContract, addHealthy, request
from twisted.internet import defer, protocol, reactor, task
from zope.interface.verify import verifyObject

from wslb.redis_url import parseRedisURL
from wslb.registry import DEAD, HEALTHY, Assigned, IRegistry, Queued, redis_ops
from wslb.registry.keys import Keys
from wslb.registry.redis import IRedisRegistryExtras, RedisRegistry
from wslb.registry.redis_connection import NotConnected, RedisConnection, _CommandProtocol


@defer.inlineCallbacks
def started(url, namespace=None, timeout=2.0):
    """A running RedisRegistry, subscribed to its notices."""
    registry = RedisRegistry(reactor, url, namespace or uuid.uuid4().hex[:8], timeout=timeout)
    registry.startService()
    yield registry.whenNoticesDelivered()
    return registry


class RedisHarness:
    """
    One live registry at a time (each make() starts afresh in a new
    namespace and stops the one before); settling waits for a barrier notice
    to come back through the registry's own subscription.
    """

    def __init__(self, url):
        self.url = url
        self.current = None

    @defer.inlineCallbacks
    def make(self):
        yield self.close()
        self.current = yield started(self.url)
        return self.current

    def settle(self):
        return self.current.whenNoticesDelivered()

    def audit(self):
        return auditRedisRegistry(self.current)

    @defer.inlineCallbacks
    def close(self):
        if self.current is not None:
            current, self.current = self.current, None
            yield current.stopService()


@pytest_twisted.async_yield_fixture
async def harness(redis_server):
    redis_server.flush()
    h = RedisHarness(redis_server.url)
    yield h
    await h.close()


class TestRedisRegistry(RegistryContract):
    def test_providesIRegistry(self, registry):
        assert verifyObject(IRegistry, registry)
        assert verifyObject(IRedisRegistryExtras, registry)

    @pytest_twisted.inlineCallbacks
    def test_endSessionDatesIdleFromTheClock(self, registry):
        """endSession has no ``now``: the worker's idle_since comes from the clock."""
        yield addHealthy(registry, "w1")
        yield registry.assign(request("a"), 1)
        before = reactor.seconds()
        yield registry.endSession("a")
        assert before <= (yield registry.getWorker("w1")).idle_since <= reactor.seconds()

    @pytest_twisted.inlineCallbacks
    def test_timesReadBackExactly(self, registry):
        """Clock readings survive the trip through Redis and JSON unrounded."""
        now = 1764201234.1234567
        worker = yield registry.addWorker("w1", "ws://h:1", "local", 1, now)
        assert worker.started_at == now
        yield registry.setWorkerState("w1", HEALTHY, now)
        yield registry.assign(request("a"), now)
        yield registry.release("a", "i1", now + 0.1)
        assert (yield registry.expireSessions(now + 0.1 + 5, 5)) == ["a"]

    @pytest_twisted.inlineCallbacks
    def test_keysLiveUnderTheNamespaceHashTag(self, registry, redis_server):
        yield addHealthy(registry, "10.0.0.1:9000")
        yield registry.assign(request("a"), 1)
        yield registry.assign(request("b"), 1)
        keys = yield registry.connection.execute("KEYS", "*")
        assert keys and all(k.startswith(registry.keys.prefix) for k in keys)

    @pytest_twisted.inlineCallbacks
    def test_scriptsFlushedFromRedisAreSentAgain(self, registry):
        """Calls name scripts by digest; Redis forgetting them (SCRIPT FLUSH) costs one EVAL."""
        yield addHealthy(registry, "w1")
        yield registry.connection.execute("SCRIPT", "FLUSH")
        result = yield registry.assign(request("a"), 1)
        assert isinstance(result, Assigned) and result.worker.id == "w1"
        assert (yield registry.getSession("a")).connections == 1

    @pytest_twisted.inlineCallbacks
    def test_aScriptErrorStillFails(self, registry):
        """Only NOSCRIPT sends the script whole; the script's own errors reach the caller."""
        yield addHealthy(registry, "w1")
        failure = None
        try:
            yield registry.connection.runScript(
                redis_ops.registryScript("assign"), registry.keys.scriptKeys(),
                ("a", "1", "i1", "nowhere", "10", "", "1", "t", "0"))
        except txredisapi.ResponseError as e:
            failure = e
        assert failure is not None and "unknown placement" in str(failure)


def test_commandsAreEncodedAsTxredisapiEncodesThem():
    args = ("EVALSHA", "a" * 40, 8, "{ns}:workers", "kéy", "", 1.5, b"raw", bytearray(b"ba"))
    ours = _CommandProtocol(charset="utf-8")._build_command(*args)
    assert ours == txredisapi.BaseRedisProtocol(charset="utf-8")._build_command(*args)
    assert ours.startswith(b"*9\r\n$7\r\nEVALSHA\r\n$40\r\n")


class TestRepliesAtOnce:
    """Replies that arrive together are parsed together, not one per reactor turn."""

    @pytest_twisted.inlineCallbacks
    def test_noReactorTurnBetweenReplies(self, redis_server, monkeypatch):
        # txredisapi defers the bytes after each bulk string to callLater(0):
        # with a clock that never runs, only parsing at once answers these.
        monkeypatch.setattr(_CommandProtocol, "callLater", task.Clock().callLater)
        connection = RedisConnection(reactor, parseRedisURL(redis_server.url), 2.0)
        connection.connect()
        try:
            key = uuid.uuid4().hex
            yield connection.execute("RPUSH", key, "a", "b", "c")
            replies = yield defer.gatherResults(
                [connection.execute("LRANGE", key, 0, -1) for _ in range(20)]
                + [connection.execute("GET", key).addErrback(lambda f: f.value)])
            assert replies[:20] == [["a", "b", "c"]] * 20
            assert isinstance(replies[20], txredisapi.ResponseError)
        finally:
            yield connection.disconnect()


class TestSharedRegistry:
    """Two instances (registries) over one Redis see one state and each other's notices."""

    @pytest_twisted.inlineCallbacks
    def test_twoInstancesShareStateAndNotices(self, redis_server):
        redis_server.flush()
        a = yield started(redis_server.url, "shared")
        b = yield started(redis_server.url, "shared")
        try:
            yield addHealthy(a, "w1")
            ended, capacity = Calls(), Calls()
            b.addSessionEndedListener(ended)
            b.addCapacityListener(capacity)
            yield b.whenNoticesDelivered()
            capacity.calls.clear()
            first = yield a.assign(request("k", instance="ia"), 1)
            second = yield b.assign(request("k", instance="ib"), 1)
            assert (first.fresh, second.fresh) == (True, False)
            assert first.worker.id == second.worker.id == "w1"
            assert isinstance((yield b.assign(request("other"), 2)), Queued)
            yield a.endSession("k")
            yield b.whenNoticesDelivered()
            assert ended.calls == [("k",)] and capacity.calls
        finally:
            yield a.stopService()
            yield b.stopService()

    @pytest_twisted.inlineCallbacks
    def test_stopClosesItsConnections(self, redis_server):
        observer = yield started(redis_server.url)
        registry = yield started(redis_server.url)
        try:
            @defer.inlineCallbacks
            def clients():
                return len((yield observer.connection.execute("CLIENT", "LIST")).splitlines())

            before = yield clients()
            yield registry.stopService()
            # Commands and subscriber: the server may see the goodbye a bit later.
            yield waitFor(clients, lambda n: n == before - 2, timeout=1, interval=0.02,
                          what=f"{before - 2} Redis clients")
            with pytest.raises(NotConnected):
                yield registry.listWorkers()
        finally:
            yield observer.stopService()


def untilAnswered(registry, within):
    """Retry a cheap call until the registry answers again; fail after ``within`` s."""

    async def answer():
        try:
            return await registry.queueInfo(reactor.seconds())
        except Exception:
            return None

    return waitFor(answer, lambda info: info is not None, timeout=within, interval=0.1,
                   what="the registry answering")


class TestSynchronousCallers:
    @pytest_twisted.inlineCallbacks
    def test_redisPyRunsTheSameOperations(self, redis_server):
        """What a Lambda handler does: the same scripts, run with redis-py."""
        redis_server.flush()
        registry = yield started(redis_server.url, "lambda")
        capacity, ended = Calls(), Calls()
        registry.addCapacityListener(capacity)
        registry.addSessionEndedListener(ended)
        client = redis.Redis.from_url(redis_server.url)
        keys = Keys("lambda").scriptKeys()

        def run(op):
            return op.decode(client.eval(op.source, len(keys), *keys, *op.args))

        try:
            yield addHealthy(registry, "w1")
            yield registry.assign(request("a"), 1)
            yield registry.whenNoticesDelivered()
            capacity.calls.clear()
            worker = run(redis_ops.setWorkerState("w1", DEAD, 5))
            assert (worker.state, worker.sessions, worker.state_since) == (DEAD, (), 5)
            assert run(redis_ops.getWorker("w1")) == (yield registry.getWorker("w1"))
            yield registry.whenNoticesDelivered()
            assert capacity.calls and ended.calls == [("a",)]
            assert (yield registry.getSession("a")) is None
        finally:
            client.close()
            yield registry.stopService()


class TestRedisFaults:
    @pytest_twisted.inlineCallbacks
    def test_callsFailFastWhileRedisIsDownAndWorkAfterItsBack(self, own_redis_server):
        registry = yield started(own_redis_server.url, timeout=0.5)
        try:
            yield addHealthy(registry, "w1")
            own_redis_server.stop()
            for call in (lambda: registry.assign(request("a"), 1), registry.listWorkers):
                began = reactor.seconds()
                with pytest.raises((defer.TimeoutError, txredisapi.ConnectionError)):
                    yield call()
                assert reactor.seconds() - began < 1.0
            own_redis_server.start()
            yield untilAnswered(registry, within=15)
            # the data went with the process (no persistence): serve afresh
            yield addHealthy(registry, "w1")
            assert isinstance((yield registry.assign(request("a"), 2)), Assigned)
        finally:
            yield registry.stopService()

    @pytest_twisted.inlineCallbacks
    def test_noticesFlowAgainAfterARestart(self, own_redis_server):
        registry = yield started(own_redis_server.url, timeout=0.5)
        capacity, ended = Calls(), Calls()
        registry.addCapacityListener(capacity)
        registry.addSessionEndedListener(ended)
        try:
            own_redis_server.stop()
            own_redis_server.start()
            capacity.calls.clear()
            # resubscribing tells capacity once: a notice may have been lost
            yield waitFor(lambda: capacity.calls, timeout=15, interval=0.1,
                          what="capacity told after resubscribing")
            yield untilAnswered(registry, within=5)
            yield addHealthy(registry, "w1")
            yield registry.assign(request("a"), 1)
            yield registry.whenNoticesDelivered()
            capacity.calls.clear()
            yield registry.endSession("a")
            yield registry.whenNoticesDelivered()
            assert capacity.calls and ended.calls == [("a",)]
        finally:
            yield registry.stopService()


class TestLostDataAndDeadInstances:
    @pytest.fixture
    def registry(self, redis_server):
        redis_server.flush()
        registry = pytest_twisted.blockon(started(redis_server.url))
        yield registry
        pytest_twisted.blockon(registry.stopService())

    @pytest_twisted.inlineCallbacks
    def test_epochChangesWhenRedisLosesItsData(self, registry, redis_server):
        assert (yield registry.epochChanged()) is False
        assert (yield registry.epochChanged()) is False
        redis_server.flush()
        assert (yield registry.epochChanged()) is True
        assert (yield registry.epochChanged()) is False

    @pytest_twisted.inlineCallbacks
    def test_reassertAfterFlushAll(self, registry, redis_server):
        yield addHealthy(registry, "w1", capacity=10)
        yield registry.assign(request("a", cost=3, instance="i1"), 1)
        yield registry.assign(request("a", cost=3, instance="i1"), 1)
        assert (yield registry.instanceHeartbeat("i1", 10)) is False
        assert (yield registry.instanceHeartbeat("i1", 10)) is True
        redis_server.flush()
        assert (yield registry.instanceHeartbeat("i1", 10)) is False
        session = yield registry.reassertSession(
            "a", "w1", "ws://w1.test:9000", "static", 10, 3, "i1", ["r1", "r2"], 50)
        assert (session.worker, session.cost, session.connections, session.since) == (
            "w1", 3, 2, 50)
        worker = yield registry.getWorker("w1")
        assert (worker.state, worker.url, worker.capacity, worker.load, worker.sessions) == (
            HEALTHY, "ws://w1.test:9000", 10, 3, ("a",))
        assert worker.idle_since is None and worker.last_seen == 50
        # idempotent; another instance adds its own connections, not the cost
        yield registry.reassertSession(
            "a", "w1", "ws://w1.test:9000", "static", 10, 3, "i1", ["r1", "r2"], 51)
        session = yield registry.reassertSession(
            "a", "w1", "ws://w1.test:9000", "static", 10, 3, "i2", ["r3"], 52)
        assert (session.connections, session.since) == (3, 50)
        assert (yield registry.getWorker("w1")).load == 3
        # the rebuilt registry works on: releases count down, new keys assign
        yield registry.release("a", "i1", 53, "r1")
        yield registry.release("a", "i1", 53, "r1")  # once only
        assert (yield registry.getSession("a")).connections == 2
        fresh = yield registry.assign(request("b", cost=7), 54)
        assert (fresh.fresh, fresh.worker.id, fresh.worker.load) == (True, "w1", 10)
        # re-asserted with other connections: those it had are counted out
        session = yield registry.reassertSession(
            "a", "w1", "ws://w1.test:9000", "static", 10, 3, "i1", ["r4", "r5"], 55)
        assert session.connections == 3
        assert (yield registry.release("a", "i1", 56, "r2")).connections == 3
        yield auditRedisRegistry(registry)

    @pytest_twisted.inlineCallbacks
    def test_indexesAfterLostDataAndReassertion(self, registry, redis_server):
        """Redis loses its data: the indexes go with the records, and come back with them."""
        yield addHealthy(registry, "w1", capacity=10)
        yield addHealthy(registry, "w2", capacity=30)
        yield registry.assign(request("a", cost=4), 1)
        yield registry.assign(request("big", cost=25, instance="i2"), 1)
        redis_server.flush()
        assert (yield registry.epochChanged()) is True
        assert (yield registry.largestCapacity()) == 0
        queued = yield registry.assign(request("new", cost=6), 2)
        assert isinstance(queued, Queued)
        yield auditRedisRegistry(registry)
        yield registry.reassertSession("a", "w1", "ws://w1.test:9000", "static", 10, 4, "i1", ["r"], 3)
        yield auditRedisRegistry(registry)
        assert (yield registry.countWorkers())[HEALTHY] == 1
        assert (yield registry.largestCapacity()) == 10
        # w1 is back, with its load: pack fills it, and only as far as it has room
        retried = yield registry.assign(request("new", cost=6, ticket=queued.ticket), 4)
        assert (retried.worker.id, retried.worker.load) == ("w1", 10)
        yield registry.reassertSession(
            "big", "w2", "ws://w2.test:9000", "static", 30, 25, "i2", ["r"], 5)
        assert (yield registry.largestCapacity()) == 30
        placed = yield registry.assign(request("more", cost=5), 6)
        assert (placed.worker.id, placed.worker.load) == ("w2", 30)
        yield auditRedisRegistry(registry)

    @pytest_twisted.inlineCallbacks
    def test_reconcileReadsWhatIsHeldAsItGoes(self, registry):
        """
        Reconciled a page at a time, ``held`` is read as each page is sent:
        an assign sent after reconciling began, and held before it was sent,
        runs before any page's reconcile and is spared.
        """
        yield addHealthy(registry, "w1", capacity=200)
        held = {}
        for i in range(80):
            first = request(f"k{i:03}")
            yield registry.assign(first, 1)
            held[first.key] = {first.request_id}
        reconciling = registry.reconcile("i1", held, 5)
        again = request("k040")
        held["k040"].add(again.request_id)
        yield registry.assign(again, 6)
        assert (yield reconciling) == []
        assert (yield registry.getSession("k040")).connections == 2

    @pytest_twisted.inlineCallbacks
    def test_reassertLeavesAKeyReboundElsewhere(self, registry):
        yield addHealthy(registry, "w2")
        yield registry.assign(request("a", instance="i2"), 1)
        session = yield registry.reassertSession(
            "a", "w1", "ws://w1.test:9000", "static", 1, 1, "i1", ["r"], 2)
        assert (session.worker, session.connections) == ("w2", 1)
        assert (yield registry.getWorker("w1")).sessions == ()

    @pytest_twisted.inlineCallbacks
    def test_reassertNeedsALiveConnection(self, registry):
        with pytest.raises(ValueError):
            yield registry.reassertSession("a", "w1", "ws://w1:1", "static", 1, 1, "i1", [], 2)

    @pytest_twisted.inlineCallbacks
    def test_dropInstanceStartsTheGraceOfItsSessions(self, registry):
        yield addHealthy(registry, "w1", capacity=10)
        yield registry.assign(request("shared", instance="i1"), 1)
        yield registry.assign(request("shared", instance="i2"), 1)
        yield registry.assign(request("mine", instance="i1"), 1)
        yield registry.assign(request("mine", instance="i1"), 1)
        assert (yield registry.dropInstance("i1", 50)) == ["mine"]
        mine = yield registry.getSession("mine")
        assert (mine.connections, mine.disconnected_at) == (0, 50)
        shared = yield registry.getSession("shared")
        assert (shared.connections, shared.disconnected_at) == (1, None)
        assert (yield registry.release("shared", "i1", 51)).connections == 1
        assert (yield registry.expireSessions(60, 10)) == ["mine"]
        assert (yield registry.dropInstance("i1", 70)) == []
        yield auditRedisRegistry(registry)

    @pytest_twisted.inlineCallbacks
    def test_sweepDropsInstancesWhoseHeartbeatExpired(self, registry):
        yield addHealthy(registry, "w1", capacity=10)
        yield registry.instanceHeartbeat("dying", 0.2)
        yield registry.instanceHeartbeat("alive", 10)
        yield registry.assign(request("a", instance="dying"), 1)
        yield registry.assign(request("b", instance="alive"), 1)
        yield registry.assign(request("c", instance="silent"), 1)  # never beats: never swept
        assert (yield registry.sweepInstances(2)) == []
        # Redis expires the dying one's heartbeat (0.2 s): the next sweep drops it.
        yield waitFor(lambda: registry.sweepInstances(3), lambda swept: swept == ["dying"],
                      timeout=2, what="dying swept")
        connections = {s.key: s.connections for s in (yield registry.listSessions())}
        assert connections == {"a": 0, "b": 1, "c": 1}
        assert (yield registry.instanceHeartbeat("dying", 10)) is False


class DropAtOnce(protocol.Protocol):
    """A server that hangs up on every client: a Redis going away mid-AUTH."""

    def connectionMade(self):
        self.factory.dropped += 1
        self.transport.abortConnection()


class TestTLS:
    @pytest_twisted.inlineCallbacks
    def test_aVerifyingClientConnectsWithUserPasswordAndDb(self, tls_redis):
        registry = yield started(tls_redis.url(tls_redis.ca))  # subscribed over TLS too
        try:
            yield addHealthy(registry, "w1")
            assert isinstance((yield registry.assign(request("a"), 1)), Assigned)
            client = yield registry.connection.execute("CLIENT", "INFO")
            assert f" user={USER} " in client and " db=2 " in client
        finally:
            yield registry.stopService()

    @pytest.mark.parametrize("wrong", ["unknown CA", "host name"])
    @pytest_twisted.inlineCallbacks
    def test_anUnverifiedServerFailsClosed(self, tls_redis, wrong):
        url = (tls_redis.url(tls_redis.otherCA) if wrong == "unknown CA"
               else tls_redis.url(tls_redis.ca, host="localhost"))
        registry = RedisRegistry(reactor, url, "tls", timeout=0.5)
        registry.startService()
        try:
            with pytest.raises((defer.TimeoutError, txredisapi.ConnectionError)):
                yield registry.addWorker("w1", "ws://h:1", "static", 1, 0)
        finally:
            yield registry.stopService()
        check = yield started(tls_redis.url(tls_redis.ca), "tls")
        try:
            assert (yield check.listWorkers()) == []
        finally:
            yield check.stopService()

    @pytest_twisted.inlineCallbacks
    def test_aConnectionDroppedDuringAuthIsRetried(self, tmp_path):
        """txredisapi's own AUTH would stop reconnecting for good here."""
        server = TLSRedisServer(tmp_path)
        dropper = protocol.Factory.forProtocol(DropAtOnce)
        dropper.dropped = 0
        port = reactor.listenTCP(server.port, dropper, interface="127.0.0.1")
        registry = RedisRegistry(reactor, server.url(server.ca), "auth", timeout=0.5)
        registry.startService()
        try:
            with pytest.raises((defer.TimeoutError, txredisapi.ConnectionError)):
                yield registry.listWorkers()
            assert dropper.dropped
            yield port.stopListening()
            server.start()
            yield untilAnswered(registry, within=15)
            yield addHealthy(registry, "w1")
            assert [w.id for w in (yield registry.listWorkers())] == ["w1"]
        finally:
            yield registry.stopService()
            server.stop()


@pytest.mark.parametrize("requestId", ["", "a b", "a\tb", " a", "a\n", "a\u00a0b"])
def test_a_request_id_with_space_in_it_is_refused_before_any_script(requestId):
    """The scripts take request ids listed with spaces between: one must be a single word."""
    from wslb.registry import redis_ops

    with pytest.raises(ValueError, match="non-empty word"):
        redis_ops.abandon("k", requestId, 1.0)
    assert redis_ops.abandon("k", "0f" * 16, 1.0).args[1] == "0f" * 16
