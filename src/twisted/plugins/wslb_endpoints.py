"""
wslb's server endpoint strings, each module loaded only when its prefix is
used: ``reuseport:`` (wslb.reuseport) and ``proxyssl:`` (wslb.proxyssl).
"""

from importlib import import_module

from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _Parser:
    def __init__(self, prefix, module):
        self.prefix = prefix
        self._module = module

    def parseStreamServer(self, reactor, *args, **kwargs):
        return import_module(self._module).parse(reactor, *args, **kwargs)


reusePort = _Parser("reuseport", "wslb.reuseport")
proxySSL = _Parser("proxyssl", "wslb.proxyssl")
