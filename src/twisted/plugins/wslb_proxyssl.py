"""The ``proxyssl:`` server endpoint string (wslb.proxyssl), loaded only when used."""

from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _ProxySSLParser:
    prefix = "proxyssl"

    def parseStreamServer(self, reactor, *args, **kwargs):
        from wslb.proxyssl import parse

        return parse(reactor, *args, **kwargs)


proxySSL = _ProxySSLParser()
