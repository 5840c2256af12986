"""
The epoll reactor without its per-event log context; twistd wslb's default.

Twisted's reactors run every I/O event inside ``log.callWithLogger``, which
asks the selectable for its ``logPrefix()`` and sets it as the legacy
"system" context around the callback: about 3.6 µs per event on the
benchmark machine, a fifth of wslb's own CPU per relayed message
(bench/RESULTS.md). wslb logs through ``twisted.logger``, whose events never
read that context; what it loses is the prefix on the legacy ``log.err``
lines Twisted writes for a broken callback, which still say what broke.
"""

from __future__ import annotations

from twisted.internet import epollreactor
from twisted.logger import Logger

log = Logger()


class EPollReactor(epollreactor.EPollReactor):
    def doPoll(self, timeout):
        if timeout is None:
            timeout = -1  # wait indefinitely
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except InterruptedError:
            return
        selectables = self._selectables
        doReadOrWrite = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                doReadOrWrite(selectable, fd, event)
            except Exception:
                log.failure("while handling an I/O event of {selectable!r}",
                            selectable=selectable)

    doIteration = doPoll


def install():
    """Install L{EPollReactor} as the global reactor."""
    from twisted.internet.main import installReactor

    installReactor(EPollReactor())
