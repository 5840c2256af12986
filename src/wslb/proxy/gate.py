"""
Admission: the limits a handshake must pass before any registry work.
"""

from __future__ import annotations

import re

from wslb.proxy.errors import HandshakeRefused


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
    of up to ``rate`` (at least 1). Full buckets are forgotten, so memory
    follows the number of recently busy addresses.
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
        if len(self._buckets) > 10000:
            self._forgetFull(now)
        return True

    def _forgetFull(self, now):
        self._buckets = {
            address: (tokens, when) for address, (tokens, when) in self._buckets.items()
            if tokens + (now - when) * self._rate < self._burst
        }


class Gate:
    """Counts this listener's connections and refuses what breaks a limit."""

    def __init__(self, maxConnections, allowedOrigins, retryAfter, metrics, clock,
                 perIpConnections=0, perIpRate=0):
        self.connections = 0
        self._maxConnections = maxConnections
        self._originAllowed = originMatcher(allowedOrigins)
        self._retryAfter = retryAfter
        self._metrics = metrics
        self._perIpConnections = perIpConnections
        self._byAddress = {}  # client address -> open connections
        self._rate = RateLimiter(perIpRate, clock) if perIpRate else None

    @staticmethod
    def address(leg):
        """The client's address: the real one behind a PROXY-protocol listener."""
        return getattr(leg.transport.getPeer(), "host", "unix")

    def connectionMade(self, address):
        self.connections += 1
        self._byAddress[address] = self._byAddress.get(address, 0) + 1

    def connectionLost(self, address):
        self.connections -= 1
        left = self._byAddress.get(address, 1) - 1
        if left > 0:
            self._byAddress[address] = left
        else:
            self._byAddress.pop(address, None)

    def admit(self, leg, request):
        if self.connections > self._maxConnections:
            self.limitHit("max_connections")
            raise HandshakeRefused(
                503, "too many connections",
                [("Retry-After", str(self._retryAfter))],
            )
        address = self.address(leg)
        if self._perIpConnections and self._byAddress.get(address, 0) > self._perIpConnections:
            self.limitHit("per_ip_connections")
            raise HandshakeRefused(429, "too many connections from this address")
        if self._rate is not None and not self._rate.allow(address):
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
