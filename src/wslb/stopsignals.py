"""
A stop signal repeated while wslb stops is logged once and ignored.

``timeout``, container runtimes and impatient operators send SIGTERM (or
Ctrl-C) twice. Twisted's handler answers each one with ``reactor.stop()``,
and a second stop raises ``ReactorNotRunning``, logged as a critical
traceback in the middle of the drain. The first signal still goes to
Twisted's handler; the later ones only say, once, that the drain goes on
(it is bounded: ``listen.drain_period`` plus a few seconds; SIGKILL stops
at once).
"""

import signal
from functools import partial

from twisted.logger import Logger

log = Logger()

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RepeatedStopSignals:
    """
    Wraps the reactor's stop-signal handlers once it runs (it installs its
    own at startup). A signal arriving once the reactor is stopping, by a
    signal or otherwise, is not passed on.
    """

    def __init__(self, reactor):
        self._reactor = reactor
        self._stopping = False
        self._told = False

    def watch(self):
        """Take over the handlers as soon as the reactor has installed its own."""
        self._reactor.callWhenRunning(self._install)
        self._reactor.addSystemEventTrigger("before", "shutdown", self._shutdownBegan)

    def _install(self):
        for signum in STOP_SIGNALS:
            handler = signal.getsignal(signum)
            # Twisted leaves SIGINT alone when something else (pdb) holds it.
            if callable(handler) and handler is not signal.default_int_handler:
                signal.signal(signum, partial(self._received, handler))

    def _shutdownBegan(self):
        self._stopping = True

    def _received(self, passOn, signum, frame):
        if not self._stopping:
            # Set here, not when the reactor gets to it: a second signal may
            # come before the reactor has begun to stop.
            self._stopping = True
            passOn(signum, frame)
            return
        # A signal handler may interrupt the reactor anywhere: log from it.
        self._reactor.callFromThread(self._repeated, signum)

    def _repeated(self, signum):
        if self._told:
            return
        self._told = True
        log.info("Received {signal} again while stopping: ignored, the drain goes on "
                 "(SIGKILL stops at once)", signal=signal.Signals(signum).name)
