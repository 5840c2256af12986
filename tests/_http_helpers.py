"""
HTTP/1.1 by hand over a L{_raw_ws.RawClient}, for tests that must send what
a normal client never would (smuggling attempts, requests after requests on
one connection) and see exactly what comes back.
"""

from dataclasses import dataclass

from twisted.internet import reactor


@dataclass
class Response:
    status: int
    headers: dict  # lower-cased name -> list of values
    body: bytes

    def header(self, name):
        values = self.headers.get(name.lower())
        return values[-1] if values else None


def request(method, path, headers=None, body=b"", host="wslb.test"):
    """One request's bytes: Host first, Content-Length when there is a body."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    headers = dict(headers or {})
    if body and not any(name.lower() in ("content-length", "transfer-encoding")
                        for name in headers):
        headers["Content-Length"] = str(len(body))
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _parse(data, head=False):
    """(Response, the bytes after it) when ``data`` holds a whole response, else None."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    rest = data[end + 4:]
    if 100 <= status < 200:
        return Response(status, headers, b""), rest
    if head or status in (204, 304):
        return Response(status, headers, b""), rest
    if "chunked" in ",".join(headers.get("transfer-encoding", [])).lower():
        if b"0\r\n\r\n" not in rest[-4096:]:
            return None  # not ended yet (parsing a long body on every read would be slow)
        body, at = [], 0
        while True:
            eol = rest.find(b"\r\n", at)
            if eol < 0:
                return None
            size = int(rest[at:eol].split(b";")[0], 16)
            if len(rest) < eol + 2 + size + 2:
                return None
            body.append(rest[eol + 2:eol + 2 + size])
            at = eol + 2 + size + 2
            if size == 0:
                return Response(status, headers, b"".join(body)), rest[at:]
    length = headers.get("content-length")
    if length is None:
        return None  # delimited by the close: see closedResponse
    size = int(length[-1])
    if len(rest) < size:
        return None
    return Response(status, headers, rest[:size]), rest[size:]


async def readResponse(client, head=False, timeout=5):
    """The next whole response ``client`` (a RawClient) got; its bytes are consumed."""
    await client.untilReceived(lambda data: _parse(data, head) is not None, timeout)
    parsed = _parse(client.received, head)
    assert parsed is not None, f"no whole response in {client.received[:300]!r}"
    response, client.received = parsed
    return response


async def closedResponse(client, timeout=5):
    """The one response a connection got before it closed (status 0: none)."""
    await client.closed.addTimeout(timeout, reactor)
    data = client.received
    parsed = _parse(data)
    if parsed is not None:
        return parsed[0]
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return Response(0, {}, data)
    response, _ = _parse(data[:end + 4], head=True)
    response.body = data[end + 4:]
    return response
