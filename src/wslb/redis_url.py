"""
Redis URLs: ``redis://[[user]:password@]host[:port][/db]`` and ``rediss://``
(TLS, the server's certificate verified against the platform's trust store,
or against the CA bundle named by ``?ssl_ca_certs=/path/ca.pem``).

txredisapi parses no URLs, so we do. The query parameter has redis-py's name,
so the Lambda handlers can hand the same URL to ``redis.Redis.from_url``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_PORT = 6379
CA_PARAMETER = "ssl_ca_certs"


@dataclass(frozen=True)
class RedisAddress:
    """Where a Redis server is and how to talk to it."""

    host: str
    port: int = DEFAULT_PORT
    tls: bool = False
    username: str | None = None
    password: str | None = None
    db: int = 0
    ca_file: str | None = None  # PEM CA bundle for rediss://; None: platform trust

    def redacted(self) -> str:
        """The URL without its password, fit for logs."""
        scheme = "rediss" if self.tls else "redis"
        credentials = ""
        if self.password is not None:
            credentials = f"{self.username or ''}:***@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{credentials}{host}:{self.port}/{self.db}"


class RedisURLError(ValueError):
    """A Redis URL that cannot be used; ``reason`` says why, never showing the password."""

    def __init__(self, url, reason):
        self.reason = reason
        super().__init__(f"Redis URL {_hidePassword(url)!r}: {reason}")


# A password may hold any character, but "/", "?" and "#" end a URL's address
# part, and "%" starts an escape (ElastiCache AUTH tokens may hold "#").
ENCODE_THE_PASSWORD = 'percent-encode the password ("#" as %23, "/" as %2F, "?" as %3F, "%" as %25)'


def parseRedisURL(url: str, ca_file: str | None = None) -> RedisAddress:
    """
    Parse a Redis URL; ``ca_file`` (e.g. from a constructor argument) stands
    in for a missing ``ssl_ca_certs``. Raises L{RedisURLError} naming the
    problem (never echoing the password, nor a port part that may be one).
    """

    def problem(what):
        return RedisURLError(url, what)

    try:
        parts = urlsplit(url)
    except ValueError as e:  # e.g. "Invalid IPv6 URL": it shows no part of the URL
        raise problem(str(e)) from None
    if parts.fragment or url.endswith("#"):
        raise problem(f'a "#" ends the address part of a URL; {ENCODE_THE_PASSWORD}')
    try:
        port = parts.port
    except ValueError:
        raise problem("the port is not a number from 0 to 65535; if what follows ':' is "
                      f"a password, {ENCODE_THE_PASSWORD}") from None
    if parts.scheme not in ("redis", "rediss"):
        raise problem("the scheme must be redis:// or rediss:// (TLS)")
    if not parts.hostname:
        raise problem("no host")
    if parts.username and not parts.password:
        raise problem("a user name needs a password (user:password@host)")
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise problem("the path must be a database number like /0; if a password holds "
                      f"the '/', {ENCODE_THE_PASSWORD}")

    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {CA_PARAMETER})
    if unknown:
        raise problem(f"unknown parameter {unknown[0]!r} (only {CA_PARAMETER} is understood)")
    if CA_PARAMETER in query:
        if len(query[CA_PARAMETER]) != 1 or not query[CA_PARAMETER][0]:
            raise problem(f"{CA_PARAMETER} must name one CA file")
        ca_file = query[CA_PARAMETER][0]
    tls = parts.scheme == "rediss"
    if ca_file is not None and not tls:
        raise problem(f"{CA_PARAMETER} needs rediss:// (TLS)")

    return RedisAddress(
        host=parts.hostname,
        port=port if port is not None else DEFAULT_PORT,
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        db=int(db),
        ca_file=ca_file,
    )


def _hidePassword(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{location}"
