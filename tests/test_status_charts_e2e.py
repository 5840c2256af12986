"""
The status page's last hour, end to end: a real ``twistd -n wslb``, a burst
of 30 users arriving over 20 s, then the page in a real headless Chromium.
The drawn SVG paths are read back into (time, value) points.
"""

import re

import pytest
import pytest_twisted
from _browser import parse, render
from _cluster_helpers import POLL, healthyWorkers
from _echo_helpers import connectWebSocket, getJSON
from _polling import waitFor
from _twistd_helpers import TwistdWslb
from twisted.internet import reactor
from twisted.internet.task import deferLater

USERS = 30
BURST = 20.0  # seconds over which they arrive
SAMPLE = 5.0  # wslb.admin.history.INTERVAL


def drawn(dom, chart, series):
    """The points of one series' path as (time, value), read from the chart's geometry."""
    svg = dom.byId(chart).all("svg")[0]
    start, end = float(svg.attrs["data-from"]), float(svg.attrs["data-to"])
    left, top, width, height = map(float, svg.attrs["data-plot"].split())
    [path] = [p for p in svg.all("path") if p.attrs.get("data-series") == series]
    axisTop = float(svg.attrs[f"data-{path.attrs['data-axis']}"])
    points = re.findall(r"([ML])(-?[\d.]+),(-?[\d.]+)", path.attrs["d"])
    return [(start + (float(x) - left) / width * (end - start),
             (top + height - float(y)) / height * axisTop) for _, x, y in points]


@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_a_burst_of_30_users_is_drawn_on_the_charts(
        tmp_path, echo_worker, stop_after, clients):
    wslb = stop_after(TwistdWslb(
        tmp_path, "pool.provider=static", f'pool.static.workers=["{echo_worker.url}"]',
        "pool.min_spare=0", f"pool.capacity={USERS}"))
    wslb.waitListening()
    await waitFor(lambda: healthyWorkers(wslb), lambda n: n == 1, timeout=20, interval=POLL,
                  what="the worker healthy")
    began = reactor.seconds()
    for i in range(USERS):
        clients.append(await connectWebSocket(wslb.url(f"/?session=burst{i}")))
        # The thing tested: arrivals spread over BURST seconds.
        await deferLater(reactor, max(0, began + (i + 1) * BURST / USERS - reactor.seconds()))
    ended = reactor.seconds()
    await waitFor(lambda: getJSON(wslb.admin + "/api/v1/history"),
                  lambda answer: any(s["time"] > ended for s in answer[1]["samples"]),
                  timeout=SAMPLE + 2, interval=0.25, what="a sample after the last arrival")

    html, screenshot = await render(wslb.admin + "/status", tmp_path, budget_ms=3000)
    dom = parse(html)
    assert "hidden" in dom.byId("banner").attrs

    during = lambda points: [(t, v) for t, v in points if began - 1 <= t <= ended + 1]  # noqa: E731
    connected = drawn(dom, "chart-sessions", "connected")
    assert len(during(connected)) >= (ended - began) / SAMPLE - 1  # a point every sample
    values = [v for _, v in connected]
    assert values == sorted(values)  # users only arrived
    assert values[-1] == pytest.approx(USERS, abs=0.5)
    assert 0 < during(connected)[len(during(connected)) // 2][1] < USERS  # drawn as they came
    assert [round(v) for _, v in drawn(dom, "chart-sessions", "in_grace")] == [0] * len(connected)

    assert round(drawn(dom, "chart-load", "load")[-1][1]) == USERS
    assert round(drawn(dom, "chart-load", "capacity")[-1][1]) == USERS
    assert round(drawn(dom, "chart-workers", "healthy")[-1][1]) == 1
    rates = during(drawn(dom, "chart-handshakes", "outcome-ok"))
    assert len(rates) >= 3 and all(0.5 < v < 4 for _, v in rates[1:-1])  # about 1.5 a second
    assert max(v for _, v in drawn(dom, "chart-queue", "queue_length")) == 0

    assert screenshot.parent == tmp_path and screenshot.stat().st_size > 20_000
