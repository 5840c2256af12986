"""
The few places where wslb leans on Twisted's transport internals, for the
relay's speed, each pinned by a test in tests/test_transports.py: a Twisted
upgrade that changes what one relies on fails that test by name instead of
corrupting a relay. pyproject.toml bounds ``twisted`` to the releases these
were checked against.

- L{writeNow}: a write goes to the socket at once when nothing is queued
  (C{tcp.Connection}'s C{dataBuffer}, C{_tempDataLen}, C{_aborting},
  C{socket}), where Twisted would queue it for the next reactor turn.
- L{writesLandIn}: a wrapper that passes writes on untouched (the PROXY
  protocol's C{ProtocolWrapper}) is skipped to reach the TCP connection.
- L{takeOver}: the relay becomes the protocol of a connection whose
  handshake is done (C{protocol} of a TCP connection, C{wrappedProtocol} of
  TLS and PROXY wrappers, C{_wrappedProtocol} of a client endpoint's).
- L{noDelay}: TCP_NODELAY on a transport that may have no TCP under it.
- L{dropConnector}: a lost client connection's C{connector} lets go of it
  (C{Connector.transport}).
"""

from __future__ import annotations

from twisted.internet import tcp
from twisted.protocols import policies


def writesLandIn(transport):
    """
    The transport a write on ``transport`` ends up in: a wrapper that passes
    writes on untouched (the PROXY protocol's) is skipped; TLS is not.
    """
    while (isinstance(transport, policies.ProtocolWrapper)
           and type(transport).write is policies.ProtocolWrapper.write):
        transport = transport.transport
    return transport


def isTCP(transport):
    return isinstance(transport, tcp.Connection)


def sendNow(destination, data):
    """
    Write to ``destination``, a TCP connection. Twisted queues every write
    for the next reactor turn (a turn and two epoll_ctl calls each); when
    nothing is queued before them, the bytes go to the socket now, by the
    socket's own send (writeSomeData's slicing and retry wrapper cost a
    tenth of a relayed read).
    """
    if (not destination.dataBuffer and not destination._tempDataLen and destination.connected
            and not destination.disconnecting and not destination._aborting):
        try:
            sent = destination.socket.send(data)
        except OSError:  # it would block, or it broke: Twisted's write finds out which
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    destination.write(data)


def writeNow(transport, data):
    """Write ``data`` on ``transport``, at once where TCP is under it (see L{sendNow})."""
    destination = writesLandIn(transport)
    if isTCP(destination):
        sendNow(destination, data)
    else:
        transport.write(data)


def noDelay(transport):
    """
    TCP_NODELAY, where there is TCP under ``transport``: a relayed frame must
    not wait for the ACK of the one before.
    """
    try:
        transport.setTcpNoDelay(True)
    except (AttributeError, OSError):  # a Unix socket, or no socket at all
        pass


def _holder(protocol):
    """
    (object, attribute) through which ``protocol``'s transport hands it what
    it reads: a TCP connection's ``protocol``, or a wrapper's (TLS, PROXY
    protocol) ``wrappedProtocol``; None for anything else.
    """
    transport = protocol.transport
    if getattr(transport, "wrappedProtocol", None) is protocol:
        return transport, "wrappedProtocol"
    outer = getattr(transport, "protocol", None)
    # A client endpoint's connection holds its own wrapper around ours.
    if outer is protocol or getattr(outer, "_wrappedProtocol", None) is protocol:
        return transport, "protocol"
    return None


def takeOver(protocol, new):
    """Make ``new`` the protocol of ``protocol``'s transport."""
    holder = _holder(protocol)
    if holder is None:  # a transport of some other make: the old protocol passes all on
        protocol.dataReceived = new.dataReceived
        protocol.connectionLost = new.connectionLost
    else:
        setattr(*holder, new)


def dropConnector(transport):
    """
    A TCP client connection and its connector name each other
    (C{Client.connector}, C{Connector.transport}) for good: every connection
    to a worker would end as a reference cycle, which only the garbage
    collector frees (and never, once it froze them: see wslb.collector).
    Called once ``transport``, a worker connection, is lost; a connector
    of an endpoint's is not used again. Wrappers (TLS) are looked through.
    """
    while transport is not None:
        connector = getattr(transport, "connector", None)
        if connector is not None:
            connector.transport = None
            return
        transport = getattr(transport, "transport", None)
