"""
Who may change things through the admin API.

With ``[admin] token`` set, a mutation must carry ``Authorization: Bearer
<token>``. Without a token, mutations are taken only from this host (a
loopback peer or a unix socket), so that an admin endpoint bound beyond
loopback by mistake is not an open door. The token is never logged nor
echoed in an answer.
"""

import hmac
import ipaddress
from typing import NamedTuple

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
NOT_LOCAL = Refusal(403, "without an [admin] token, changes are accepted only from this host")


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


def bearerToken(request):
    """The credentials of an ``Authorization: Bearer ...`` header, or None."""
    header = request.getHeader(b"authorization")
    if header is None:
        return None
    scheme, _, credentials = header.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not credentials.strip():
        return None
    return credentials.strip()


class MutationAuth:
    """Decides whether one request may mutate; ``isLocal(address)`` is the peer test."""

    def __init__(self, token="", isLocal=isLoopback):
        self._token = token.encode("utf-8")
        self._isLocal = isLocal

    def refusal(self, request):
        """None when ``request`` may mutate, else the L{Refusal} to answer with."""
        if self._token:
            given = bearerToken(request)
            if given is None:
                refusal = MISSING_TOKEN
            elif hmac.compare_digest(given, self._token):
                return None
            else:
                refusal = WRONG_TOKEN
        elif self._isLocal(request.getClientAddress()):
            return None
        else:
            refusal = NOT_LOCAL
        log.warn("admin API: refused {method} {path} from {peer}: {reason}",
                 method=request.method.decode("ascii", "replace"),
                 path=request.path.decode("ascii", "replace"),
                 peer=request.getClientAddress(), reason=refusal.message)
        return refusal
