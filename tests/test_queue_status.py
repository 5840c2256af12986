"""
The queue's status on the listener ([queue] status_path): a key's place as
JSON and as Server-Sent Events, found as a handshake's key is; and the
browser client ([queue] client_path). On makeProxy's listener over the memory
registry, with real sockets.
"""

import pytest
import pytest_twisted
import treq
from _polling import waitFor
from _sse import openEvents
from registry_contract import addHealthy, request
from twisted.internet import defer, reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater

from wslb.config import load_config
from wslb.metrics import Metrics
from wslb.proxy.queue_status import EVENT_INTERVAL
from wslb.proxy.service import makeProxy
from wslb.proxy.signing import Signer
from wslb.registry.memory import MemoryRegistry

pytestmark = pytest.mark.timeout(30)

STATUS = ("queue.status_path=/wslb/queue", "queue.client_path=/wslb/client.js")
SECRET = "s3cret-for-the-queue-status"


class Listener:
    """makeProxy's listener and services over a memory registry; a full worker, a queue."""

    def __init__(self, *overrides):
        self.config = load_config(overrides=[*STATUS, *overrides])
        self.registry = MemoryRegistry(reactor)
        self.proxy = makeProxy(self.config, self.registry, Metrics(), reactor, "test")
        self.tickets = {}

    async def start(self, queued=()):
        for service in self.proxy.services:
            service.startService()
        self.port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            self.proxy.factory)
        # The router's heartbeat expires tickets by the reactor's clock.
        now = reactor.seconds()
        await addHealthy(self.registry, "w1", now=now)
        await self.registry.assign(request("holder"), now)
        for key in queued:
            await self.queue(key)
        return self

    async def queue(self, key):
        result = await self.registry.assign(request(key), reactor.seconds())
        self.tickets[key] = result.ticket

    def url(self, path):
        return f"http://127.0.0.1:{self.port.getHost().port}{path}"

    async def get(self, path, headers=None):
        response = await treq.get(self.url(path), headers=headers, timeout=5)
        return response.code, await response.json(), response

    async def serve(self, key):
        """The worker frees and ``key`` (queued) is bound."""
        await self.registry.endSession("holder")
        assigned = await self.registry.assign(request(key, ticket=self.tickets[key]),
                                              reactor.seconds())
        assert assigned.fresh

    async def stop(self):
        await self.port.stopListening()
        for service in reversed(self.proxy.services):
            await defer.maybeDeferred(service.stopService)
        for channel in list(self.proxy.web.channels):
            channel.transport.abortConnection()


@pytest_twisted.async_fixture()
async def listener(stop_after):
    return await stop_after(Listener()).start(queued="abc")


@pytest_twisted.ensureDeferred
async def test_a_keys_place_as_json(listener):
    code, body, response = await listener.get("/wslb/queue?session=b")
    assert (code, body) == (200, {"queued": True, "position": 1, "length": 3,
                                  "eta_seconds": None})
    assert response.headers.getRawHeaders("Cache-Control") == ["no-store"]
    # The key as a handshake carries it: cookie, query, header.
    code, body, _ = await listener.get("/wslb/queue", {"Cookie": "wslb_session=c"})
    assert body["position"] == 2
    code, body, _ = await listener.get("/wslb/queue", {"X-WSLB-Session": "a"})
    assert body["position"] == 0
    assert (await listener.get("/wslb/queue?session=nobody"))[:2] == (200, {"queued": False})
    assert (await listener.get("/wslb/queue?session=holder"))[:2] == (
        200, {"queued": False, "ready": True})
    # No key is minted for a question: 400; a bad one: 400.
    code, body, _ = await listener.get("/wslb/queue")
    assert (code, body) == (400, {"error": "no session key in the request"})
    code, body, _ = await listener.get("/wslb/queue?session=no%20spaces")
    assert code == 400 and "session key from query:session" in body["error"]
    assert (await listener.get("/wslb/queuex?session=a"))[0] == 404


@pytest_twisted.ensureDeferred
async def test_signed_keys_as_for_a_handshake(stop_after):
    listener = await stop_after(Listener(f'session.secret="{SECRET}"')).start(queued="ab")
    code, body, _ = await listener.get("/wslb/queue?session=b")
    assert code == 401 and "session key from" in body["error"]
    signed = Signer(SECRET, [], reactor).mintCookie("b")
    code, body, _ = await listener.get("/wslb/queue", {"Cookie": f"wslb_session={signed}"})
    assert (code, body["position"]) == (200, 1)


@pytest_twisted.ensureDeferred
async def test_events_follow_the_position_once_a_second_and_end_with_ready(listener):
    code, stream = await openEvents(listener.url("/wslb/queue/events?session=c"),
                                    {"Origin": "https://app.example"})
    assert code == 200
    headers = stream.response.headers
    assert headers.getRawHeaders("Content-Type") == ["text/event-stream"]
    assert headers.getRawHeaders("Access-Control-Allow-Origin") == ["https://app.example"]
    first, at = await stream.next()
    assert first == {"queued": True, "position": 2, "length": 3, "eta_seconds": None}
    # Two leave at once: one event, the latest place, a second after the first.
    await listener.registry.leaveQueue(listener.tickets["a"])
    await listener.registry.leaveQueue(listener.tickets["b"])
    second, later = await stream.next()
    assert second["position"] == 0
    assert later - at >= EVENT_INTERVAL * 0.95
    await deferLater(reactor, 0.5)  # the thing tested: no event meanwhile
    assert stream.pending() == 0  # nothing new: no event
    await listener.serve("c")
    ready, _ = await stream.next()
    assert ready == {"queued": False, "ready": True}
    await stream.ended.addTimeout(5, reactor)  # and the stream is over
    assert ("retry", "2000") in stream.fields


@pytest_twisted.ensureDeferred
async def test_a_stream_for_a_bound_key_is_204_and_a_lost_place_ends_it(listener):
    code, _ = await openEvents(listener.url("/wslb/queue/events?session=holder"))
    assert code == 204  # an EventSource stops reconnecting
    code, stream = await openEvents(listener.url("/wslb/queue/events?session=b"))
    assert (await stream.next())[0]["position"] == 1
    await listener.registry.leaveQueue(listener.tickets["b"])  # gone for good
    assert (await stream.next())[0] == {"queued": False}
    await stream.ended.addTimeout(5, reactor)


@pytest_twisted.ensureDeferred
async def test_a_stream_waits_for_a_handshake_not_queued_yet(listener):
    code, stream = await openEvents(listener.url("/wslb/queue/events?session=late"))
    assert (await stream.next())[0] == {"queued": False}
    await listener.queue("late")
    await listener.registry.leaveQueue(listener.tickets["a"])  # a notice: places are read
    assert (await stream.next())[0]["position"] == 2
    stream.close()
    await waitFor(lambda: not listener.proxy.services[-1]._listeners,
                  what="the watch following it no more")


@pytest_twisted.ensureDeferred
async def test_the_client_script_and_paths_off_by_default(stop_after):
    listener = await stop_after(Listener()).start()
    response = await treq.get(listener.url("/wslb/client.js"), timeout=5)
    assert response.code == 200
    assert response.headers.getRawHeaders("Content-Type") == [
        "text/javascript; charset=utf-8"]
    assert b"wslb" in await response.content()
    off = stop_after(Listener("queue.status_path=\"\"", "queue.client_path=\"\""))
    off.config = load_config(overrides=[])
    off.proxy = makeProxy(off.config, off.registry, Metrics(), reactor, "test")
    await off.start()
    for path in ("/wslb/queue?session=a", "/wslb/client.js"):
        response = await treq.get(off.url(path), timeout=5)
        assert response.code == 426  # not served: a GET that is no upgrade
        await response.content()
