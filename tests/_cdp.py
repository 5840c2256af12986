"""
A real headless Chromium driven over the DevTools protocol, in real time: for
pages that keep connections open (a WebSocket, Server-Sent Events), which
_browser.render's virtual time would wait on forever. One page; read it with
``evaluate``, keep what it shows with ``screenshot``.
"""

import base64
import json
import os

import treq
from _browser import chromium
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater

TIMEOUT = 15.0


class _Quiet(protocol.ProcessProtocol):
    def __init__(self):
        self.err = []
        self.ended = defer.Deferred()

    def errReceived(self, data):
        self.err.append(data)

    def processEnded(self, reason):
        self.ended.callback(None)


class _DevTools(WebSocketClientProtocol):
    """CDP commands by id; events kept by method."""

    def onOpen(self):
        self.factory.opened.callback(self)

    def onMessage(self, payload, isBinary):
        message = json.loads(payload)
        waiting = self.factory.calls.pop(message.get("id"), None)
        if waiting is None:
            self.factory.events.append(message)
        elif "error" in message:
            waiting.errback(RuntimeError(f"CDP error: {message['error']}"))
        else:
            waiting.callback(message.get("result", {}))


class Chromium:
    """``await Chromium.start(directory)``; ``await browser.stop()`` when done."""

    @classmethod
    async def start(cls, directory, size=(1000, 700)):
        self = cls()
        executable = chromium()
        profile = directory / "profile"
        args = [executable, "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--hide-scrollbars", "--force-device-scale-factor=1",
                f"--window-size={size[0]},{size[1]}", f"--user-data-dir={profile}",
                "--remote-debugging-port=0", "--remote-allow-origins=*", "about:blank"]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(directory),
               "TZ": "UTC"}
        self._process = _Quiet()
        self._transport = reactor.spawnProcess(self._process, executable, args, env=env)
        try:
            port = await self._port(profile / "DevToolsActivePort")
            pages = await (await treq.get(f"http://127.0.0.1:{port}/json/list",
                                          timeout=TIMEOUT)).json()
            [page] = [p for p in pages if p["type"] == "page"]
            factory = WebSocketClientFactory(page["webSocketDebuggerUrl"])
            factory.protocol = _DevTools
            factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
            factory.opened, factory.calls, factory.events = defer.Deferred(), {}, []
            self._factory = factory
            await TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5).connect(factory)
            self._client = await factory.opened.addTimeout(TIMEOUT, reactor)
        except BaseException:
            await self.stop()
            raise
        self._ids = 0
        return self

    async def _port(self, path):
        for _ in range(int(TIMEOUT / 0.1)):
            if path.exists() and path.read_text().strip():
                return int(path.read_text().split()[0])
            await deferLater(reactor, 0.1)
        raise RuntimeError("Chromium did not open its DevTools port:\n"
                           + b"".join(self._process.err).decode("utf-8", "replace")[-2000:])

    def send(self, method, **params):
        self._ids += 1
        reply = self._factory.calls[self._ids] = defer.Deferred()
        self._client.sendMessage(json.dumps(
            {"id": self._ids, "method": method, "params": params}).encode("utf-8"))
        return reply.addTimeout(TIMEOUT, reactor)

    async def navigate(self, url):
        await self.send("Page.navigate", url=url)

    async def evaluate(self, expression):
        """The value of a JavaScript expression in the page (JSON-able)."""
        result = await self.send("Runtime.evaluate", expression=expression,
                                 returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path):
        shot = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    async def stop(self):
        client = getattr(self, "_client", None)
        if client is not None and client.transport is not None:
            client.transport.abortConnection()
        if self._process.ended.called:
            return
        self._transport.signalProcess("KILL")
        await self._process.ended
