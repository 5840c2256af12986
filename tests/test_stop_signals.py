"""
A stop signal repeated while wslb drains (``timeout``, container runtimes
and impatient operators send SIGTERM or Ctrl-C twice): logged once at info,
otherwise ignored, so wslb drains and exits as after one signal.
"""

import signal

import pytest
import pytest_twisted
from _echo_helpers import connectWhenServing
from _twistd_helpers import TwistdWslb
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

DRAIN = 1.5
USERS = 3


async def connectedUsers(wslb, count):
    # The worker is starting: 503 until its first health check passes.
    users = [await connectWhenServing(wslb.url(f"/?session=user{n}"), within=15)
             for n in range(count)]
    for user in users:
        assert (await user.ask("whoami"))["session"].startswith("user")
    return users


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest_twisted.ensureDeferred
async def test_a_stop_signal_twice_50ms_apart_drains_and_exits_as_once_does(
        tmp_path, echo_worker, stop_after, clients, signum):
    wslb = stop_after(TwistdWslb(
        tmp_path, "pool.provider=static", f'pool.static.workers=["{echo_worker.url}"]',
        "pool.min_spare=0", "pool.capacity=10", f"listen.drain_period={DRAIN}"))
    wslb.waitListening()
    users = await connectedUsers(wslb, USERS)
    clients += users
    closes = defer.gatherResults([user.closed for user in users])

    wslb.signal(signum)
    signalled = reactor.seconds()
    await deferLater(reactor, 0.05)  # the thing tested: repeats 50 ms, then 300 ms apart
    wslb.signal(signum)
    await deferLater(reactor, 0.3)
    wslb.signal(signum)  # a third: still one line in the log
    await deferLater(reactor, 0.1)  # the thing tested: the drain goes on meanwhile
    assert not closes.called  # the repeats did not cut the drain short

    codes = await closes.addTimeout(DRAIN + 5, reactor)
    assert {code for code, _ in codes} == {1001}
    assert reactor.seconds() - signalled >= DRAIN - 0.2
    # twistd re-raises the signal it stopped on, as after one signal.
    assert wslb.process.wait(10) == -signum
    log = wslb.log.read_text()
    assert "Traceback" not in log and "ReactorNotRunning" not in log
    assert "#critical" not in log and "Unhandled" not in log
    name = signal.Signals(signum).name
    assert log.count(f"Received {name}, shutting down.") == 1
    [again] = [line for line in log.splitlines() if "again" in line]
    assert f"[wslb.stopsignals#info] Received {name} again while stopping" in again
