"""
examples/waiting-room.html in a real headless Chromium, against a running
wslb whose one worker is busy: the page shows its place going down while it
waits, then talks to the echo worker; a screenshot of each is kept.
"""

from pathlib import Path

import pytest
import pytest_twisted
from _browser import Page
from _cluster_helpers import workerStats
from _raw_ws import TEXT, connectRaw, frame, upgradeRequest
from twisted.internet import reactor
from twisted.web.server import Site
from twisted.web.static import File

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def held(wslb, key):
    raw = await connectRaw(wslb.port)
    raw.transport.write(upgradeRequest(wslb.port, f"/?session={key}"))
    return raw


def ended(raw):
    """The user behind ``raw`` (relayed) ends its session: its worker is free."""
    raw.transport.write(frame(TEXT, b"end"))


@pytest.mark.workers(1)
@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_the_example_page_shows_its_place_then_echoes(
        echo_workers, start_wslb, raws, tmp_path):
    wslb = await start_wslb(echo_workers, "queue.status_path=/wslb/queue",
                            "queue.client_path=/wslb/client.js", "queue.timeout=60")
    pages = reactor.listenTCP(0, Site(File(str(EXAMPLES))), interface="127.0.0.1")
    page = None
    try:
        holder = await held(wslb, "holder")  # the one worker is busy
        raws.append(holder)
        await holder.untilReceived(lambda data: b"101" in data)
        for n, key in enumerate(("ahead-1", "ahead-2"), 1):
            raws.append(await held(wslb, key))
            await wslb.waitQueued(n)  # in this order

        page = await Page.open(f"http://127.0.0.1:{pages.getHost().port}/waiting-room.html"
                               f"?wslb=http://127.0.0.1:{wslb.port}&fresh", tmp_path)
        assert await page.evaluateOnceTrue(
            "document.getElementById('position') && "
            "document.getElementById('position').textContent") == "2"
        await page.screenshot(tmp_path / "waiting-room-queued.png")

        # The users ahead are served one by one, each ending its session in turn.
        for user, position in ((holder, "1"), (raws[1], "0")):
            ended(user)
            served = raws[raws.index(user) + 1]
            await served.untilReceived(lambda data: b"101" in data)
            assert await page.evaluateOnceTrue(
                f"document.getElementById('position').textContent === '{position}'")
        ended(raws[2])
        log = await page.evaluateOnceTrue("document.getElementById('log').textContent")
        assert log == "echo: hello\n"
        assert await page.evaluate("document.getElementById('state').textContent") == (
            "Connected to your worker.")
        assert await page.evaluate("document.getElementById('history').textContent") == (
            "2, 1, 0")
        key = await page.evaluate("window.waitingRoom.key")
        assert len(key) == 32 and workerSaw(echo_workers[0], key)
        shot = await page.screenshot(tmp_path / "waiting-room-connected.png")
        assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 5000
        print(f"screenshots: {tmp_path}")
    finally:
        if page is not None:
            await page.close()
        await pages.stopListening()


def workerSaw(worker, key):
    return workerStats(worker)["sessions"].get(key, {}).get("connections") == 1
