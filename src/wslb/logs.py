"""
wslb's log observers, both cheaper than Twisted's formatting (an opened and
a closed line per connection cost a tenth of a short connection's CPU).

``[log] format = "json"``: one JSON object per line, for log pipelines. Each
line has ``time`` (ISO-8601 UTC), ``level``, ``namespace``, ``message`` (the
formatted text) and the event's own fields (``event``, ``key``, ``worker``,
``code``...), whose names are part of wslb's interface.

``"text"``: twistd's own lines, ``TIME [namespace#level] message``, to the
letter; the time is formatted once a second, not once an event.

Session keys are credentials when they are not signed: wslb's modules log
through L{Logger}, which shows a ``key=`` field as its fingerprint unless
``[log] session_keys = "plain"`` (L{showSessionKeys}).
"""

import hashlib
import json
import sys
from datetime import UTC, datetime

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatTime,
)
from zope.interface import provider

from twisted import logger


def fingerprint(key):
    """A session key as logs show it: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


_shownKey = fingerprint


def showSessionKeys(mode):
    """``"fingerprint"`` (the default) or ``"plain"``: how L{Logger} shows ``key=``."""
    global _shownKey
    _shownKey = str if mode == "plain" else fingerprint


class Logger(logger.Logger):
    """Twisted's Logger, but a session key given as ``key=`` is logged as configured."""

    def emit(self, level, format=None, **kwargs):
        key = kwargs.get("key")
        if key is not None:
            kwargs["key"] = _shownKey(key)
        super().emit(level, format, **kwargs)


def _message(event):
    """
    The event's text. Plain ``str.format_map`` does wslb's own formats in a
    twentieth of formatEvent's time (connection events are logged several
    times per connection); what it cannot do (``{f()}`` calls, missing
    fields, no format) goes to formatEvent.
    """
    try:
        return event["log_format"].format_map(event)
    except Exception:
        return formatEvent(event)


def _record(event):
    record = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), UTC)
        .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": event["log_level"].name if "log_level" in event else "info",
        "namespace": event.get("log_namespace", "-"),
        "message": _message(event),
    }
    for name, value in event.items():
        if name.startswith("log_") or name in record:
            continue
        if isinstance(value, (str, int, float, bool, type(None), list, tuple)):
            record[name] = value
    failure = event.get("log_failure")
    if failure is not None:
        record["failure"] = failure.getTraceback()
    return record


def jsonLineObserver(outFile):
    """An observer writing each event at info level or above as one JSON line."""

    @provider(ILogObserver)
    def write(event):
        outFile.write(json.dumps(_record(event), default=str) + "\n")
        outFile.flush()

    return FilteringLogObserver(
        write, [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)]
    )


def json_stdout():
    """For ``twistd --logger=wslb.logs.json_stdout``: JSON lines on stdout."""
    return jsonLineObserver(sys.stdout)


class _ClassicText:
    """Formats an event as twistd's text log observer does."""

    def __init__(self):
        self._second = None
        self._stamp = "-"

    def _time(self, when):
        if when is None:
            return "-"
        second = int(when)
        if second != self._second:  # no part of the format is finer than a second
            self._second, self._stamp = second, formatTime(second)
        return self._stamp

    def __call__(self, event):
        text = _message(event)
        failure = event.get("log_failure")
        if failure is not None:
            try:
                traceback = failure.getTraceback()
            except Exception:
                traceback = "(UNABLE TO OBTAIN TRACEBACK FROM EVENT)\n"
            text = "\n".join((text, traceback))
        if not text:
            return None
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{level.name if level else '-'}"
        text = text.replace("\n", "\n\t")
        return f"{self._time(event.get('log_time'))} [{system}] {text}\n"


def textLineObserver(outFile):
    """An observer writing every event as twistd's text log does."""
    return FileLogObserver(outFile, _ClassicText())


def text_stdout():
    """For ``twistd --logger=wslb.logs.text_stdout``: twistd's text lines on stdout."""
    return textLineObserver(sys.stdout)
