"""
Which session a handshake belongs to, and what it costs.

A key comes from the first configured source that has one; without one, and
with ``issue_cookie``, a key is minted and handed back as a cookie.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs

from wslb.proxy.errors import HandshakeRefused, badRequest
from wslb.proxy.signing import InvalidKey

KEY_PATTERN = re.compile(r"[A-Za-z0-9._~-]{1,128}\Z")


@dataclass(frozen=True)
class Identity:
    key: str
    cost: int
    setCookie: str | None  # a Set-Cookie value to send with the 101, if minted


class HandshakeFields:
    """The places a source may read from: cookies, query, headers."""

    def __init__(self, headers, query):
        self.headers = headers  # lower-cased name -> value, as autobahn parses
        self.query = parse_qs(query, keep_blank_values=True)
        self._cookies = None

    @property
    def cookies(self):
        if self._cookies is None:
            jar = SimpleCookie()
            try:
                jar.load(self.headers.get("cookie", ""))
            except CookieError:
                pass
            self._cookies = {name: morsel.value for name, morsel in jar.items()}
        return self._cookies

    def read(self, source):
        """The value a ``cookie:``, ``query:`` or ``header:`` source names, or None."""
        if source.kind == "cookie":
            return self.cookies.get(source.name)
        if source.kind == "query":
            values = self.query.get(source.name)
            return values[0] if values else None
        if source.kind == "header":
            return self.headers.get(source.name.lower())
        return None


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
        self._costSources = cost.sources
        self._costClasses = cost.classes
        self._defaultCost = defaultCost
        self._maxCapacity = maxCapacity  # callable: capacity can grow at run time
        self._signer = signer

    def identify(self, fields, secure=False):
        """``secure``: the client connected over TLS (its cookie gets Secure under "auto")."""
        key, claims, setCookie = self._key(fields, secure)
        return Identity(key, self._cost(fields, claims), setCookie)

    def _key(self, fields, secure):
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
            if not KEY_PATTERN.match(value):
                raise badRequest(
                    f"session key from {source} must be 1-128 characters of A-Za-z0-9._~-"
                )
            return value, claims, None
        if self._issueCookie and self._cookieName:
            key = secrets.token_urlsafe(24)
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
                if not value.isdigit() or int(value) < 1:
                    raise badRequest(
                        f"cost from {source} must be a positive integer or one of "
                        f"{sorted(self._costClasses)}"
                    )
                cost = int(value)
            if cost > self._maxCapacity():
                raise badRequest(
                    f"cost {cost} is larger than any worker's capacity "
                    f"({self._maxCapacity()})"
                )
            return cost
        return self._defaultCost
