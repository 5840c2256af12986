"""
One handshake may cost wslb's reactor only so much (issue 12, item 1): a
Cookie header crafted to be quadratic for Python's SimpleCookie (CVE-2024-7592:
quoted backslashes, ~0.5 s each before 3.11.10) is answered at once, and the
users already relayed by the same process do not notice.
"""

import pytest_twisted
from _echo_helpers import connectWebSocket
from _polling import waitFor
from _twistd_helpers import TwistdWslb
from _wslb_helpers import rawHandshake
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

HOSTILE_COOKIE = 'wslb_session="' + "\\" * 14000 + '"'


async def timed(call):
    started = reactor.seconds()
    result = await call()
    return result, reactor.seconds() - started


@pytest_twisted.ensureDeferred
async def test_hostile_cookies_are_answered_at_once_and_relays_go_on(
        tmp_path, echo_worker, stop_after, clients):
    wslb = stop_after(TwistdWslb(
        tmp_path, "pool.provider=static", f'pool.static.workers=["{echo_worker.url}"]',
        "pool.capacity=10", "pool.min_spare=0", "pool.max_spare=0", "pool.health.interval=60",
        "listen.drain_period=0",
    )).waitListening()
    clients.append(await connectWebSocket(wslb.url("/?session=relayed")))
    user = clients[0]
    await user.ask("whoami")

    roundTrips = []
    hostileDone = False

    async def ping():
        while not hostileDone:
            _, took = await timed(lambda: user.ask("whoami"))
            roundTrips.append(took)
            await deferLater(reactor, 0.02)  # the thing tested: round trips all along

    pinging = defer.ensureDeferred(ping())
    await waitFor(lambda: roundTrips, what="a first round trip")
    answers = await defer.gatherResults([
        defer.ensureDeferred(timed(lambda: rawHandshake(
            wslb.port, headers={"Cookie": HOSTILE_COOKIE})))
        for _ in range(4)
    ])
    hostileDone = True
    await pinging

    assert [status for (status, _), _ in answers] == [400] * 4
    assert max(took for _, took in answers) < 0.25, answers
    assert len(roundTrips) >= 3 and max(roundTrips) < 0.2, roundTrips
