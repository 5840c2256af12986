"""
A real headless Chromium for page tests, without WebDriver: one run loads a
URL, lets its scripts run for a budget of virtual time (which waits for
pending fetches), then prints the DOM and saves a screenshot. It runs as a
child process of the reactor, so the test's own server keeps answering.
"""

import base64
import json
import os
import shutil
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest
from _polling import waitFor
from twisted.internet import defer, protocol, reactor

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
INSTALL_HINT = "apt-get install -y chromium"
TIMEOUT = 30.0  # seconds for the whole browser run


def chromium():
    """The Chromium executable; the test fails (not skips) without one: CI installs it."""
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    pytest.fail(f"headless Chromium is required for this test and none of "
                f"{', '.join(CHROMIUM_NAMES)} is on PATH; install it: {INSTALL_HINT}",
                pytrace=False)


class _Collect(protocol.ProcessProtocol):
    def __init__(self):
        self.out = []
        self.err = []
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.out.append(data)

    def errReceived(self, data):
        self.err.append(data)

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


async def render(url, directory, budget_ms=5000, size=(1280, 900)):
    """
    Fire with (the DOM as HTML after ``budget_ms`` of virtual time, the
    screenshot's path), or fail the test with Chromium's error output.
    """
    screenshot = directory / "screenshot.png"
    args = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-extensions",
        "--hide-scrollbars", "--force-device-scale-factor=1", "--lang=en-US",
        f"--user-data-dir={directory / 'profile'}",
        f"--virtual-time-budget={budget_ms}",
        f"--window-size={size[0]},{size[1]}",
        f"--screenshot={screenshot}",
        "--dump-dom", url,
    ]
    executable = chromium()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(directory), "TZ": "UTC"}
    collect = _Collect()
    process = reactor.spawnProcess(collect, executable, [executable, *args], env=env)
    timer = reactor.callLater(TIMEOUT, process.signalProcess, "KILL")
    code = await collect.ended
    timedOut = not timer.active()
    if not timedOut:
        timer.cancel()
    errors = b"".join(collect.err).decode("utf-8", "replace")[-3000:]
    if timedOut or code != 0:
        pytest.fail(f"Chromium {'timed out' if timedOut else f'exited with {code}'} "
                    f"loading {url}:\n{errors}")
    return b"".join(collect.out).decode("utf-8"), screenshot


class _DevTools(protocol.ProcessProtocol):
    """Chromium's DevTools protocol over --remote-debugging-pipe: JSON, NUL-terminated."""

    def __init__(self):
        self.err = []
        self.ended = defer.Deferred()
        self._buffer = b""
        self._waiting = {}  # id -> Deferred
        self._next = 0

    def childDataReceived(self, fd, data):
        if fd == 2:
            self.err.append(data)
            return
        if fd != 4:
            return
        self._buffer += data
        *messages, self._buffer = self._buffer.split(b"\0")
        for raw in messages:
            message = json.loads(raw)
            waiting = self._waiting.pop(message.get("id"), None)
            if waiting is not None:
                waiting.callback(message)

    def send(self, method, sessionId=None, **params):
        """Fire with the answer's ``result`` (or fail with its error)."""
        self._next += 1
        command = {"id": self._next, "method": method, "params": params}
        if sessionId is not None:
            command["sessionId"] = sessionId
        answer = self._waiting[self._next] = defer.Deferred()
        self.transport.writeToChild(3, json.dumps(command).encode() + b"\0")

        def result(message):
            if "error" in message:
                raise RuntimeError(f"{method}: {message['error']}")
            return message["result"]

        return answer.addCallback(result)

    def processEnded(self, reason):
        for waiting in self._waiting.values():
            waiting.errback(RuntimeError("Chromium exited"))
        self._waiting = {}
        self.ended.callback(reason.value.exitCode)


class Page:
    """
    One page in a headless Chromium driven in real time over the DevTools
    protocol: for pages that wait on what --virtual-time-budget does not
    wait for (a WebSocket, Server-Sent Events). ``await Page.open(url,
    directory)``; ``await page.close()`` when done.
    """

    @classmethod
    async def open(cls, url, directory, size=(1000, 700)):
        self = cls()
        executable = chromium()
        args = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-extensions", "--remote-debugging-pipe",
            "--hide-scrollbars", "--force-device-scale-factor=1",
            f"--window-size={size[0]},{size[1]}",
            f"--user-data-dir={directory / 'profile'}", "about:blank",
        ]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(directory),
               "TZ": "UTC"}
        self.url = url
        self._tools = _DevTools()
        self._process = reactor.spawnProcess(
            self._tools, executable, [executable, *args], env=env,
            childFDs={0: "w", 1: "r", 2: "r", 3: "w", 4: "r"})
        try:
            target = await self._tools.send("Target.createTarget", url=url)
            attached = await self._tools.send("Target.attachToTarget",
                                              targetId=target["targetId"], flatten=True)
        except BaseException:
            await self.close()
            raise
        self._session = attached["sessionId"]
        return self

    async def evaluate(self, expression):
        """What ``expression`` (JavaScript) evaluates to in the page now."""
        answer = await self._tools.send("Runtime.evaluate", self._session,
                                        expression=expression, returnByValue=True)
        return answer["result"].get("value")

    async def evaluateOnceTrue(self, expression, poll=0.1, timeout=TIMEOUT):
        """
        Fire with what ``expression`` evaluates to once it is truthy, asked
        every ``poll`` seconds; fails the test when it is not so in time.
        """
        return await waitFor(
            lambda: self.evaluate(expression), timeout=timeout, interval=poll,
            what=lambda: f"{expression} on {self.url}, Chromium saying:\n{self._errors()}")

    def _errors(self):
        return b"".join(self._tools.err).decode("utf-8", "replace")[-3000:]

    async def screenshot(self, path):
        """Save what the page shows now as a PNG at ``path``."""
        shot = await self._tools.send("Page.captureScreenshot", self._session, format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    async def close(self):
        if not self._tools.ended.called:
            self._process.signalProcess("KILL")
            await self._tools.ended


async def evaluateOnceTrue(url, expression, directory, poll=0.1):
    """
    Load ``url`` and fire with what ``expression`` (JavaScript) evaluates to
    once it is truthy, asked every ``poll`` seconds in real time (L{Page}).
    Fails the test when it is not so within TIMEOUT.
    """
    page = await Page.open(url, directory)
    try:
        return await page.evaluateOnceTrue(expression, poll)
    finally:
        await page.close()


# -- reading the dumped DOM ------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
        "source", "track", "wbr"}


@dataclass
class Element:
    tag: str
    attrs: dict
    children: list = field(default_factory=list)  # Elements and strings

    def iter(self):
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter()

    def text(self):
        """The textContent, whitespace runs folded to one space."""
        parts = [c if isinstance(c, str) else c.text() for c in self.children]
        return " ".join("".join(parts).split())

    def byId(self, id):
        found = [e for e in self.iter() if e.attrs.get("id") == id]
        assert found, f"no element #{id} in the page"
        return found[0]

    def all(self, tag):
        return [e for e in self.iter() if e.tag == tag]

    def classes(self):
        return (self.attrs.get("class") or "").split()

    def cells(self):
        """A table's body rows, each as the list of its cells."""
        [body] = self.all("tbody")
        return [row.all("td") for row in body.all("tr")]

    def rows(self):
        """A table's body rows, each as the list of its cells' texts."""
        return [[cell.text() for cell in row] for row in self.cells()]


class _TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        element = Element(tag, dict(attrs))
        self.stack[-1].children.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_endtag(self, tag):
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(html):
    """The dumped DOM as a tree of L{Element}s."""
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root
