"""wslb's epoll reactor: what twistd wslb runs on, and how it dispatches events."""

import re
import socket

import pytest
from _twistd_helpers import TwistdWslb
from twisted.logger import globalLogPublisher

from wslb.reactor import EPollReactor


class Reader:
    """A readable end of a socket pair, counting its reads; ``broken`` fails while losing it."""

    def __init__(self, sock, broken=False):
        self.sock = sock
        self.broken = broken
        self.reads = 0
        self.prefixAsked = 0

    def fileno(self):
        return self.sock.fileno()

    def logPrefix(self):
        self.prefixAsked += 1
        return "Reader"

    def doRead(self):
        self.reads += 1
        self.sock.recv(100)
        return ConnectionError("gone") if self.broken else None

    def connectionLost(self, reason):
        if self.broken:
            raise RuntimeError("a broken connectionLost")


@pytest.fixture
def socket_pairs():
    pairs = []

    def make():
        pairs.append(socket.socketpair())
        return pairs[-1]

    yield make
    for pair in pairs:
        for sock in pair:
            sock.close()


@pytest.fixture
def bare_reactor(socket_pairs):
    """A wslb reactor that is not the running one, polled by hand (before the sockets close)."""
    reactor = EPollReactor()
    yield reactor
    reactor.removeAll()
    reactor.removeReader(reactor.waker)
    reactor.waker.connectionLost(None)
    reactor._poller.close()


@pytest.mark.timeout(10)
def test_a_failing_event_is_logged_and_the_others_are_still_served(bare_reactor, socket_pairs):
    readers = []
    for broken in (True, False):
        theirs, ours = socket_pairs()
        readers.append(Reader(ours, broken))
        bare_reactor.addReader(readers[-1])
        theirs.send(b"x")
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        bare_reactor.doPoll(1)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert [reader.reads for reader in readers] == [1, 1]
    failures = [event for event in logged if "log_failure" in event]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(RuntimeError)
    assert readers[1] in bare_reactor.getReaders()  # the healthy one is still read


@pytest.mark.timeout(10)
def test_events_run_without_a_log_context(bare_reactor, socket_pairs):
    # Twisted's reactors ask every selectable for its logPrefix() on every
    # event, for a context wslb never reads: that is what this reactor saves.
    theirs, ours = socket_pairs()
    reader = Reader(ours)
    bare_reactor.addReader(reader)
    for _ in range(3):
        theirs.send(b"x")
        bare_reactor.doPoll(1)
    assert (reader.reads, reader.prefixAsked) == (3, 0)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("twistdArgs, reactorClass", [
    ((), "wslb.reactor.EPollReactor"),
    (("--reactor=poll",), "twisted.internet.pollreactor.PollReactor"),
])
def test_twistd_wslb_runs_on_it_unless_told_otherwise(tmp_path, twistdArgs, reactorClass):
    # Logging to stdout, where wslb's own text observer writes twistd's lines.
    wslb = TwistdWslb(tmp_path, twistdArgs=twistdArgs, logFile=False)
    try:
        wslb.waitListening()
    finally:
        wslb.stop()
    assert re.search(
        rf"^\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{{4}} \[twisted.scripts._twistd_unix."
        rf"UnixAppLogger#info\] reactor class: {re.escape(reactorClass)}\.$",
        wslb.process_output, re.MULTILINE), wslb.process_output
