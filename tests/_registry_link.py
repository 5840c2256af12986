"""
The memory registry as a wslb instance reaches Redis: over a link, on a
Clock. Not a mock: every call runs in the real MemoryRegistry; the link
only decides when it runs and when (or whether) its caller hears.
"""

from twisted.internet import defer
from twisted.python.failure import Failure

CALL_TIMEOUT = 1.0  # as the Redis registry bounds its calls


class RegistryLink:
    """
    By default a call runs and answers at once. With ``latency``, it runs
    when sent and its answer arrives that much later (the registry did its
    work before its caller hears). While ``stalled``, calls wait to be sent:
    their caller gives up after CALL_TIMEOUT (as at a Redis call's timeout),
    and they run later, in order, at L{resume} (as Redis runs a connection's
    commands once it is resumed). While ``losing``, calls run and their
    answers are lost. ``sent`` names every call, in order.
    """

    def __init__(self, registry, clock):
        self._registry = registry
        self._clock = clock
        self.latency = 0.0
        self.stalled = False
        self.losing = False
        self.sent = []
        self._queued = []  # (run it, its caller's Deferred), in the order sent

    def resume(self):
        self.stalled = False
        queued, self._queued = self._queued, []
        for run, answer in queued:
            result = run()
            if not answer.called:  # its caller still waits: it gets the answer
                result.chainDeferred(answer)

    def __getattr__(self, name):
        method = getattr(self._registry, name)
        if name.startswith("add") and name.endswith("Listener"):
            return method

        def call(*args, **kwargs):
            self.sent.append(name)
            if self.stalled:
                answer = defer.Deferred()
                answer.addTimeout(CALL_TIMEOUT, self._clock)
                self._queued.append((lambda: method(*args, **kwargs), answer))
                return answer
            if self.losing:
                method(*args, **kwargs)
                return defer.fail(defer.TimeoutError("answer lost"))
            if self.latency:
                return self._later(method(*args, **kwargs))
            return method(*args, **kwargs)

        return call

    def _later(self, result):
        """``result``'s outcome, ``latency`` from now, unless its caller gave up first."""
        answer = defer.Deferred()

        def deliver(outcome):
            if not answer.called:
                (answer.errback if isinstance(outcome, Failure) else answer.callback)(outcome)

        self._clock.callLater(self.latency, result.addBoth, deliver)
        return answer
