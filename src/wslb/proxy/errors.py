"""Why a handshake is refused, as the HTTP answer the user gets."""


class HandshakeRefused(Exception):
    """A refusal: a status, a reason for the status line, and extra response
    headers (such as ``Retry-After``)."""

    def __init__(self, code, reason, headers=()):
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.headers = list(headers)


def badRequest(reason):
    return HandshakeRefused(400, reason)


def unavailable(reason, retryAfter):
    return HandshakeRefused(503, reason, [("Retry-After", str(int(retryAfter)))])
