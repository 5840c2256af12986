"""Leadership for a single wslb instance (the memory registry's case)."""

from twisted.internet.defer import succeed
from zope.interface import implementer

from wslb.pool._interfaces import ILeader


@implementer(ILeader)
class AlwaysLeader:
    """The only instance leads, always, with fencing token 1."""

    fencingToken = 1

    def isLeader(self):
        return True

    def checkLeader(self):
        return succeed(True)

    def addLeadershipListener(self, listener):
        pass  # leading from the start: the pool's timers fire at start anyway
