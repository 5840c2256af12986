"""
One wslb instance's way to Redis: commands and scripts over a reconnecting
txredisapi connection, every call bounded by a timeout, and a subscriber
connection that subscribes again after every reconnect.

Three txredisapi behaviours shape this module (DESIGN §9):
  - a command issued while disconnected waits until a connection is back,
    which may be never: every call here fails after ``timeout`` instead, so
    callers can answer 503;
  - subscriptions are not restored after a reconnect: the subscriber
    subscribes whenever its connection becomes ready;
  - txredisapi gives up reconnecting for good when its AUTH fails in any
    way, a connection dropped during AUTH included (a restarting server, a
    failed TLS handshake). So txredisapi is given no credentials: our
    protocols send AUTH and SELECT first thing on each connection, and only
    the server refusing them stops the reconnecting.

The factories are txredisapi's (ClientService inside), built like
``lazyConnectionPool`` builds its own but with these protocols, and retry
every second or so instead of backing off to 10 s: after Redis comes back
empty, every instance must re-assert its sessions before the pool hands
their workers out again (``REGISTRY_SETTLE`` in L{wslb.service}), so no
instance may notice Redis is back much later than the others.
"""

from __future__ import annotations

import functools
import hashlib
import re

import txredisapi
from twisted.internet import defer, ssl
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.logger import Logger

from wslb.timeouts import Timeouts

log = Logger()

# Command connections (the subscriber has its own). With one, Redis runs an
# instance's calls in the order they were issued, as the memory registry
# does. What the registry's callers rely on is weaker, and holds for any
# number: a call issued after another's Deferred fired sees all of that
# call's effects (each call is one atomic script); notices reach listeners
# in the order Redis published them (one subscriber connection); and calls
# issued together without waiting (the router's ticket upkeep, a scrape's
# reads, an end and a release of one key) do not depend on each other's
# order. More connections did not cut the tail of handshake calls under load
# (bench/scale.py --only pool; bench/RESULTS.md): Redis runs one script at a
# time however many connections bring them. So: one.
POOL_SIZE = 1

# The longest wait between two connection attempts (txredisapi adds 12 %
# jitter): an instance notices that Redis is back within about this long.
RECONNECT_DELAY = 1.0

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


@functools.cache
def scriptDigest(source):
    """The SHA1 EVALSHA names ``source`` by; the scripts are few and fixed."""
    return hashlib.sha1(source.encode("utf-8")).hexdigest()


class NotConnected(Exception):
    """A command was issued before connect() or after disconnect()."""


def tlsOptions(address):
    """
    Client TLS options verifying the server's certificate and host name, or
    None for plain TCP. Reads the CA file now, so a bad one fails at start.
    """
    if not address.tls:
        return None
    trustRoot = None  # the platform's trust store
    if address.ca_file is not None:
        with open(address.ca_file, "rb") as f:
            blocks = _PEM_CERTIFICATE.findall(f.read())
        if not blocks:
            raise ValueError(f"CA file {address.ca_file!r}: no PEM certificate in it")
        trustRoot = ssl.trustRootFromCertificates(
            [ssl.Certificate.loadPEM(block) for block in blocks]
        )
    return ssl.optionsForClientTLS(address.host, trustRoot=trustRoot)


class RedisConnection:
    """
    Talk to the Redis at ``address`` (a L{RedisAddress}); every call fails
    after ``timeout`` seconds on ``clock`` rather than hang.
    """

    def __init__(self, clock, address, timeout):
        self.clock = clock
        self.address = address
        self.timeout = timeout
        self._timeouts = Timeouts(clock, timeout)  # one timer for every call's bound
        self._tls = tlsOptions(address)
        self._commands = None
        self._subscriber = None
        self.losses = 0  # command connections dropped: Redis may have restarted

    def _connect(self, factory):
        from twisted.internet import reactor

        endpoint = HostnameEndpoint(reactor, self.address.host, self.address.port,
                                    timeout=self.timeout)
        if self._tls is not None:
            endpoint = wrapClientTLS(self._tls, endpoint)
        factory.startConnecting(endpoint)
        return factory

    def connect(self):
        """Start connecting; commands wait (bounded) until connected."""
        self._commands = self._connect(_CommandFactory(self.address, self._lost))

    def _lost(self):
        self.losses += 1

    def subscribe(self, channel, received, subscribed):
        """
        Keep a subscription to ``channel``: ``received(message)`` for each
        message, ``subscribed()`` each time the subscription is (re)made.
        """
        self._subscriber = self._connect(
            _SubscriberFactory(self.address, channel, received, subscribed, self))

    def disconnect(self):
        """Close every connection; fires once they are closed."""
        closing = [f.disconnect() for f in (self._commands, self._subscriber) if f is not None]
        self._commands = self._subscriber = None
        return defer.gatherResults(closing, consumeErrors=True).addCallback(lambda _: None)

    def execute(self, *command):
        """Run one command (``"SET", key, value, "NX"``): a bounded Deferred."""
        return self._bounded(lambda redis: redis.execute_command(*command))

    def runScript(self, source, keys, args):
        """EVALSHA the Lua ``source`` (EVAL on NOSCRIPT): a bounded Deferred."""
        sha = scriptDigest(source)

        def evalsha(redis):
            d = redis.execute_command("EVALSHA", sha, len(keys), *keys, *args)
            return d.addErrback(self._unknownScript, redis, source, keys, args)

        return self._bounded(evalsha)

    @staticmethod
    def _unknownScript(failure, redis, source, keys, args):
        """Redis lacks the script (it restarted, or never saw it): send it whole."""
        failure.trap(txredisapi.ResponseError)
        if not str(failure.value).startswith("NOSCRIPT"):
            return failure
        return redis.execute_command("EVAL", source, len(keys), *keys, *args)

    def _bounded(self, call):
        if self._commands is None:
            return defer.fail(NotConnected("Redis connection not started"))
        return self._timeouts.bound(defer.maybeDeferred(call, self._target()))

    def _target(self):
        """
        The connected command connection with the fewest replies pending,
        else txredisapi's handler, which waits for one: going through the
        handler costs a generator and two Deferreds per command, on every
        handshake.
        """
        connected = [protocol for protocol in self._commands.pool if protocol.connected]
        if not connected:
            return self._commands.handler
        return min(connected, key=lambda protocol: len(protocol.replyQueue.waiting))


class _Authenticating:
    """AUTH and SELECT sent first on every connection; see the module docstring."""

    def connectionMade(self):
        address = self.factory.address
        if address.password is not None:
            credentials = [address.username] if address.username else []
            self.execute_command("AUTH", *credentials, address.password).addErrback(
                self._refused, "AUTH")
        if address.db:
            self.execute_command("SELECT", address.db).addErrback(self._refused, "SELECT")
        # Commands queue behind AUTH/SELECT on this connection, so the
        # connection may go into service at once.
        return super().connectionMade()

    def _refused(self, failure, command):
        if failure.check(txredisapi.ResponseError):
            log.error("Redis refused {command} ({error}): not reconnecting",
                      command=command, error=failure.getErrorMessage())
            self.factory.stopTrying()
            self.transport.loseConnection()
        # Otherwise the connection dropped: txredisapi reconnects.


class _RepliesAtOnce:
    """
    Parse every reply a read brought, in that read. txredisapi's parser
    (without hiredis) leaves the bytes after each bulk string to a
    ``callLater(0)``: one reactor turn per reply, and per element of an
    array, when replies to concurrent commands arrive together.
    """

    _unparsed = b""

    def setLineMode(self, extra=b""):
        self.line_mode = 1
        self._unparsed = extra  # dataReceived's loop goes on with it

    def dataReceived(self, data, unpause=False):
        super().dataReceived(data)
        while self._unparsed:
            data, self._unparsed = self._unparsed, b""
            super().dataReceived(data)


class _CommandProtocol(_RepliesAtOnce, _Authenticating, txredisapi.RedisProtocol):
    def _build_command(self, *args, **kwargs):
        """txredisapi's RESP encoding of a command, in half its time (two per handshake)."""
        encode = self._encode_value
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = encode(arg)
            parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
        return b"".join(parts)

    def connectionLost(self, why):
        self.factory.lost()
        return super().connectionLost(why)


class _CommandFactory(txredisapi.RedisFactory):
    protocol = _CommandProtocol
    maxDelay = RECONNECT_DELAY

    def __init__(self, address, lost):
        super().__init__(f"{address.host}:{address.port}", None, POOL_SIZE, isLazy=True,
                         convertNumbers=False)
        self.address = address
        self.lost = lost  # called when a command connection drops


class _SubscriberProtocol(_RepliesAtOnce, _Authenticating, txredisapi.SubscriberProtocol):
    def connectionMade(self):
        self.whenConnected().addCallback(self.factory.ready)
        return super().connectionMade()

    def messageReceived(self, pattern, channel, message):
        self.factory.received(message)


class _SubscriberFactory(txredisapi.RedisFactory):
    """One connection that subscribes to ``channel`` whenever it is ready."""

    protocol = _SubscriberProtocol
    maxDelay = RECONNECT_DELAY

    def __init__(self, address, channel, received, subscribed, connection):
        super().__init__(f"{address.host}:{address.port}", None, 1, isLazy=True,
                         convertNumbers=False)
        self.address = address
        self.received = received
        self._channel = channel
        self._subscribed = subscribed
        self._connection = connection

    def ready(self, protocol):
        d = protocol.subscribe(self._channel)
        d.addTimeout(self._connection.timeout, self._connection.clock)
        d.addCallbacks(lambda _: self._subscribed(), self._failed, errbackArgs=(protocol,))

    def _failed(self, failure, protocol):
        # Without its subscription the connection is useless: drop it, so
        # that txredisapi reconnects and we subscribe again.
        log.warn("Redis subscribe failed ({error}); reconnecting",
                 error=failure.getErrorMessage())
        if protocol.transport is not None:
            protocol.transport.abortConnection()
