"""
One JSON object per log line, for log pipelines (``[log] format = "json"``).

Each line has ``time`` (ISO-8601 UTC), ``level``, ``namespace``, ``message``
(the formatted text) and the event's own fields (``event``, ``key``,
``worker``, ``code``...), whose names are part of wslb's interface.
"""

import json
import sys
from datetime import UTC, datetime

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
)
from zope.interface import provider


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
