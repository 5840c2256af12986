"""What wslb warns of when it is built from a config that leaves a door open."""

import pytest
from twisted.logger import globalLogPublisher

from wslb.config import load_config
from wslb.service import makeService

LOOPBACK = "tcp:0:interface=127.0.0.1"


def warningsFor(*overrides):
    """The formats of the warnings logged while a service is built (not started)."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        makeService(load_config(environ={}, overrides=[
            f"listen.endpoint={LOOPBACK}", f"admin.endpoint={LOOPBACK}",
            "pool.provider=static", *overrides]))
    finally:
        globalLogPublisher.removeObserver(events.append)
    return [e for e in events if e.get("log_level") is not None
            and e["log_level"].name == "warn"]


def cookieWarnings(*overrides):
    return [e for e in warningsFor(*overrides) if "allowed_origins" in e["log_format"]]


def test_a_cookie_source_without_allowed_origins_is_warned_of():
    [warning] = cookieWarnings()
    assert warning["sources"] == "cookie:wslb_session"
    [warning] = cookieWarnings('session.sources=["query:s", "cookie:sid"]',
                               'cost.sources=["cookie:cost"]')
    assert warning["sources"] == "cookie:sid, cookie:cost"


@pytest.mark.parametrize("overrides", [
    ['listen.allowed_origins=["https://app.example.com"]'],
    ['session.sources=["query:session"]', "session.issue_cookie=false"],
])
def test_no_warning_with_origins_or_without_cookies(overrides):
    assert cookieWarnings(*overrides) == []
