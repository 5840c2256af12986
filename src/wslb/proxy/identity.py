"""
Which session a handshake belongs to, and what it costs.

A key comes from the first configured source that has one; without one, and
with ``issue_cookie``, a key is minted and handed back as a cookie.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from urllib.parse import unquote_plus

from twisted.logger import Logger

from wslb.proxy.errors import HandshakeRefused, badRequest
from wslb.proxy.signing import InvalidKey
from wslb.registry import SESSION_KEY

log = Logger()


# A cost has at most this many digits: more is larger than any capacity.
_COST_DIGITS = 12

# Whitespace around cookie pairs, names and values (RFC 6265 §5.2: WSP).
_WSP = " \t"


@dataclass(frozen=True)
class Identity:
    key: str
    cost: int
    setCookie: str | None  # a Set-Cookie value to send with the 101, if minted


def cookieValue(header, name):
    """
    The value of the first cookie called ``name`` in a Cookie header, or
    None: pairs split at ";", name and value at the first "=", whitespace
    trimmed, and a value in DQUOTEs loses them (RFC 6265 §4.1.1) -- nothing
    else is unquoted. One pass over the header, whatever it holds (Python's
    SimpleCookie is quadratic on quoted backslashes before 3.11.10).
    """
    for pair in header.split(";"):
        pairName, equals, value = pair.partition("=")
        if equals and pairName.strip(_WSP) == name:
            value = value.strip(_WSP)
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None


def queryValue(query, name):
    """
    The first value of ``name`` in a query string, or None; only names are
    decoded until one matches, and only the matching value.
    """
    for pair in query.split("&"):
        rawName, _, value = pair.partition("=")
        if rawName == name or (("%" in rawName or "+" in rawName)
                               and unquote_plus(rawName) == name):
            return unquote_plus(value)
    return None


class HandshakeFields:
    """
    The places a source may read from: cookies, query, headers. Each is
    read for the names the sources ask for, when they ask, in one linear
    pass a name: the request head is bounded (MAX_REQUEST_HEAD), and so is
    the work a handshake may make wslb do with it.
    """

    def __init__(self, headers, query):
        self.headers = headers  # lower-cased name -> value
        self._query = query

    def read(self, source):
        """The value a ``cookie:``, ``query:`` or ``header:`` source names, or None."""
        if source.kind == "cookie":
            return cookieValue(self.headers.get("cookie", ""), source.name)
        if source.kind == "query":
            return queryValue(self._query, source.name)
        if source.kind == "header":
            return self.headers.get(source.name.lower())
        return None


def mintKey():
    """
    A new random session key. Never one starting "eyJ": signed, it would be
    taken for a JWT (1 key in 262,144 would lock its user out).
    """
    while True:
        key = secrets.token_urlsafe(24)
        if not key.startswith("eyJ"):
            return key


class Identifier:
    """
    Turns a handshake into an L{Identity}, or refuses it: 400 for a
    malformed key or cost, 401 for an unsigned or badly signed one when a
    L{Signer} is configured.
    """

    def __init__(self, session, cost, defaultCost, maxCapacity, signer=None):
        self._sources = session.sources
        self._issueCookie = session.issue_cookie
        self._cookieName = next(
            (s.name for s in session.sources if s.kind == "cookie"), None
        )
        self._cookieSecure = session.cookie_secure  # "auto": as the client connected
        self._cookieAttributes = "; Path=/; HttpOnly; SameSite=" + session.cookie_samesite
        if signer is not None:
            # The browser forgets it when wslb would refuse it: a new one is minted.
            self._cookieAttributes += f"; Max-Age={int(session.max_age)}"
        self._costSources = cost.sources
        if signer is not None:
            # A signed session's cost is what its issuer vouched for: a user
            # must not pin a whole worker with ?cost=1000.
            ignored = [s for s in cost.sources if s.kind != "claim"]
            self._costSources = tuple(s for s in cost.sources if s.kind == "claim")
            if ignored:
                log.warn("[cost] sources {ignored} are ignored: with signed session keys "
                         "only claim:* sources (verified JWT claims) are read",
                         ignored=", ".join(map(str, ignored)))
        self._costClasses = cost.classes
        self._defaultCost = defaultCost
        self._maxCapacity = maxCapacity  # callable: capacity can grow at run time
        self._signer = signer

    def identify(self, fields, secure=False):
        """``secure``: the client connected over TLS (its cookie gets Secure under "auto")."""
        key, claims, setCookie = self._key(fields, secure)
        return Identity(key, self._cost(fields, claims), setCookie)

    def sessionKey(self, fields):
        """
        The key a request carries, checked as a handshake's is (400, 401), or
        None: nothing is minted and no cost is read (a plain HTTP request
        reaches a session; it never starts one).
        """
        key, _, _ = self._key(fields, secure=False, mint=False)
        return key

    def _key(self, fields, secure, mint=True):
        for source in self._sources:
            value = fields.read(source)
            if value is None:
                continue
            claims = {}
            if self._signer is not None:
                if source.kind == "header" and value[:7].lower() == "bearer ":
                    value = value[7:].strip()
                try:
                    value, claims = self._signer.verify(value)
                except InvalidKey as e:
                    raise HandshakeRefused(
                        401, f"session key from {source}: {e}") from None
            if not SESSION_KEY.match(value):
                raise badRequest(
                    f"session key from {source} must be 1-128 characters of A-Za-z0-9._~-"
                )
            return value, claims, None
        if not mint:
            return None, {}, None
        if self._issueCookie and self._cookieName:
            key = mintKey()
            value = key if self._signer is None else self._signer.mintCookie(key)
            if self._cookieSecure != "auto":
                secure = self._cookieSecure
            attributes = self._cookieAttributes + ("; Secure" if secure else "")
            return key, {}, f"{self._cookieName}={value}{attributes}"
        if self._signer is not None:
            raise HandshakeRefused(401, "no signed session key in the request")
        raise badRequest("no session key in the request")

    def _cost(self, fields, claims):
        for source in self._costSources:
            value = claims.get(source.name) if source.kind == "claim" else fields.read(source)
            if value is None:
                continue
            value = str(value)
            cost = self._costClasses.get(value)
            if cost is None:
                digits = value.lstrip("0")
                if not (value.isascii() and value.isdigit() and digits):
                    raise badRequest(
                        f"cost from {source} must be a positive integer or one of "
                        f"{sorted(self._costClasses)}"
                    )
                cost = int(digits[:_COST_DIGITS + 1])
            if cost > self._maxCapacity():
                raise badRequest(
                    f"cost {cost} is larger than any worker's capacity "
                    f"({self._maxCapacity()})"
                )
            return cost
        return self._defaultCost
