"""
Crowds against a cluster: several wslb instances (real ``twistd``) sharing
one redis-server, in front of many workers served by one node process
(bench/crowdworker.js, one port per worker, counting each worker's sessions
on the worker's side).

Two scenarios:
  - all at once: N users open a WebSocket at the same moment (round robin
    over the instances); every one must be served and none refused. Timed
    from the first arrival to the last user's open.
  - the flash crowd: more users than slots arrive within a few seconds. Timed
    until every user is served or queued (sessions + queue in Redis), with
    the served ones' handshake times, Redis's CPU share and what commandstats
    says it spent on scripts; then slots are freed a batch at a time and the
    order in which Redis bound the queued users (read with MONITOR) must be
    the queue's order exactly.
"""

import json
import re
import socket
import statistics
import threading
import time
import urllib.request
from pathlib import Path

import redis
from _procs import CpuMeter, freePort, waitListening
from _scenarios import Loadgen, LoadgenFailed
from _targets import twistdPath

from wslb.registry.keys import Keys

BENCH_DIR = Path(__file__).resolve().parent
READY_TIMEOUT = 180.0  # every worker healthy (the leader checks them all)
NAMESPACE = "wslb"
DRAIN_BATCH = 100


def _consecutiveFreePorts(count):
    """The first of ``count`` consecutive loopback ports nothing listens on."""
    for first in range(20000, 60000 - count, count):
        sockets = []
        try:
            for port in range(first, first + count):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                sockets.append(s)
            return first
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports")


def _toml(value):
    return json.dumps(value)  # strings, numbers and lists of strings read the same in TOML


class Cluster:
    """redis-server, the crowd worker with ``workers`` ports, and ``instances`` twistd."""

    def __init__(self, children, node, redisServer, logDir, workers, capacity, instances=3,
                 name="cluster"):
        self._children = children
        self._processes = []
        self.capacity = capacity
        self.workerCount = workers
        self.redisPort = freePort()
        self.redisProcess = self._start(
            [redisServer, "--port", str(self.redisPort), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"], logDir / f"{name}-redis.log")
        waitListening(self.redisPort, self.redisProcess, 30, "redis-server")
        first = _consecutiveFreePorts(workers)
        self.controlPort = freePort()
        self.workerProcess = self._start(
            [node, str(BENCH_DIR / "crowdworker.js"),
             json.dumps({"firstPort": first, "count": workers, "controlPort": self.controlPort})],
            logDir / f"{name}-workers.log")
        waitListening(self.controlPort, self.workerProcess, 60, "crowd worker")
        urls = [f"ws://127.0.0.1:{port}/" for port in range(first, first + workers)]
        config = logDir / f"{name}.toml"
        config.write_text("\n".join([
            "[registry]", 'backend = "redis"',
            f"url = {_toml(f'redis://127.0.0.1:{self.redisPort}/0')}",
            f"namespace = {_toml(NAMESPACE)}",
            "[pool]", 'provider = "static"', f"capacity = {capacity}", 'placement = "pack"',
            "[pool.static]", f"workers = {_toml(urls)}",
            "[queue]", "max_length = 100000", 'timeout = "15m"',
            "[session]", "issue_cookie = false", "",
        ]))
        self.urls = []
        self.twistds = []
        for number in range(instances):
            port, admin = freePort(), freePort()
            process = self._start(
                [twistdPath(), "-n", "--pidfile=", "wslb", "--config", str(config),
                 "--set", f"listen.endpoint=tcp:{port}:interface=127.0.0.1:backlog=4096",
                 "--set", f"admin.endpoint=tcp:{admin}:interface=127.0.0.1"],
                logDir / f"{name}-wslb-{number + 1}.out", cwd=logDir)
            self.twistds.append(process)
            waitListening(port, process, 60, f"wslb {number + 1}")
            self.urls.append(f"ws://127.0.0.1:{port}/")
        self.redis = redis.Redis(port=self.redisPort, socket_timeout=30)
        self.keys = Keys(NAMESPACE)
        self._waitHealthy()

    def _start(self, args, log, **popen):
        process = self._children.start(args, log=log, **popen)
        self._processes.append(process)
        return process

    def _waitHealthy(self):
        deadline = time.monotonic() + READY_TIMEOUT
        healthy = self.keys.prefix + "state:healthy"
        while self.redis.zcard(healthy) < self.workerCount:
            for process in self._processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args[:2]} exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.redis.zcard(healthy)} of {self.workerCount} workers "
                                   f"healthy after {READY_TIMEOUT:.0f} s")
            time.sleep(0.2)

    def _control(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.controlPort}{path}",
                                    timeout=30) as response:
            return json.load(response)

    def workerStats(self):
        return self._control("/stats")

    def endSessions(self, n):
        """Workers end ``n`` of their sessions (close code 4000), as when users are done."""
        return self._control(f"/end?n={n}")["ended"]

    def servedAndQueued(self):
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(self.keys.sessions)
        pipe.zcard(self.keys.queue)
        return tuple(pipe.execute())

    def scriptTime(self):
        """(EVALSHA + EVAL calls, their µs) so far, from commandstats."""
        stats = self.redis.info("commandstats")
        calls = usec = 0
        for name in ("cmdstat_evalsha", "cmdstat_eval"):
            calls += stats.get(name, {}).get("calls", 0)
            usec += stats.get(name, {}).get("usec", 0)
        return calls, usec

    def stop(self):
        self.redis.close()
        for process in reversed(self._processes):
            self._children.stop(process)


def _percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else None


def _crowdLoadgen(children, node, cluster, users, spread, prefix, limit):
    return Loadgen(children, node, {
        "mode": "crowd", "urls": cluster.urls, "users": users, "spread": spread,
        "prefix": prefix, "limit": limit,
    })


def allAtOnce(children, node, cluster, users):
    """N users at the same moment: seconds until all are in, and what was refused."""
    loadgen = _crowdLoadgen(children, node, cluster, users, 0, "once", 300)
    try:
        while True:
            event = loadgen.next()
            if event[0] == "EVENT" and event[1] == "settled":
                settled = event[2]
                break
        stats = cluster.workerStats()
        loadgen.send("release")
        while loadgen.next()[0] != "RESULT":
            pass
    finally:
        loadgen.stop()
    most = max(stats["maxPerPort"].values(), default=0)
    return {
        "users": users, "seconds": settled["ms"] / 1000, "opened": settled["opened"],
        "refused": sum(settled["refused"].values()), "refusals": settled["refused"],
        "worker_open": stats["open"], "most_per_worker": most,
        "capacity": cluster.capacity, "workers": cluster.workerCount,
    }


class _Monitor:
    """MONITOR on a thread: the session keys Redis binds (bind's HSET), in its order."""

    BIND = re.compile(r'"HSET" "\{' + NAMESPACE + r'\}:session:([^"]+)" "key"')

    def __init__(self, port):
        self._socket = socket.create_connection(("127.0.0.1", port), 10)
        self._socket.sendall(b"MONITOR\r\n")
        self.bound = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        buffered = b""
        while True:
            try:
                chunk = self._socket.recv(1 << 16)
            except OSError:
                return
            if not chunk:
                return
            buffered += chunk
            *lines, buffered = buffered.split(b"\r\n")
            for line in lines:
                found = self.BIND.search(line.decode("utf-8", "replace"))
                if found:
                    self.bound.append(found.group(1))

    def stop(self):
        self._socket.close()
        self._thread.join(5)


def flashCrowd(children, node, cluster, users, spread):
    """
    ``users`` arrive within ``spread`` seconds: how long until every one is
    served or queued, the served ones' handshake times, Redis's share; then
    the queue drained a batch at a time, checked for FIFO order.
    """
    client = cluster.redis
    client.config_resetstat()
    loadgen = _crowdLoadgen(children, node, cluster, users, spread, "crowd", 1800)
    meter = CpuMeter({"redis": [cluster.redisProcess.pid],
                      "wslb": [p.pid for p in cluster.twistds],
                      "workers": [cluster.workerProcess.pid],
                      "loadgen": [loadgen.process.pid]})
    began = time.monotonic()
    meter.start()
    refusals = 0
    try:
        while sum(cluster.servedAndQueued()) + refusals < users:
            if time.monotonic() - began > spread + 300:
                raise LoadgenFailed(f"after {spread + 300} s only {cluster.servedAndQueued()} "
                                    "of the users served or queued")
            event = loadgen.next(wait=0.02)
            if event and event[0] == "RESULT":
                raise LoadgenFailed(f"load generator ended early: {event[2]}")
            refusals += bool(event and event[1] == "refused")
        placed = time.monotonic() - began
        cpu = meter.stop()
        calls, usec = cluster.scriptTime()
        served, queued = cluster.servedAndQueued()
        time.sleep(1)  # the last served users' worker legs open
        during = cluster.workerStats()
        order = _queueOrder(cluster)
        loadgen.send("mark")
        drain = _drain(cluster, order)
        after = cluster.workerStats()
        loadgen.send("release")
        while (event := loadgen.next())[0] != "RESULT":
            pass
        result = event[2]
    finally:
        loadgen.stop()
    marked = result["marked_at_ms"]
    early = [ms for _, ms, at in result["handshakes"] if at < marked]
    late = [ms for _, ms, at in result["handshakes"] if at >= marked]
    most = max(after["maxPerPort"].values(), default=0)  # the most ever, drain included
    return {
        "users": users, "spread": spread, "workers": cluster.workerCount,
        "capacity": cluster.capacity, "instances": len(cluster.twistds),
        "seconds_to_served_or_queued": placed, "served": served, "queued": queued,
        "refused": sum(result["refused"].values()), "refusals": result["refused"],
        "handshake_p50_ms": statistics.median(early) if early else None,
        "handshake_p99_ms": _percentile(early, 99),
        "cpu": cpu, "script_calls": calls, "script_usec": usec,
        "redis_script_share": 100.0 * usec / 1e6 / placed,
        "worker_open_during": during["open"], "most_per_worker": most,
        "drain": drain, "late_handshakes": len(late),
    }


def _queueOrder(cluster):
    """The queued users' session keys, head first."""
    prefix = cluster.keys.prefix
    tickets = cluster.redis.zrange(cluster.keys.queue, 0, -1)
    pipe = cluster.redis.pipeline(transaction=False)
    for ticket in tickets:
        pipe.hget(prefix + "ticket:" + ticket.decode(), "key")
    return [key.decode() for key in pipe.execute()]


def _drain(cluster, order):
    """
    Workers end DRAIN_BATCH sessions at a time (close code 4000), each batch
    once the last was taken from the queue; MONITOR records the order Redis
    bound the queued users in. Tickets nobody holds (a caller that timed out
    after Redis queued it) expire by themselves: they are counted, and the
    order is checked among the users that were bound.
    """
    monitor = _Monitor(cluster.redisPort)
    began = time.monotonic()
    try:
        queued = cluster.servedAndQueued()[1]
        while queued:
            target = queued - cluster.endSessions(min(DRAIN_BATCH, queued))
            deadline = time.monotonic() + 120
            while (queued := cluster.servedAndQueued()[1]) > max(0, target):
                if time.monotonic() > deadline:
                    raise LoadgenFailed(f"queue stuck at {queued} (waiting for {target})")
                time.sleep(0.01)
        seconds = time.monotonic() - began
        time.sleep(0.5)  # MONITOR's last lines
    finally:
        monitor.stop()
    inQueue = set(order)
    bound = [key for key in monitor.bound if key in inQueue]
    wasBound = set(bound)
    expected = [key for key in order if key in wasBound]
    return {"seconds": seconds, "queued": len(order), "bound": len(bound),
            "never_bound": len(order) - len(wasBound),
            "fifo_exact": bound == expected,
            "first_out_of_order": next((i for i, (a, b) in enumerate(zip(bound, expected))
                                        if a != b), None)}
