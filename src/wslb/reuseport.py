"""
``reuseport:PORT[:interface=ADDRESS][:backlog=N]``: a TCP listener opened with
SO_REUSEPORT, so that several wslb processes on one host listen on one port.

The kernel keeps one accept queue per process and hands each new connection
to one of them by a hash of its addresses and ports. The processes must share
the registry (``registry.backend = "redis"``); wslb.config refuses otherwise.
The plugin in twisted/plugins/wslb_endpoints.py makes Twisted's
``serverFromString`` (and so ``listen.endpoint``) accept the prefix.
"""

import socket

from twisted.internet import defer, error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer

PREFIX = "reuseport"
DEFAULT_BACKLOG = 50  # as Twisted's tcp: endpoint


def isReusePort(description):
    """Whether an endpoint string names this endpoint (Twisted matches prefixes ignoring case)."""
    return description.partition(":")[0].strip().lower() == PREFIX


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """Listens on ``interface:port`` with SO_REUSEPORT; IPv6 for an IPv6 literal interface."""

    def __init__(self, reactor, port, interface="", backlog=DEFAULT_BACKLOG):
        self._reactor = reactor
        self._port = port
        self._interface = interface
        self._backlog = backlog
        self._family = socket.AF_INET6 if isIPv6Address(interface) else socket.AF_INET

    def listen(self, factory):
        try:
            listening = self._bind()
        except OSError as e:
            return defer.fail(error.CannotListenError(self._interface, self._port, e))
        try:
            # adoptStreamPort dups the descriptor; ours is closed either way.
            port = self._reactor.adoptStreamPort(listening.fileno(), self._family, factory)
        except BaseException:
            return defer.fail()
        finally:
            listening.close()
        return defer.succeed(port)

    def _bind(self):
        listening = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listening.bind((self._interface, self._port))
            listening.listen(self._backlog)
            listening.setblocking(False)
        except BaseException:
            listening.close()
            raise
        return listening


def parse(reactor, *args, **options):
    """The endpoint for ``reuseport:`` arguments; ValueError saying what is wrong."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("SO_REUSEPORT is not available on this platform")
    unknown = set(options) - {"interface", "backlog"}
    if unknown:
        raise ValueError(f"unknown option {', '.join(sorted(unknown))}; "
                         "allowed: interface, backlog")
    if len(args) != 1:
        raise ValueError(f"expected one port, as in reuseport:8080, got {len(args)} "
                         "positional arguments")
    port = _integer(args[0], "port", 0, 65535)
    backlog = _integer(options.get("backlog", str(DEFAULT_BACKLOG)), "backlog", 1, 65535)
    interface = options.get("interface", "")
    if interface and not (isIPAddress(interface) or isIPv6Address(interface)):
        raise ValueError(f"interface {interface!r} is not an IPv4 or IPv6 address; "
                         r"write IPv6 colons as \:, e.g. interface=\:\:1")
    return ReusePortEndpoint(reactor, port, interface, backlog)


def _integer(text, name, low, high):
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ValueError(f"{name} {text!r} is not an integer from {low} to {high}")
    return value
