"""The ``reuseport:`` server endpoint string (wslb.reuseport), loaded only when used."""

from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _ReusePortParser:
    prefix = "reuseport"

    def parseStreamServer(self, reactor, *args, **kwargs):
        from wslb.reuseport import parse

        return parse(reactor, *args, **kwargs)


reusePort = _ReusePortParser()
