"""
RFC 6455 vocabulary the relay needs besides its parser: the close codes
wslb sends, the close and ping frames it writes of its own, and unmasking.
"""

from __future__ import annotations

import os

CLOSE_GOING_AWAY = 1001  # shutdown; to a worker whose user left
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_PAYLOAD = 1007  # invalid UTF-8 in a text message
CLOSE_POLICY = 1008  # a limit closed the user (idle timeout)
CLOSE_TOO_BIG = 1009  # over [listen] max_message_size
CLOSE_TRY_AGAIN = 1012  # the worker went away, or the session moved: reconnect

# Close codes a peer may send (RFC 6455 §7.4.1, as autobahn checks them);
# 3000-4999 are for applications.
SENDABLE_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013))

# The payload of wslb's own pings: their pongs stop at wslb, they are not relayed.
PING_PAYLOAD = os.urandom(8)
PING_TO_USER = b"\x89\x08" + PING_PAYLOAD


def unmask(payload, key):
    """``payload`` XOR the 4-byte ``key`` repeated: masks and unmasks alike."""
    n = len(payload)
    mask = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")).to_bytes(
        n, "little")


def closeFrame(code, reason, masked):
    """A close frame, masked when it goes to a worker (wslb is its client)."""
    payload = b"" if code is None else code.to_bytes(2, "big") + reason.encode("utf-8")[:123]
    if not masked:
        return bytes((0x88, len(payload))) + payload
    key = os.urandom(4)
    return bytes((0x88, 0x80 | len(payload))) + key + unmask(payload, key)


def pingToWorker():
    """wslb's ping to a worker, masked with a fresh key."""
    key = os.urandom(4)
    return b"\x89\x88" + key + unmask(PING_PAYLOAD, key)


def closeProblem(payload):
    """Why a close frame's payload is malformed: (close code, reason), or None."""
    if not payload:
        return None
    code = int.from_bytes(payload[:2], "big")
    if len(payload) == 1 or not (code in SENDABLE_CODES or 3000 <= code <= 4999):
        return CLOSE_PROTOCOL_ERROR, "bad close frame"
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        return CLOSE_INVALID_PAYLOAD, "invalid UTF-8"
    return None
