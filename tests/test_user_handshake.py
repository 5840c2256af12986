"""
The user's opening handshake as the byte relay reads and answers it: which
requests it takes, what it answers the others (end to end in test_proxy_e2e.py
and test_user_handshake_e2e.py).
"""

import pytest
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport

from wslb.proxy.errors import HandshakeRefused
from wslb.proxy.transports import takeOver
from wslb.proxy.user_handshake import readRequest, refusal, switchingProtocols

SAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3
GOOD = [
    "GET /scene/7?session=k&cost=2 HTTP/1.1", "Host: wslb.example:443", "Upgrade: websocket",
    "Connection: keep-alive, Upgrade", "Sec-WebSocket-Version: 13",
    f"Sec-WebSocket-Key: {SAMPLE_KEY}", "Origin: https://app.example",
]


def head(lines):
    return "\r\n".join(lines).encode("latin-1")


def replaced(lines, name, value):
    """``lines`` with header ``name`` set to ``value`` (None: left out)."""
    kept = [line for line in lines if not line.lower().startswith(name.lower() + ":")]
    return kept if value is None else kept + [f"{name}: {value}"]


def test_a_good_request_gives_its_fields_and_key():
    request, key = readRequest(head(GOOD + [
        "Sec-WebSocket-Protocol: v2, v1", "Cookie: a=1", "cookie: b=2", "X-Odd:  spaced  "]))
    assert request.uri == "/scene/7?session=k&cost=2"
    assert request.protocols == ["v2", "v1"]
    assert request.headers["origin"] == "https://app.example"
    assert request.headers["cookie"] == "a=1, b=2"  # repeats joined, as autobahn does
    assert request.headers["x-odd"] == "spaced"
    assert key == SAMPLE_KEY.encode()


@pytest.mark.parametrize("lines, code, says", [
    (["GET /  HTTP/1.1"] + GOOD[1:], 400, "malformed request line"),
    (["POST / HTTP/1.1"] + GOOD[1:], 405, "method POST not allowed"),
    (["GET / HTTP/1.0"] + GOOD[1:], 505, "HTTP/1.1"),
    (["GET /#frag HTTP/1.1"] + GOOD[1:], 400, "fragment"),
    (GOOD + ["No colon here"], 400, "malformed header line"),
    (GOOD + [" folded: value"], 400, "malformed header line"),
    (GOOD + ["Host: other"], 400, "host header appears more than once"),
    (GOOD + [f"Sec-WebSocket-Key: {SAMPLE_KEY}"], 400, "more than once"),
    (replaced(GOOD, "Host", None), 400, "no Host header"),
    (replaced(GOOD, "Upgrade", None), 426, "upgrade is required"),
    (replaced(GOOD, "Upgrade", "h2c"), 426, "upgrade is required"),
    (replaced(GOOD, "Connection", "keep-alive"), 400, "Connection: Upgrade"),
    (replaced(GOOD, "Sec-WebSocket-Version", "8"), 426, "unsupported WebSocket version"),
    (replaced(GOOD, "Sec-WebSocket-Version", None), 426, "unsupported WebSocket version"),
    (replaced(GOOD, "Sec-WebSocket-Key", None), 400, "Sec-WebSocket-Key"),
    (replaced(GOOD, "Sec-WebSocket-Key", "c2hvcnQ="), 400, "Sec-WebSocket-Key"),
    (replaced(GOOD, "Sec-WebSocket-Key", "!!not base64!!!!!!!!!!=="), 400, "Sec-WebSocket-Key"),
    (GOOD + ["Sec-WebSocket-Protocol: a, b, a"], 400, "offered twice"),
    # What would let a user write lines of its own into wslb's request to the worker:
    (GOOD + ["User-Agent: ua\nX-WSLB-Session: forged"], 400, "malformed header line"),
    (GOOD + ["User-Agent: ua\rX-Forwarded-For: 6.6.6.6"], 400, "malformed header line"),
    (GOOD + ["Cookie: a=\x00"], 400, "malformed header line"),
    (GOOD + ["Bad Name: x"], 400, "malformed header line"),
    (GOOD + ["Sec-WebSocket-Protocol: v1, v/2"], 400, "subprotocol must be a token"),
    (["GET /a\x7fb HTTP/1.1"] + GOOD[1:], 400, "must be a path"),
    (["GET /caf\xe9 HTTP/1.1"] + GOOD[1:], 400, "must be a path"),
    (["G\x1bT / HTTP/1.1"] + GOOD[1:], 400, "malformed request line"),
    (["GET ftp://h/p HTTP/1.1"] + GOOD[1:], 400, "must be a path"),
    (["GET ws:/p HTTP/1.1"] + GOOD[1:], 400, "must be a path"),
])
def test_a_bad_request_is_refused_with_a_status_that_says_why(lines, code, says):
    with pytest.raises(HandshakeRefused) as refused:
        readRequest(head(lines))
    assert refused.value.code == code
    assert says in refused.value.reason


@pytest.mark.parametrize("target, uri", [
    ("/p?q=1", "/p?q=1"),
    ("ws://wslb.example:8080/p?q=1", "/p?q=1"),  # absolute form (RFC 9112 §3.2.2)
    ("HTTPS://wslb.example", "/"),
])
def test_the_request_target_gives_the_path_and_query_passed_on(target, uri):
    request, _ = readRequest(head([f"GET {target} HTTP/1.1"] + GOOD[1:]))
    assert request.uri == uri


def test_refusals_name_what_the_client_should_do():
    with pytest.raises(HandshakeRefused) as refused:
        readRequest(head(replaced(GOOD, "Sec-WebSocket-Version", "8")))
    assert ("Sec-WebSocket-Version", "13") in refused.value.headers  # RFC 6455 §4.4
    with pytest.raises(HandshakeRefused) as refused:
        readRequest(head(["PUT / HTTP/1.1"] + GOOD[1:]))
    assert ("Allow", "GET") in refused.value.headers


def test_the_101_carries_the_accept_the_subprotocol_and_extra_headers():
    answer = switchingProtocols(SAMPLE_KEY.encode(), "v1", {"Set-Cookie": "wslb=k; Secure"})
    lines = answer.decode().split("\r\n")
    assert answer.endswith(b"\r\n\r\n")
    assert lines[0] == "HTTP/1.1 101 Switching Protocols"
    assert "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in lines
    assert "Sec-WebSocket-Protocol: v1" in lines and "Set-Cookie: wslb=k; Secure" in lines
    assert not any(line.startswith("Sec-WebSocket-Protocol") for line in
                   switchingProtocols(SAMPLE_KEY.encode(), None, {}).decode().split("\r\n"))


def test_a_refusal_keeps_its_reason_on_one_line():
    answer = refusal(503, "queue\r\nfull\nInjected: 1", [("Retry-After", "5")])
    assert answer == b"HTTP/1.1 503 queue full Injected: 1\r\nRetry-After: 5\r\n\r\n"


class Recorder(Protocol):
    def __init__(self):
        self.received = []
        self.lost = []

    def dataReceived(self, data):
        self.received.append(data)

    def connectionLost(self, reason):
        self.lost.append(reason)


def test_a_transport_of_unknown_make_is_taken_over_through_its_old_protocol():
    transport = StringTransport()  # holds no reference to its protocol
    old, new = Protocol(), Recorder()
    old.makeConnection(transport)
    takeOver(old, new)
    old.dataReceived(b"frames")
    old.connectionLost("gone")
    assert (new.received, new.lost) == ([b"frames"], ["gone"])
