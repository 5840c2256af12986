"""RedisLock and RedisLeader against a real redis-server, with short real TTLs."""

import uuid

import pytest
import pytest_twisted
from _polling import waitFor
from twisted.internet import defer, reactor, task
from zope.interface.verify import verifyObject

from wslb.pool._interfaces import ILeader
from wslb.pool.redis_leader import RedisLeader
from wslb.redis_url import parseRedisURL
from wslb.registry.keys import Keys
from wslb.registry.locks import RedisLock
from wslb.registry.redis import RedisRegistry
from wslb.registry.redis_connection import RedisConnection


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


@pytest.fixture
def connect(redis_server):
    """Make connections to the session's Redis (flushed); all closed afterwards."""
    redis_server.flush()
    made = []

    def make(server=redis_server, timeout=1.0):
        connection = RedisConnection(reactor, parseRedisURL(server.url), timeout)
        connection.connect()
        made.append(connection)
        return connection

    yield make
    pytest_twisted.blockon(defer.gatherResults([c.disconnect() for c in made]))


@pytest.fixture
def lockKey():
    return "{test}:lock:" + uuid.uuid4().hex


class TestRedisLock:
    @pytest_twisted.inlineCallbacks
    def test_twoContendersExactlyOneHolds(self, connect, lockKey):
        a = RedisLock(connect(), lockKey, 5, reactor)
        b = RedisLock(connect(), lockKey, 5, reactor)
        results = yield defer.gatherResults([a.acquire(), b.acquire()])
        assert sorted(results) == [False, True]
        holder, other = (a, b) if results[0] else (b, a)
        assert (yield holder.check()) and not (yield other.check())
        assert other.token is None

    @pytest_twisted.inlineCallbacks
    def test_releaseByANonHolderDoesNothing(self, connect, lockKey):
        connection = connect()
        holder = RedisLock(connection, lockKey, 5, reactor)
        assert (yield holder.acquire())
        other = RedisLock(connection, lockKey, 5, reactor)
        assert (yield other.release()) is False
        other.token = "forged"
        assert (yield other.release()) is False
        assert (yield other.renew()) is False
        assert (yield holder.check())
        assert (yield holder.release()) is True
        assert (yield connection.execute("GET", lockKey)) is None

    @pytest_twisted.inlineCallbacks
    def test_renewalKeepsTheLockPastItsTTL(self, connect, lockKey):
        connection = connect()
        lock = RedisLock(connection, lockKey, 0.3, reactor)
        assert (yield lock.acquire())
        for _ in range(3):
            yield sleep(0.15)  # the thing tested: half the TTL, renewed
            assert (yield lock.renew())
        assert (yield lock.check())
        assert 0 < (yield connection.execute("PTTL", lockKey)) <= 300

    @pytest_twisted.inlineCallbacks
    def test_expiresAfterItsTTL(self, connect, lockKey):
        first = RedisLock(connect(), lockKey, 0.3, reactor)
        second = RedisLock(connect(), lockKey, 5, reactor)
        assert (yield first.acquire())
        assert not (yield second.acquire())
        yield sleep(0.4)  # the thing tested: the TTL runs out
        assert (yield second.acquire())
        assert (yield first.renew()) is False
        assert (yield first.release()) is False
        assert (yield second.check())

    @pytest_twisted.inlineCallbacks
    def test_acquireWaitsBoundedly(self, connect, lockKey):
        holder = RedisLock(connect(), lockKey, 0.3, reactor)
        assert (yield holder.acquire())
        patient = RedisLock(connect(), lockKey, 5, reactor)
        hasty = RedisLock(connect(), lockKey, 5, reactor)
        began = reactor.seconds()
        assert (yield patient.acquire(wait=2.0))
        assert 0.2 < reactor.seconds() - began < 1.0
        began = reactor.seconds()
        assert not (yield hasty.acquire(wait=0.2))
        assert 0.15 < reactor.seconds() - began < 0.6


@pytest.fixture
def leader(connect):
    """Make RedisLeaders (started); every one still running is stopped afterwards."""
    made = []

    def make(namespace, ttl=30, connection=None):
        """``connection``: a RedisConnection or a RedisRegistry (default: a new connection)."""
        leader = RedisLeader(connection or connect(), namespace, ttl, reactor)
        leader.startService()
        made.append(leader)
        return leader

    yield make
    pytest_twisted.blockon(defer.gatherResults(
        [lock.stopService() for lock in made if lock.running]))


class TestRedisLeader:
    @pytest_twisted.inlineCallbacks
    def test_oneLeaderAndTheFencingTokenGrowsOnEachHandover(self, leader):
        namespace = uuid.uuid4().hex[:8]
        contenders = [leader(namespace, ttl=0.6) for _ in range(3)]
        assert verifyObject(ILeader, contenders[0])
        tokens = []
        for _ in range(3):
            yield waitFor(lambda: any(c.isLeader() for c in contenders), timeout=1.0, interval=0.02)
            for _ in range(10):  # never two at once
                assert sum(c.isLeader() for c in contenders) == 1
                yield sleep(0.03)  # the thing tested: one leader all along
            current = next(c for c in contenders if c.isLeader())
            assert (yield current.checkLeader())
            tokens.append(current.fencingToken)
            yield current.stopService()
            contenders.remove(current)
            contenders.append(leader(namespace, ttl=0.6))
        assert tokens == sorted(tokens) and len(set(tokens)) == 3

    @pytest_twisted.inlineCallbacks
    def test_stopReleasesTheLockAtOnce(self, connect, leader):
        connection = connect()
        namespace = uuid.uuid4().hex[:8]
        first = leader(namespace, connection=connection)
        yield waitFor(first.isLeader, timeout=1.0, interval=0.02)
        yield first.stopService()
        assert not first.isLeader()
        assert (yield connection.execute("GET", Keys(namespace).leader)) is None
        successor = leader(namespace, connection=connection)
        yield waitFor(successor.isLeader, timeout=0.5, interval=0.02)
        assert successor.fencingToken == first.fencingToken + 1

    @pytest_twisted.inlineCallbacks
    def test_sharesARegistrysConnection(self, redis_server, leader):
        registry = RedisRegistry(reactor, redis_server.url, "shared")
        registry.startService()
        try:
            current = leader("shared", connection=registry)
            yield waitFor(current.isLeader, timeout=1.0, interval=0.02)
            assert (yield current.checkLeader())
            yield current.stopService()
        finally:
            yield registry.stopService()

    @pytest_twisted.inlineCallbacks
    def test_checkLeaderNoticesATakenLock(self, connect, leader):
        connection = connect()
        namespace = uuid.uuid4().hex[:8]
        current = leader(namespace, connection=connection)
        yield waitFor(current.isLeader, timeout=1.0, interval=0.02)
        yield connection.execute("SET", Keys(namespace).leader, "someone else")
        assert (yield current.checkLeader()) is False
        assert not current.isLeader()
        yield current.stopService()
        assert (yield connection.execute("GET", Keys(namespace).leader)) == "someone else"

    @pytest_twisted.inlineCallbacks
    def test_losingRedisEndsLeadershipWithinTheTTL(self, own_redis_server, connect, leader):
        current = leader("lost", ttl=0.6, connection=connect(own_redis_server, timeout=0.2))
        yield waitFor(current.isLeader, timeout=1.0, interval=0.02)
        own_redis_server.stop()
        lost = reactor.seconds()
        yield waitFor(lambda: not current.isLeader(), timeout=1.0, interval=0.02)
        assert reactor.seconds() - lost <= 0.6 + 0.2  # the TTL, and polling slack
        assert (yield current.checkLeader()) is False
        own_redis_server.start()
        yield waitFor(current.isLeader, timeout=15, interval=0.02)
