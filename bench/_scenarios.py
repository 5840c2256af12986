"""
The scenarios, and running bench/loadgen.js for one scenario against one target.

A scenario is a load generator spec plus the rows it yields in the results
table. Throughput scenarios read CPU counters at the edges of the measured
window (the load generator announces them); the memory scenario reads the
proxy's VmRSS before and while it holds idle connections.
"""

import json
import queue
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from _procs import CpuMeter, rssKiB

BENCH = Path(__file__).resolve().parent
LOADGEN = BENCH / "loadgen.js"
SLACK = 30.0  # seconds a load generator may take beyond its own bounds
MEMORY_WARMUP = 200  # connections opened and closed before the baseline RSS
SETTLE = 1.0  # seconds between "held" and reading RSS
CPU_PER_CONNECTION = "proxy_us_per_connection"  # from the CPU share and the rate
CPU_PER_REQUEST = "proxy_us_per_request"  # likewise, for plain HTTP requests


@dataclass(frozen=True)
class Row:
    label: str
    unit: str
    metric: str  # a key of the load generator's RESULT (or "kib_per_connection")
    higherIsBetter: bool = True
    digits: int = 0


@dataclass(frozen=True)
class Scenario:
    name: str
    spec: dict
    rows: tuple
    proxiedOnly: bool = False  # meaningless without a proxy (memory)
    firstRoundOnly: bool = False  # slow and steady (memory): one fresh process is enough


def scenarios(idleConnections):
    def rate(label, unit="msg/s", metric="msg_per_s"):
        return Row(label, unit, metric)

    def perConnection(label):
        # Steadier than the rate on a shared box: other users slow the proxy
        # down, but hardly change what a connection costs it.
        return Row(f"{label}: proxy CPU per connection", "us", CPU_PER_CONNECTION,
                   higherIsBetter=False)

    return [
        Scenario(
            "idle-memory",
            {"mode": "idle", "connections": idleConnections, "concurrency": 100},
            (Row(f"memory per idle connection ({idleConnections:,} held)", "KiB",
                 "kib_per_connection", higherIsBetter=False, digits=1),),
            proxiedOnly=True,
            firstRoundOnly=True,
        ),
        Scenario(
            "pingpong-1",
            {"mode": "pingpong", "connections": 1, "inflight": 1, "size": 32},
            (rate("1 connection ping-pong, 32 B"),
             Row("1 connection ping-pong, 32 B: p50 round trip", "us", "p50_us",
                 higherIsBetter=False),
             Row("1 connection ping-pong, 32 B: p99 round trip", "us", "p99_us",
                 higherIsBetter=False)),
        ),
        Scenario(
            "pingpong-50",
            {"mode": "pingpong", "connections": 50, "inflight": 1, "size": 32},
            (rate("50 connections ping-pong, 32 B"),),
        ),
        Scenario(
            "pipelined-1k",
            {"mode": "pingpong", "connections": 50, "inflight": 16, "size": 1024},
            (rate("50 connections x 16 in flight, 1 KiB"),),
        ),
        Scenario(
            "binary-64k",
            {"mode": "pingpong", "connections": 8, "inflight": 4, "size": 65536, "binary": True},
            (Row("8 connections x 4 in flight, 64 KiB binary", "MB/s", "mb_per_s", digits=1),),
        ),
        Scenario(
            "connect",
            {"mode": "connect", "connections": 50, "keys": "none"},
            (rate("new connections (handshake + one echo + close, 50 at once)",
                  "conn/s", "conn_per_s"),
             perConnection("new connections (handshake + one echo + close, 50 at once)")),
        ),
        Scenario(
            "reconnect",
            {"mode": "connect", "connections": 50, "keys": "fixed"},
            (rate("reconnects, same session key (worker already assigned)",
                  "conn/s", "conn_per_s"),
             perConnection("reconnects, same session key (worker already assigned)")),
        ),
        Scenario(
            "http-50",
            {"mode": "http", "connections": 50},
            (Row("HTTP requests, keep-alive, 50 connections", "req/s", "req_per_s"),
             Row("HTTP requests, keep-alive, 50 connections: proxy CPU per request", "us",
                 CPU_PER_REQUEST, higherIsBetter=False)),
        ),
        Scenario(
            "fresh",
            {"mode": "connect", "connections": 50, "keys": "fresh"},
            (rate("fresh session key each connection (new assignment)",
                  "conn/s", "conn_per_s"),
             perConnection("fresh session key each connection (new assignment)")),
        ),
    ]


class LoadgenFailed(Exception):
    pass


class Loadgen:
    """One running bench/loadgen.js, its output lines read on a thread."""

    def __init__(self, children, node, spec):
        self.limit = spec["limit"]
        self.process = children.start(
            [node, str(LOADGEN), json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self._children = children
        self._lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._deadline = time.monotonic() + self.limit + SLACK

    def _read(self):
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def next(self, wait=None):
        """
        The next (kind, name, data) line, e.g. ("EVENT", "held", {...});
        None when none came within ``wait`` seconds (None: up to the limit).
        """
        remaining = self._deadline - time.monotonic()
        try:
            line = self._lines.get(
                timeout=max(0.0, remaining if wait is None else min(remaining, wait)))
        except queue.Empty:
            if wait is not None and remaining > wait:
                return None
            raise LoadgenFailed(
                f"load generator silent past {self.limit + SLACK:.0f} s") from None
        if line is None:
            self.process.wait(5)
            raise LoadgenFailed(f"load generator exited with {self.process.returncode}")
        kind, _, rest = line.partition(" ")
        if kind == "RESULT":
            return kind, None, json.loads(rest)
        name, _, data = rest.partition(" ")
        return kind, name, json.loads(data or "{}")

    def send(self, text):
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def stop(self):
        self._children.stop(self.process)


def run(children, node, scenario, target, workers, timing, prefix):
    """
    One measurement: a dict of the scenario's row metrics, plus "cpu" (percent
    of one core for loadgen, proxy, workers) for throughput scenarios.
    """
    spec = dict(scenario.spec, urls=target.urls, prefix=prefix,
                warmup=timing.warmup, duration=timing.duration)
    if target.tls is not None:
        spec["ca"] = str(target.tls.ca)
    if spec["mode"] == "idle":
        return _memory(children, node, spec, target)
    spec["limit"] = timing.warmup + timing.duration + SLACK
    loadgen = Loadgen(children, node, spec)
    meter = CpuMeter({"loadgen": [loadgen.process.pid], "proxy": target.pids,
                      "workers": workers.pids})
    cpu = None
    try:
        while True:
            kind, name, data = loadgen.next()
            if kind == "EVENT" and name == "measure-start":
                meter.start()
            elif kind == "EVENT" and name == "measure-end":
                cpu = meter.stop()
            elif kind == "RESULT":
                break
    finally:
        loadgen.stop()
    _check(data)
    for rate, perUnit in (("conn_per_s", CPU_PER_CONNECTION), ("req_per_s", CPU_PER_REQUEST)):
        if cpu and data.get(rate):
            data[perUnit] = cpu["proxy"] * 1e4 / data[rate] if target.proxied else None
    return {**{row.metric: data.get(row.metric) for row in scenario.rows}, "cpu": cpu,
            "failures": data.get("failures", 0), "last_error": data.get("last_error")}


def _memory(children, node, spec, target):
    _holdIdle(children, node, dict(spec, connections=MEMORY_WARMUP), target, lambda: None)
    time.sleep(SETTLE)
    before = sum(rssKiB(pid) for pid in target.pids)
    during = []
    result = _holdIdle(children, node, spec, target,
                       lambda: during.append(sum(rssKiB(pid) for pid in target.pids)))
    held = result["held"]
    return {"kib_per_connection": (during[0] - before) / held, "cpu": None,
            "rss_before_kib": before, "rss_held_kib": during[0]}


def _holdIdle(children, node, spec, target, whileHeld):
    spec = dict(spec, limit=spec["connections"] / 20 + 60)
    loadgen = Loadgen(children, node, spec)
    try:
        while True:
            kind, name, data = loadgen.next()
            if kind == "EVENT" and name == "held":
                if data["failures"]:
                    raise LoadgenFailed(
                        f"{data['failures']} of {spec['connections']} idle connections "
                        f"failed: {data['last_error']}")
                time.sleep(SETTLE)
                whileHeld()
                loadgen.send("release")
            elif kind == "RESULT":
                break
    finally:
        loadgen.stop()
    _check(data)
    if data["dropped"]:
        raise LoadgenFailed(f"{data['dropped']} idle connections dropped while held")
    return data


def _check(result):
    if result.get("error"):
        raise LoadgenFailed(result["error"])
    if result.get("errors"):
        raise LoadgenFailed(f"{result['errors']} connections closed during the run")
