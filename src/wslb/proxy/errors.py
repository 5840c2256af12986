"""Why a handshake is refused, as the HTTP answer the user gets."""

from autobahn.websocket.types import ConnectionDeny


class HandshakeRefused(ConnectionDeny):
    """
    A refusal with a status, a reason and extra response headers (such as
    ``Retry-After``) that autobahn's plain ConnectionDeny cannot carry.
    """

    def __init__(self, code, reason, headers=()):
        super().__init__(code, reason)
        self.headers = list(headers)


def badRequest(reason):
    return HandshakeRefused(400, reason)


def unavailable(reason, retryAfter):
    return HandshakeRefused(503, reason, [("Retry-After", str(int(retryAfter)))])
