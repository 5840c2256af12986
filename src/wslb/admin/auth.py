"""
Who may use the admin JSON API (``/api/...``; ``/healthz``, ``/metrics``
and the status page itself stay open).

With ``[admin] token`` set, every API request, reads included, must carry
``Authorization: Bearer <token>``: session keys are credentials when they
are not signed. Without a token, the API answers only this host (a
loopback peer or a unix socket), so that an admin endpoint bound beyond
loopback by mistake is not an open door; and over TCP only requests
addressed to a loopback name (``Host``), with no foreign ``Origin`` on a
mutation, so that a web page whose name an attacker re-binds to 127.0.0.1
(DNS rebinding) can neither read nor change anything. The token is never
logged nor echoed in an answer.
"""

import hmac
import ipaddress
from typing import NamedTuple
from urllib.parse import urlsplit

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.logger import Logger

log = Logger()


class Refusal(NamedTuple):
    """Why a request may not mutate: an HTTP status, a message, extra headers."""

    code: int
    message: str
    headers: tuple = ()


MISSING_TOKEN = Refusal(401, "this needs an Authorization: Bearer token",
                        (("WWW-Authenticate", "Bearer"),))
WRONG_TOKEN = Refusal(403, "wrong bearer token")
NOT_LOCAL = Refusal(403, "without an [admin] token, the API answers only this host")
FOREIGN_HOST = Refusal(403, "without an [admin] token, the API answers only requests to a "
                            "loopback name (localhost, 127.0.0.1, [::1])")
FOREIGN_ORIGIN = Refusal(403, "without an [admin] token, changes are accepted only from "
                              "this origin")


def isLoopback(address):
    """True for a peer on this host: 127.0.0.0/8, ::1 (also IPv4-mapped), a unix socket."""
    if isinstance(address, UNIXAddress):
        return True
    if not isinstance(address, (IPv4Address, IPv6Address)):
        return False
    try:
        ip = ipaddress.ip_address(address.host)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def isLoopbackHost(host):
    """
    True for a Host header naming this host: localhost (and names under
    .localhost, RFC 6761), 127.0.0.0/8 or [::1], with or without a port.
    """
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return False
    else:
        name, colon, port = host.rpartition(":")
        if not colon:
            name = port
        elif not port.isdigit():
            return False
    name = name.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def isSameOrigin(origin, host):
    """True when an Origin header names the host (and port) the request was sent to."""
    try:
        split = urlsplit(origin)
    except ValueError:
        return False
    return split.scheme in ("http", "https") and split.netloc.lower() == host.lower()


def bearerToken(request):
    """The credentials of an ``Authorization: Bearer ...`` header, or None."""
    header = request.getHeader(b"authorization")
    if header is None:
        return None
    scheme, _, credentials = header.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not credentials.strip():
        return None
    return credentials.strip()


class AdminAuth:
    """
    Decides whether one API request may be served; ``isLocal(address)`` is
    the peer test.
    """

    def __init__(self, token="", isLocal=isLoopback):
        self._token = token.encode("utf-8")
        self._isLocal = isLocal

    def refusal(self, request):
        """None when ``request`` may be served, else the L{Refusal} to answer with."""
        refusal = self._tokenRefusal(request) if self._token else self._localRefusal(request)
        if refusal is None:
            return None
        log.warn("admin API: refused {method} {path} from {peer}: {reason}",
                 method=request.method.decode("ascii", "replace"),
                 path=request.path.decode("ascii", "replace"),
                 peer=request.getClientAddress(), reason=refusal.message)
        return refusal

    def _tokenRefusal(self, request):
        given = bearerToken(request)
        if given is None:
            return MISSING_TOKEN
        if not hmac.compare_digest(given, self._token):
            return WRONG_TOKEN
        return None

    def _localRefusal(self, request):
        peer = request.getClientAddress()
        if not self._isLocal(peer):
            return NOT_LOCAL
        if isinstance(peer, UNIXAddress):
            return None  # no browser page reaches a unix socket
        host = (request.getHeader(b"host") or b"localhost").decode("latin-1")
        if not isLoopbackHost(host):
            return FOREIGN_HOST
        origin = request.getHeader(b"origin")
        if (request.method not in (b"GET", b"HEAD") and origin is not None
                and not isSameOrigin(origin.decode("latin-1"), host)):
            return FOREIGN_ORIGIN
        return None
