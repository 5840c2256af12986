"""
Admission: the limits a connection must pass, at accept (how many, how many
from one address) and with its handshake (rate, origin), before any registry
work.
"""

from __future__ import annotations

import ipaddress
import re
import resource

from twisted.application.internet import TimerService

from wslb.logs import Logger
from wslb.proxy.errors import HandshakeRefused

log = Logger()

# Descriptors kept for what is not a user: Redis, the admin port, health
# checks, local workers' pipes, logs. Each relayed user takes two.
RESERVED_DESCRIPTORS = 256

# How often the per-address rate buckets that refilled are forgotten.
SWEEP_INTERVAL = 10.0

# Behind a PROXY header the client's address is known only once the header
# is read: until then a connection is counted with none (Gate.accept).
UNKNOWN = "<before the PROXY header>"


def connectionLimit(configured, descriptors=None):
    """
    ``[listen] max_connections``, or fewer when the open-file limit (the soft
    RLIMIT_NOFILE, or ``descriptors``) has room for fewer users: two
    descriptors each, plus a reserve. Logged: it is the instance's capacity.
    """
    if descriptors is None:
        descriptors = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    fit = configured
    if descriptors != resource.RLIM_INFINITY:
        fit = max(1, (descriptors - RESERVED_DESCRIPTORS) // 2)
    limit = min(configured, fit)
    log.info("accepting at most {limit} connections ([listen] max_connections = {configured};"
             " the open-file limit {descriptors} has room for {fit}: two descriptors a user,"
             " {reserved} kept; raise it with ulimit -n or systemd's LimitNOFILE=)",
             limit=limit, configured=configured, descriptors=descriptors, fit=fit,
             reserved=RESERVED_DESCRIPTORS)
    return limit


def addressKey(host):
    """
    What a per-address limit counts: an IPv4 address, or an IPv6 /64 (one
    host's usual allotment: counting single IPv6 addresses limits nothing).
    """
    if ":" not in host:
        return host
    try:
        ip = ipaddress.IPv6Address(host.partition("%")[0])
    except ValueError:
        return host
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return f"{ipaddress.IPv6Address(int(ip) >> 64 << 64)}/64"


def originMatcher(allowed):
    """
    A predicate for ``allowed_origins``: exact origins, ``*.`` wildcards for
    one or more leading host labels ("https://*.example.com"), and "null"
    only when listed. Empty: any origin.
    """
    if not allowed:
        return lambda origin: True
    patterns = [
        re.compile(re.escape(entry).replace(r"\*\.", r"(?:[A-Za-z0-9-]+\.)+") + r"\Z",
                   re.IGNORECASE)
        for entry in allowed
    ]
    return lambda origin: any(p.match(origin) for p in patterns)


class RateLimiter:
    """
    A token bucket per client address: ``rate`` handshakes a second, bursts
    of up to ``rate`` (at least 1). Buckets that refilled are forgotten by
    L{sweep}, on a timer, so memory follows the number of recently busy
    addresses and no handshake pays for the others.
    """

    def __init__(self, rate, clock):
        self._rate = rate
        self._burst = max(1.0, rate)
        self._clock = clock
        self._buckets = {}  # address -> (tokens, when)

    def allow(self, address):
        now = self._clock.seconds()
        tokens, when = self._buckets.get(address, (self._burst, now))
        tokens = min(self._burst, tokens + (now - when) * self._rate)
        if tokens < 1:
            self._buckets[address] = (tokens, now)
            return False
        self._buckets[address] = (tokens - 1, now)
        return True

    def sweep(self):
        """Forget the buckets that refilled: they say nothing a new one would not."""
        now = self._clock.seconds()
        self._buckets = {
            address: (tokens, when) for address, (tokens, when) in self._buckets.items()
            if tokens + (now - when) * self._rate < self._burst
        }


class Gate:
    """
    Counts this listener's connections and refuses what breaks a limit.

    ``max_connections`` and ``per_ip_connections`` apply at accept, before
    anything is read, so silent sockets cannot pile up until the handshake
    timeout: a refused connection is closed at once. On a listener that
    reads a PROXY header first (``proxied``), the client's address arrives
    with it, so the per-address count starts with the first bytes after it.
    """

    def __init__(self, maxConnections, allowedOrigins, metrics, clock,
                 perIpConnections=0, perIpRate=0, proxied=False):
        self.connections = 0
        self._maxConnections = maxConnections
        self._originAllowed = originMatcher(allowedOrigins)
        self._metrics = metrics
        self._perIpConnections = perIpConnections
        self._proxied = proxied
        self._byAddress = {}  # addressKey -> open connections
        self._rate = RateLimiter(perIpRate, clock) if perIpRate else None
        self._clock = clock

    def sweeper(self):
        """The service that keeps the per-address rate table small (none without a rate)."""
        if self._rate is None:
            return None
        sweeper = TimerService(SWEEP_INTERVAL, self._rate.sweep)
        sweeper.clock = self._clock
        return sweeper

    @staticmethod
    def address(leg):
        """The client's address: the real one behind a PROXY-protocol listener."""
        return getattr(leg.transport.getPeer(), "host", "unix")

    def accept(self, leg):
        """
        A connection was accepted, nothing read yet. Returns None when a
        limit refuses it (close it at once), else what it is counted as:
        pass that to L{connectionLost}, and to L{identified} while it is
        L{UNKNOWN}.
        """
        if self.connections >= self._maxConnections:
            self.limitHit("max_connections")
            return None
        counted = UNKNOWN if self._proxied else self._countAddress(leg)
        if counted is not None:
            self.connections += 1
        return counted

    def identified(self, leg):
        """Behind a PROXY header, its first bytes after it: count the address, or None."""
        counted = self._countAddress(leg)
        if counted is None:
            self.connections -= 1
        return counted

    def _countAddress(self, leg):
        key = addressKey(self.address(leg))
        count = self._byAddress.get(key, 0)
        if self._perIpConnections and count >= self._perIpConnections:
            self.limitHit("per_ip_connections")
            return None
        self._byAddress[key] = count + 1
        return key

    def connectionLost(self, counted):
        """A connection L{accept} counted as ``counted`` is gone (None: it never was)."""
        if counted is None:
            return
        self.connections -= 1
        if counted is UNKNOWN:
            return
        left = self._byAddress[counted] - 1
        if left:
            self._byAddress[counted] = left
        else:
            del self._byAddress[counted]

    def admit(self, leg, request):
        """The handshake's own limits: the rate from its address, its Origin."""
        if self._rate is not None and not self._rate.allow(addressKey(self.address(leg))):
            self.limitHit("per_ip_rate")
            raise HandshakeRefused(
                429, "too many handshakes from this address", [("Retry-After", "1")])
        origin = request.headers.get("origin")
        if origin is not None and not self._originAllowed(origin):
            raise HandshakeRefused(403, "origin not allowed")

    def accepted(self):
        self._metrics.handshakes.labels("ok").inc()

    def refused(self, code):
        self._metrics.handshakes.labels(str(code)).inc()

    def limitHit(self, limit):
        self._metrics.limitHits.labels(limit).inc()
