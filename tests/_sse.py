"""A Server-Sent Events client for tests: treq, the body read as it comes."""

import json

import treq
from twisted.internet import defer, reactor

TIMEOUT = 5


class EventStream:
    """
    The events of one stream: ``next()`` fires with the next one's data
    (decoded JSON) and the reactor time it came; ``ended`` when the server
    finished the stream.
    """

    def __init__(self, response):
        self.response = response
        self.comments = 0
        self.fields = []  # (name, value) of every line but data and comments
        self._events = defer.DeferredQueue()
        self._buffer = b""
        self.ended = treq.collect(response, self._received)

    def _received(self, data):
        self._buffer += data
        while b"\n\n" in self._buffer:
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            for line in block.decode("utf-8").split("\n"):
                name, _, value = line.partition(":")
                if name == "":
                    self.comments += 1
                elif name == "data":
                    self._events.put((json.loads(value), reactor.seconds()))
                else:
                    self.fields.append((name, value.strip()))

    def next(self, timeout=TIMEOUT):
        return self._events.get().addTimeout(timeout, reactor)

    def pending(self):
        return len(self._events.pending)

    def close(self):
        self.response.original._transport.stopProducing()  # the client leaves


async def openEvents(url, headers=None):
    """GET ``url`` as an EventSource would; fire with (status, EventStream or the body)."""
    response = await treq.get(url, headers={"Accept": "text/event-stream", **(headers or {})},
                              unbuffered=True, timeout=TIMEOUT)
    if response.code != 200:
        return response.code, await response.content()
    return response.code, EventStream(response)
