"""
Locks in Redis for work that spans several round trips (DESIGN §2).

SET key token NX PX ttl with a random token; only whoever knows the token
can release the lock (compare-and-delete) or renew it (compare-and-pexpire),
so a holder whose lock expired and passed on cannot undo the next holder's.
A lock is only a lease: whoever acts on it must allow for having lost it
(the leader carries a fencing token for that, see RedisLeader).
"""

from __future__ import annotations

import uuid

from twisted.internet import defer, task

from wslb.registry.redis_ops import lockScript


class RedisLock:
    """
    One lock at ``key`` with a ``ttl`` in seconds, over a
    L{wslb.registry.redis_connection.RedisConnection} (every call bounded by
    its timeout; a failed call fails the Deferred).
    """

    def __init__(self, connection, key, ttl, clock):
        self._connection = connection
        self.key = key
        self._ttlMs = max(1, round(ttl * 1000))
        self._clock = clock
        self.token = None  # ours while we believe we hold the lock

    @defer.inlineCallbacks
    def acquire(self, wait=0.0, interval=0.05):
        """
        Take the lock, trying again every ``interval`` seconds for up to
        ``wait`` seconds while someone else holds it. Fires with True when
        taken, False when it stayed taken.
        """
        deadline = self._clock.seconds() + wait
        while True:
            token = uuid.uuid4().hex
            taken = yield self._connection.execute(
                "SET", self.key, token, "NX", "PX", self._ttlMs)
            if taken is not None:
                self.token = token
                return True
            if self._clock.seconds() + interval > deadline:
                return False
            yield task.deferLater(self._clock, interval, lambda: None)

    @defer.inlineCallbacks
    def renew(self):
        """Extend the lock by its TTL if it is still ours. Fires with a bool."""
        if self.token is None:
            return False
        renewed = yield self._connection.runScript(
            lockScript("lock_renew"), [self.key], [self.token, self._ttlMs])
        if not renewed:
            self.token = None
        return bool(renewed)

    @defer.inlineCallbacks
    def release(self):
        """Release the lock if it is still ours. Fires with True when released."""
        token, self.token = self.token, None
        if token is None:
            return False
        released = yield self._connection.runScript(
            lockScript("lock_release"), [self.key], [token])
        return bool(released)

    @defer.inlineCallbacks
    def check(self):
        """A round trip: does the lock still hold our token? Fires with a bool."""
        if self.token is None:
            return False
        holder = yield self._connection.execute("GET", self.key)
        return holder == self.token
