"""Several real ``twistd -n wslb`` processes sharing one real Redis."""

import json
import socket

from _echo_helpers import TIMEOUT, EchoWorkerProcess, connectWebSocket, getJSON
from _twistd_helpers import TwistdWslb
from conftest import free_port
from twisted.internet import defer

SCALE_INTERVAL = 1.0
LEADER_TTL = 3.0
# Seconds between two questions to an instance's admin API while waiting: each
# is a registry read, and a 2-core box also runs the instances and their workers.
POLL = 0.2


def startEchoFleet(n):
    """``n`` echo worker processes, started together, each healthy on return."""
    # free_port() may name one port twice (about one fleet of 30 in 40): the
    # second worker then dies on bind while the first answers its health checks.
    ports = set()
    while len(ports) < n:
        ports.add(free_port())
    workers = [EchoWorkerProcess(port=port) for port in ports]
    try:
        for worker in workers:
            worker.waitHealthy(timeout=60)  # many start at once on two cores
        for worker in workers:  # each answered itself, not another on its port
            worker.waitHealthy()
    except Exception:
        for worker in workers:
            worker.kill()
        raise
    return workers


def startCluster(tmp_path, redis, workers, n=3, *overrides, capacity=1):
    urls = ", ".join(f'"{w.url}"' for w in workers)
    instances = [
        TwistdWslb(
            tmp_path, "registry.backend=redis", f'registry.url="{redis.url}"',
            "pool.provider=static", f"pool.static.workers=[{urls}]",
            f"pool.capacity={capacity}", "pool.min_spare=0", "pool.max_spare=0",
            f"pool.scale_interval={SCALE_INTERVAL}", f"pool.leader_ttl={LEADER_TTL}",
            "pool.health.interval=1", "listen.drain_period=0", "queue.timeout=120",
            *overrides,
        )
        for _ in range(n)
    ]
    for instance in instances:
        instance.waitListening()
    return instances


def fleet(stop_after, n):
    """``startEchoFleet(n)``, each worker stopped after the test (conftest.stop_after)."""
    return [stop_after(worker) for worker in startEchoFleet(n)]


def cluster(stop_after, tmp_path, redis, workers, n=3, *overrides, capacity=1):
    """``startCluster(...)``, each instance stopped after the test (conftest.stop_after)."""
    return [stop_after(instance) for instance in
            startCluster(tmp_path, redis, workers, n, *overrides, capacity=capacity)]


async def healthyWorkers(instance):
    try:
        _, body = await getJSON(instance.admin + "/api/v1/workers")
    except Exception:
        return 0
    return sum(w["state"] == "healthy" for w in body["workers"])


async def leaderOf(instance):
    """(is it the leader, its fencing token), or None when unreachable."""
    try:
        _, status = await getJSON(instance.admin + "/api/v1/status")
    except Exception:
        return None
    return status["leader"], status["fencing_token"]


def connect(instance, key, path="/", wait=TIMEOUT):
    url = instance.url(f"{path}?session={key}")
    return defer.ensureDeferred(connectWebSocket(url, wait=wait))


def workerStats(worker):
    """The echo worker's /stats (blocking; only the worker's own process answers)."""
    with socket.create_connection(("127.0.0.1", worker.port), TIMEOUT) as s:
        s.settimeout(TIMEOUT)
        s.sendall(b"GET /stats HTTP/1.0\r\n\r\n")
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    return json.loads(raw.partition(b"\r\n\r\n")[2])
