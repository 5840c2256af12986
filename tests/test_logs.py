"""The JSON log lines: one object per event, its message formatted as Twisted would."""

import io
import json

import pytest
from twisted.logger import Logger, LogPublisher

from wslb.logs import jsonLineObserver


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
