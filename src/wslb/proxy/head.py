"""
A request's head (request line and header lines) read once, strictly, for
every request the listener answers: WebSocket handshakes and plain HTTP
requests alike. What it refuses never reaches a worker: header lines wslb
would forward must mean to the worker what they meant to wslb (no folded
lines, no bare CR or LF, no other control characters).
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import urlsplit

from wslb.proxy.errors import badRequest

# RFC 9110 §5.6.2 tokens (methods, header names, subprotocols); header values
# without control characters but tab (a lone CR or LF would let a user write
# headers of its own into wslb's request to the worker); request targets of
# visible ASCII only (§4.1).
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_TARGET = re.compile(r"[\x21-\x7e]+\Z")
_ABSOLUTE_SCHEMES = ("ws", "wss", "http", "https")


class Head(NamedTuple):
    method: str
    target: str  # the request target as sent
    version: str  # "HTTP/1.1", ...
    headers: dict  # lower-cased name -> value (a repeated header's values joined by ", ")
    repeated: frozenset  # the lower-cased names that appeared more than once


def tokens(value):
    """The lower-cased items of a comma-separated header value."""
    return [token.strip().lower() for token in value.split(",")]


def readHead(head):
    """The L{Head} of a request's head (up to its blank line); or L{HandshakeRefused} 400."""
    lines = head.decode("iso-8859-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not TOKEN.match(parts[0]):
        raise badRequest("malformed request line")
    method, target, version = parts
    headers = {}
    repeated = set()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not TOKEN.match(name) or _CONTROL.search(value):
            raise badRequest("malformed header line")
        name = name.lower()
        value = value.strip(" \t")
        if name in headers:
            headers[name] += ", " + value
            repeated.add(name)
        else:
            headers[name] = value
    return Head(method, target, version, headers, frozenset(repeated))


def isUpgrade(head):
    """Whether the request asks for a WebSocket (whatever else it gets wrong)."""
    return "websocket" in tokens(head.headers.get("upgrade", ""))


def originForm(target):
    """
    The path and query a request target names: origin form as browsers
    send it, or absolute form (RFC 9112 §3.2.2), whose path is taken.
    """
    if not _TARGET.match(target) or "#" in target:
        raise badRequest("the request target must be a path, without a fragment")
    if target.startswith("/"):
        return target
    parts = urlsplit(target)
    if parts.scheme.lower() not in _ABSOLUTE_SCHEMES or not parts.netloc:
        raise badRequest("the request target must be a path, without a fragment")
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
