"""The JSON log lines: one object per event, its message formatted as Twisted would."""

import hashlib
import io
import json

import pytest
import pytest_twisted
from _polling import waitFor
from twisted.logger import (
    Logger,
    LogLevel,
    LogPublisher,
    formatEvent,
    formatEventAsClassicLogText,
)
from twisted.python.failure import Failure

from wslb.logs import Logger as wslbLogger
from wslb.logs import (
    _ClassicText,
    fingerprint,
    jsonLineObserver,
    showSessionKeys,
    textLineObserver,
)


def logged(emit):
    out = io.StringIO()
    emit(Logger(namespace="wslb.test", observer=LogPublisher(jsonLineObserver(out))))
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_aConnectionEventIsOneLineWithItsFields():
    [line] = logged(lambda log: log.info(
        "{key} relaying to {worker_url} ({why!r})", event="opened", key="k1",
        worker_url="ws://10.0.0.1:9000/", why=ValueError("x"), cost=2))
    assert line["message"] == "k1 relaying to ws://10.0.0.1:9000/ (ValueError('x'))"
    assert (line["event"], line["key"], line["cost"], line["level"], line["namespace"]) == (
        "opened", "k1", 2, "info", "wslb.test")
    assert line["time"].endswith("Z") and "why" not in line  # not JSON-able: left out


@pytest.mark.parametrize("fmt, fields, message", [
    ("{f()} calls", {"f": lambda: 3}, "3 calls"),  # Twisted's call syntax
    ("{missing}", {}, "Unable to format event"),
    ("{{braces}} {k:>3}", {"k": "z"}, "{braces}   z"),
])
def test_messagesReadAsTwistedFormatsThem(fmt, fields, message):
    [line] = logged(lambda log: log.info(fmt, **fields))
    assert line["message"].startswith(message)


def test_debugIsLeftOut():
    assert logged(lambda log: log.debug("quiet")) == []


def _failure():
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        return Failure()


@pytest.mark.parametrize("event", [
    {"log_format": "{key} relaying to {worker}", "key": "k1", "worker": "w:1",
     "log_namespace": "wslb.proxy.opening", "log_level": LogLevel.info},
    {"log_format": "two\nlines {x!r}", "x": b"\xff", "log_system": "-",
     "log_level": LogLevel.warn},
    {"log_format": "{f()} calls", "f": lambda: 3, "log_namespace": "n"},
    {"log_format": "{missing}", "log_level": LogLevel.error},
    {"log_format": "boom", "log_failure": _failure(), "log_namespace": "n",
     "log_level": LogLevel.critical},
    {"log_format": None, "log_namespace": "n"},
    {"log_namespace": "no format, no line"},
    {"log_format": "no time, no namespace"},
])
@pytest.mark.parametrize("when", [1795772181.25, 1795772181.75, None])
def test_textLinesAreTwistdsToTheLetter(event, when):
    if when is not None:
        event = {**event, "log_time": when}
    ours = _ClassicText()
    ours({"log_format": "an earlier second", "log_time": 1795772100.0})  # the stamp cache
    assert ours(event) == formatEventAsClassicLogText(event)


def test_textLineObserverWritesEveryLevel():
    out = io.StringIO()
    log = Logger(namespace="wslb.test", observer=LogPublisher(textLineObserver(out)))
    log.debug("quiet {n}", n=1)
    log.info("loud")
    assert [line.split(" ", 1)[1] for line in out.getvalue().splitlines()] == [
        "[wslb.test#debug] quiet 1", "[wslb.test#info] loud"]


# -- session keys ---------------------------------------------------------------


@pytest.fixture
def events(log_events):
    """Every log event during the test, and the session key mode put back after."""
    yield log_events
    showSessionKeys("fingerprint")


def test_a_session_key_is_logged_as_its_fingerprint_unless_plain(events):
    log = wslbLogger(namespace="wslb.test")
    log.info("{key} relaying", key="alice-key")
    showSessionKeys("plain")
    log.info("{key} relaying", key="alice-key")
    log.info("no key", key=None)
    assert [(e.get("key"), formatEvent(e)) for e in events] == [
        (fingerprint("alice-key"), f"{fingerprint('alice-key')} relaying"),
        ("alice-key", "alice-key relaying"),
        (None, "no key"),
    ]
    assert fingerprint("alice-key") == hashlib.sha256(b"alice-key").hexdigest()[:12]


@pytest.mark.parametrize("mode", ["fingerprint", "plain"])
@pytest_twisted.ensureDeferred
async def test_a_relayed_users_key_never_reaches_the_logs_unless_plain(
        echo_worker, start_wslb, events, mode):
    key = "alice-very-secret-key"
    wslb = await start_wslb([echo_worker], f"log.session_keys={mode}")
    client = await wslb.connect(key)
    await client.ask("whoami")
    client.sendClose()
    await client.waitClosed()
    await waitFor(lambda: events, lambda seen: any(e.get("event") == "closed" for e in seen),
                  what="the relay's closed event")
    shown = key if mode == "plain" else fingerprint(key)
    keyed = [e for e in events if e.get("event") in ("opened", "closed")]
    assert [e["key"] for e in keyed] == [shown, shown]
    text = "\n".join(formatEvent(e) + repr(e) for e in events)
    assert (key in text) == (mode == "plain")
