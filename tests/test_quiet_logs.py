"""
A quiet, healthy wslb writes nothing: health checks share one kept-alive,
quiet connection per worker, and what they found is a metric
(``wslb_health_checks_total{outcome}``), not log lines.
"""

import re

import pytest
import pytest_twisted
import treq
from _cluster_helpers import POLL, healthyWorkers
from _polling import waitFor
from _twistd_helpers import TwistdWslb
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import Site

WORKERS = 20
QUIET = 10.0  # seconds watched: 20 workers checked every second, ~200 checks
OUTCOMES = {"passed", "failed", "unreachable", "timeout"}


class HealthSite(Site):
    """A worker's ``GET /health`` (200) on its own port; counts the connections it accepts."""

    noisy = False

    def __init__(self):
        root = Resource()
        root.putChild(b"health", _Ok())
        super().__init__(root)
        self.connections = 0

    def buildProtocol(self, addr):
        self.connections += 1
        return super().buildProtocol(addr)


class _Ok(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"{}"


async def healthChecks(wslb):
    response = await treq.get(wslb.admin + "/metrics", timeout=5)
    text = (await response.content()).decode()
    return {outcome: float(value) for outcome, value in re.findall(
        r'^wslb_health_checks_total\{outcome="([a-z]+)"\} (\S+)$', text, re.M)}


@pytest.mark.timeout(90)
@pytest_twisted.ensureDeferred
async def test_twenty_workers_checked_every_second_write_no_line(tmp_path):
    sites = [HealthSite() for _ in range(WORKERS)]
    ports = [reactor.listenTCP(0, site, interface="127.0.0.1") for site in sites]
    urls = ", ".join(f'"ws://127.0.0.1:{port.getHost().port}"' for port in ports)
    wslb = TwistdWslb(tmp_path, "pool.provider=static", f"pool.static.workers=[{urls}]",
                      "pool.min_spare=0", "pool.max_spare=0", 'pool.health.interval="1s"')
    try:
        wslb.waitListening()

        async def allHealthy():
            return await healthyWorkers(wslb) == WORKERS
        await waitFor(allHealthy, timeout=20, interval=POLL)
        before = await healthChecks(wslb)
        logged = wslb.log.stat().st_size
        connections = sum(site.connections for site in sites)

        await deferLater(reactor, QUIET)  # the thing tested: QUIET seconds of health checks

        after = await healthChecks(wslb)
        quietLines = wslb.log.read_bytes()[logged:].decode().splitlines()
        newConnections = sum(site.connections for site in sites) - connections
    finally:
        wslb.stop()
        await defer.gatherResults([defer.maybeDeferred(port.stopListening) for port in ports])

    log = wslb.log.read_text()
    assert "Starting factory" not in log and "Stopping factory" not in log
    assert quietLines == []  # healthy and idle: nothing to say
    assert set(after) == OUTCOMES  # one counter per outcome, from the start
    checks = after["passed"] - before["passed"]
    assert checks >= 100, (before, after)
    assert after == {**before, "passed": after["passed"]}  # all of them passed
    # Each worker's connection is kept alive from check to check.
    assert newConnections <= WORKERS // 4, (newConnections, checks)
