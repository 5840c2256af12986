"""
Waiting for what a test cannot be told about: poll it, and fail at a
deadline saying what was awaited (and what was last seen).
"""

import inspect
import time

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

TIMEOUT = 5  # seconds: the default bound on every wait in the suite's helpers


def waitFor(fetch, predicate=bool, *, timeout=TIMEOUT, interval=0.05, what=None):
    """
    Call ``fetch()`` (a value, a Deferred or a coroutine) every ``interval``
    seconds until ``predicate`` holds for what it gave; a Deferred that fires
    with that value. At the deadline: AssertionError naming ``what`` (a
    string, or a function giving one then) or the predicate, and the last value.
    """
    return defer.ensureDeferred(_poll(fetch, predicate, timeout, interval, what))


async def _poll(fetch, predicate, timeout, interval, what):
    deadline = reactor.seconds() + timeout
    while True:
        value = fetch()
        if inspect.isawaitable(value):
            value = await value
        if predicate(value):
            return value
        if reactor.seconds() >= deadline:
            awaited = (what() if callable(what) else what) or (
                "true" if predicate is bool else getattr(predicate, "__qualname__", predicate))
            raise AssertionError(
                f"still not {awaited} after {timeout}s; last seen: {value!r:.2000}")
        await deferLater(reactor, interval)


def waitForBlocking(check, *, timeout, interval=0.05, what, retrying=()):
    """
    For what runs before (or beside) the reactor: call ``check()`` every
    ``interval`` seconds until it returns something true, and return that;
    ``retrying`` exceptions count as not yet, any other ends the wait. At the
    deadline: AssertionError naming ``what`` (a string, or a function giving
    one then, e.g. a process's output).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except retrying:
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            awaited = what() if callable(what) else what
            raise AssertionError(f"still not {awaited} after {timeout}s")
        time.sleep(interval)
