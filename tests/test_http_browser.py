"""
The README's browser example, in a real headless Chromium, through
``twistd -n wslb`` on its embedded default (two local echo workers) with
``[http] paths = ["/session/"]``: the echo worker's demo page opens a
WebSocket (wslb mints the session cookie), then ``fetch("/session/whoami")``
and a ``POST /session/upload`` with that cookie reach the same worker.
"""

import json
import socket

import pytest
import pytest_twisted
from _browser import evaluateOnceTrue, parse
from _cluster_helpers import healthyWorkers
from _echo_helpers import connectWebSocket, getJSON
from _polling import waitFor
from _twistd_helpers import TwistdWslb
from conftest import free_port

pytestmark = pytest.mark.timeout(90)


def twoFreePorts():
    """A range of two free loopback ports, for the local provider's workers."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return f"{port}-{port + 1}"
    raise RuntimeError("no two free ports in a row")


@pytest_twisted.ensureDeferred
async def test_a_page_fetches_from_the_worker_its_websocket_reached(tmp_path, stop_after):
    wslb = stop_after(TwistdWslb(tmp_path, 'http.paths=["/session/"]',
                                 f"pool.local.ports={twoFreePorts()}")).waitListening()
    # The local provider starts both (a loaded box: up to 30 s).
    await waitFor(lambda: healthyWorkers(wslb), lambda n: n == 2, timeout=30, interval=0.1,
                  what="two healthy local workers")
    # The page comes from a worker too, through wslb: its request needs a session.
    opener = await connectWebSocket(wslb.url("/?session=page"))
    html = await evaluateOnceTrue(
        f"http://127.0.0.1:{wslb.port}/session/demo?session=page",
        "document.getElementById('out').dataset.same && "
        "document.getElementById('out').outerHTML", tmp_path)
    opener.transport.loseConnection()
    out = parse(html).byId("out")
    assert out.text().startswith("{"), (out.text(), wslb.output())
    seen = json.loads(out.text())
    assert out.attrs["data-same"] == "true", seen
    assert seen["websocket"] == seen["http"] == seen["upload"]
    assert seen["session"] not in ("page", "-")  # minted for the page's WebSocket
    assert seen["uploaded"] == 100000
    _, sessions = await getJSON(wslb.admin + "/api/v1/sessions")
    assert {s["key"] for s in sessions["sessions"]} == {"page", seen["session"]}
