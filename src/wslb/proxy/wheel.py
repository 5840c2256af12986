"""
Periodic work over every relay, spread over its period: a timer wheel.

One shared tick that visits every relay at once stalls the reactor for the
whole visit: pinging 8,000 users (16,000 legs) at once took half a second in
which no one else's message was relayed. Instead, each member takes a slot
of the wheel when it joins, and the wheel turns one slot every ``period /
slots`` seconds: each member is still visited once per period, and each turn
costs one slot's share of the whole. Joiners take the slots of the wheel's
far half in turn: the slots stay even (within twice the average when all
join at once), and none is visited (pinged) just after it opened.
"""

from __future__ import annotations

from twisted.application.service import Service

from wslb.logs import Logger

log = Logger()

# Seconds between two turns (about): a slot's visits are the longest the
# reactor waits for this wheel. A power of two, so that periods of whole
# seconds are whole turns, without rounding.
TURN = 1 / 16


class TimerWheel(Service):
    """
    Calls ``visit(member)`` once per ``period`` for each member (L{add}, until
    L{discard}), one slot of members per turn. A member's first visit comes
    between half a period and a period after it joins.
    """

    def __init__(self, clock, period, visit, turn=TURN):
        self.clock = clock
        self.period = period
        self._visit = visit
        self._slots = [{} for _ in range(max(1, round(period / turn)))]  # ordered sets
        self.step = period / len(self._slots)
        self._slotOf = {}  # member -> its slot
        self._joined = 0  # members that joined: the next takes the next far slot
        self._start = None
        self._turns = 0  # turns done since the wheel started
        self._call = None

    def __len__(self):
        return len(self._slotOf)

    def add(self, member):
        if member in self._slotOf:
            return
        slots = len(self._slots)
        near = slots // 2  # the slots visited within half a period: not those
        far = near + self._joined % (slots - near)
        self._joined += 1
        slot = self._slots[(self._turns + far) % slots]  # _turns % slots turns next
        slot[member] = None
        self._slotOf[member] = slot

    def discard(self, member):
        slot = self._slotOf.pop(member, None)
        if slot is not None:
            del slot[member]

    def startService(self):
        super().startService()
        self._start = self.clock.seconds()
        self._turns = 0
        self._schedule()

    def stopService(self):
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self):
        due = self._start + (self._turns + 1) * self.step
        self._call = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._turn)

    def _turn(self):
        """
        Visit the slots whose time came: one, unless the reactor was late, and
        then each slot missed, but never one twice (a member visited twice in
        a row could not have answered a ping in between).
        """
        self._call = None
        elapsed = self.clock.seconds() - self._start
        due = int(elapsed / self.step + 1e-9)  # turns that should be done by now
        slots = self._slots
        try:
            for turn in range(max(self._turns, due - len(slots)), due):
                slot = slots[turn % len(slots)]
                for member in list(slot):
                    if member in slot:  # an earlier visit may have discarded it
                        self._visitOne(member)
        finally:
            self._turns = max(self._turns, due)
            if self.running:
                self._schedule()

    def _visitOne(self, member):
        try:
            self._visit(member)
        except Exception:
            log.failure("visiting {member!r}", member=member)
