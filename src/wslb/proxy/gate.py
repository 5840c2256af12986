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


class Gate:
    """Counts this listener's connections and refuses what breaks a limit."""

    def __init__(self, maxConnections, allowedOrigins, retryAfter, metrics):
        self.connections = 0
        self._maxConnections = maxConnections
        self._originAllowed = originMatcher(allowedOrigins)
        self._retryAfter = retryAfter
        self._metrics = metrics

    def connectionMade(self, leg):
        self.connections += 1

    def connectionLost(self, leg):
        self.connections -= 1

    def admit(self, leg, request):
        if self.connections > self._maxConnections:
            self.limitHit("max_connections")
            raise HandshakeRefused(
                503, "too many connections",
                [("Retry-After", str(self._retryAfter))],
            )
        origin = request.headers.get("origin")
        if origin is not None and not self._originAllowed(origin):
            raise HandshakeRefused(403, "origin not allowed")

    def accepted(self):
        self._metrics.handshakes.labels("ok").inc()

    def refused(self, code):
        self._metrics.handshakes.labels(str(code)).inc()

    def limitHit(self, limit):
        self._metrics.limitHits.labels(limit).inc()
