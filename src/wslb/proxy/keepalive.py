"""
``[listen] auto_ping``: each relay pinged once per interval, the relays
spread over the interval (L{wslb.proxy.wheel}) rather than all at one tick.
"""

from __future__ import annotations

from wslb.proxy.wheel import TimerWheel


class KeepAlive(TimerWheel):
    """
    Once per ``interval``, each relay pings its user and its worker and drops
    a side that did not answer the previous ping (L{IRelay.keepAlive}).
    """

    def __init__(self, clock, interval):
        super().__init__(clock, interval, lambda relay: relay.keepAlive())
