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

from wslb.proxy.errors import badRequest

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
    """Turns a handshake into an L{Identity}, or refuses it with 400."""

    def __init__(self, session, cost, defaultCost, maxCapacity, secure):
        self._sources = session.sources
        self._issueCookie = session.issue_cookie
        self._cookieName = next(
            (s.name for s in session.sources if s.kind == "cookie"), None
        )
        secureCookie = secure if session.cookie_secure == "auto" else session.cookie_secure
        self._cookieAttributes = "; Path=/; HttpOnly; SameSite=" + session.cookie_samesite
        if secureCookie:
            self._cookieAttributes += "; Secure"
        self._costSources = cost.sources
        self._costClasses = cost.classes
        self._defaultCost = defaultCost
        self._maxCapacity = maxCapacity  # callable: capacity can grow at run time

    def identify(self, fields):
        key, setCookie = self._key(fields)
        return Identity(key, self._cost(fields), setCookie)

    def _key(self, fields):
        for source in self._sources:
            value = fields.read(source)
            if value is None:
                continue
            if not KEY_PATTERN.match(value):
                raise badRequest(
                    f"session key from {source.kind}:{source.name} must be 1-128 "
                    "characters of A-Za-z0-9._~-"
                )
            return value, None
        if self._issueCookie and self._cookieName:
            key = secrets.token_urlsafe(24)
            return key, f"{self._cookieName}={key}{self._cookieAttributes}"
        raise badRequest("no session key in the request")

    def _cost(self, fields):
        for source in self._costSources:
            value = fields.read(source)
            if value is None:
                continue
            cost = self._costClasses.get(value)
            if cost is None:
                if not value.isdigit() or int(value) < 1:
                    raise badRequest(
                        f"cost from {source.kind}:{source.name} must be a positive "
                        f"integer or one of {sorted(self._costClasses)}"
                    )
                cost = int(value)
            if cost > self._maxCapacity():
                raise badRequest(
                    f"cost {cost} is larger than any worker's capacity "
                    f"({self._maxCapacity()})"
                )
            return cost
        return self._defaultCost
