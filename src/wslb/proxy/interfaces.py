"""What the rest of wslb may ask of a relayed session."""

from zope.interface import Attribute, Interface


class IRelay(Interface):
    """
    One user's session being relayed to its worker, as the session
    bookkeeping (L{wslb.proxy.sessions.LiveSessions}), the keep-alive and
    idle timers, the drain and the registry upkeep see it.
    """

    key = Attribute("The session key (str).")
    cost = Attribute("The session's cost (int).")
    placement = Attribute("The worker the session is bound to: id, url, provider, capacity.")
    activity = Attribute(
        "Payload bytes relayed both ways so far (int); pings do not count (idle detection).")

    def closeWith(code, reason):
        """Close both sides with the close ``code`` and ``reason`` (ended, idle, shutdown)."""

    def keepAlive():
        """One ``auto_ping`` tick: drop a side that did not answer the last ping, ping both."""
