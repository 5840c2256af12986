"""
Bodies stream through wslb, not into it: 200 MiB up and 200 MiB down
through a real ``twistd -n wslb`` (its resident memory watched all the
while) to a worker in this process, while the client, in a thread, sends
and reads as fast as it can.
"""

import hashlib
import json
import socket
import time

import pytest
import pytest_twisted
from _echo_helpers import connectWebSocket
from _http_worker import HTTPWorker
from _twistd_helpers import TwistdWslb, rss
from twisted.internet import task, threads

pytestmark = pytest.mark.timeout(300)

MiB = 1024 * 1024
SIZE = 200 * MiB
GROWTH = 32 * MiB  # what wslb's RSS may grow by while they pass
BLOCK = bytes(range(256)) * 1024  # 256 KiB


class Peak:
    """The largest RSS of ``pid`` seen, sampled every 20 ms on the reactor."""

    def __init__(self, pid):
        self.pid = pid
        self.peak = rss(pid)
        self._loop = task.LoopingCall(self._sample)
        self._loop.start(0.02)

    def _sample(self):
        self.peak = max(self.peak, rss(self.pid))

    def stop(self):
        self._loop.stop()
        return self.peak


def head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def upload(port, size):
    """PUT ``size`` bytes with a Content-Length: the worker's JSON answer."""
    with socket.create_connection(("127.0.0.1", port), 30) as s:
        s.sendall(f"PUT /session/upload HTTP/1.1\r\nHost: wslb\r\nX-WSLB-Session: big\r\n"
                  f"Content-Length: {size}\r\n\r\n".encode())
        left = size
        while left:
            block = BLOCK[:left]
            s.sendall(block)
            left -= len(block)
        status, rest = head(s)
        assert status.startswith("HTTP/1.1 200"), status
        length = int(status.lower().split("content-length: ")[1].split("\r\n")[0])
        while len(rest) < length:
            rest += s.recv(65536)
        return json.loads(rest)


def download(port, size):
    """GET ``size`` bytes (chunked by the worker), read slower than the worker sends: how many came."""
    with socket.create_connection(("127.0.0.1", port), 30) as s:
        s.sendall(f"GET /session/download?bytes={size}&chunked=1 HTTP/1.1\r\nHost: wslb\r\n"
                  f"X-WSLB-Session: big\r\nConnection: close\r\n\r\n".encode())
        status, rest = head(s)
        assert status.startswith("HTTP/1.1 200") and "chunked" in status.lower(), status
        received = len(rest)
        while chunk := s.recv(256 * 1024):
            received += len(chunk)
            time.sleep(0.002)  # a reader slower than the worker: wslb must hold the worker back
        return received  # chunked framing included


@pytest_twisted.ensureDeferred
async def test_200_mib_up_and_down_leave_wslbs_memory_flat(tmp_path):
    worker = HTTPWorker("big")
    wslb = TwistdWslb(
        tmp_path, 'http.paths=["/session/"]', "pool.provider=static",
        f'pool.static.workers=["{worker.url}"]', "pool.min_spare=0", "pool.max_spare=0",
        "pool.health.interval=60",
    ).waitListening()
    try:
        ws = await connectWebSocket(wslb.url("/?session=big"), wait=20)
        pid = wslb.process.pid
        # Warm up: the allocator's pools and the code paths have seen a body each way.
        await threads.deferToThread(upload, wslb.port, 16 * MiB)
        await threads.deferToThread(download, wslb.port, 16 * MiB)
        before = rss(pid)
        peak = Peak(pid)
        sent = await threads.deferToThread(upload, wslb.port, SIZE)
        uploadPeak = peak.stop()
        assert sent["bytes"] == SIZE
        expected = hashlib.sha256()
        for _ in range(SIZE // len(BLOCK)):
            expected.update(BLOCK)
        assert sent["sha256"] == expected.hexdigest()
        peak = Peak(pid)
        received = await threads.deferToThread(download, wslb.port, SIZE)
        downloadPeak = peak.stop()
        assert received > SIZE
        assert uploadPeak - before < GROWTH, f"upload: RSS {before} -> {uploadPeak}"
        assert downloadPeak - before < GROWTH, f"download: RSS {before} -> {downloadPeak}"
        ws.transport.loseConnection()
    finally:
        wslb.stop()
        await worker.stop()
