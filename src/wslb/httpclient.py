"""
Twisted's HTTP client pool, quiet: each new connection's factory would log
two info lines ("Starting factory", "Stopping factory"), a line pair per
connection to a worker. The health checks and the HTTP proxy both use it.
"""

from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory


class _QuietHTTP11ClientFactory(_HTTP11ClientFactory):
    """Twisted's factory for one pooled connection, without its Starting/Stopping lines."""

    noisy = False


class QuietPool(HTTPConnectionPool):
    """An L{HTTPConnectionPool} whose connections log nothing as they come and go."""

    _factory = _QuietHTTP11ClientFactory
