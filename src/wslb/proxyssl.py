"""
``proxyssl:PORT:privateKey=KEY.pem[:certKey=CERT.pem][...]``: a TLS listener
behind a PROXY-protocol sender (an AWS NLB with proxy protocol v2, HAProxy's
``send-proxy``), which sends the PROXY header (v1 or v2) in clear *before*
the client's TLS bytes. It takes exactly the options of Twisted's ``ssl:``.

Twisted's ``haproxy:ssl:`` wraps the PROXY parser inside TLS, so it expects
the header after the TLS handshake, and every connection from an NLB fails
its handshake. Here the order on the wire is the order of the wrapping: TCP,
then the PROXY header (the address it carries becomes the connection's
peer), then TLS. A connection that does not start with a PROXY header is
dropped, as on ``haproxy:``.

The name reads as the wire carries it (PROXY header, then SSL/TLS) and is
deliberately not ``haproxy-ssl``, a typo away from ``haproxy:ssl:``. The
plugin in twisted/plugins/wslb_endpoints.py makes Twisted's
``serverFromString`` (and so ``listen.endpoint``) accept the prefix.
"""

from twisted.internet.endpoints import quoteStringArgument, serverFromString

# Twisted's own PROXY-protocol wrapper (the one ``haproxy:`` uses); the module
# is private; tests/test_listeners_e2e.py pins what we rely on.
from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory

PREFIX = "proxyssl"


class _HeaderBeforeTLS:
    """
    The reactor as Twisted's ``ssl:`` endpoint sees it: ``listenSSL`` listens
    on TCP as the reactor's own does, with the PROXY header read before TLS.
    """

    def __init__(self, reactor):
        self._reactor = reactor

    def listenSSL(self, port, factory, contextFactory, backlog=50, interface=""):
        tls = TLSMemoryBIOFactory(contextFactory, False, factory)
        return self._reactor.listenTCP(port, HAProxyWrappingFactory(tls), backlog, interface)


def parse(reactor, *args, **options):
    """The endpoint for ``proxyssl:`` arguments: ``ssl:``'s, listening header first."""
    description = ":".join(
        [quoteStringArgument(a) for a in args]
        + [f"{quoteStringArgument(k)}={quoteStringArgument(v)}" for k, v in options.items()])
    return serverFromString(_HeaderBeforeTLS(reactor), "ssl:" + description)
