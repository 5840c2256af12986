"""
Prometheus metrics for one wslb instance (DESIGN §7).

Handshake-rate events use prometheus-client's counters and histograms. The
relay's per-message counts are plain integers (``Traffic``), read only when
scraped, so the hot path pays a dict increment and no lock. Gauges of shared
state (workers, sessions, queue) are refreshed from the registry, on the
reactor, right before each scrape.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet import defer

from wslb.gcpauses import PAUSE_BUCKETS
from wslb.registry import WORKER_STATES

TO_WORKER = "to_worker"
TO_USER = "to_user"

HANDSHAKE_OUTCOMES = ("ok", "400", "401", "403", "429", "502", "503")
# wslb_http_requests_total's outcomes: the class of a worker's answer, the
# status of one of wslb's own, or "aborted" (cut off: the user left, or the
# worker failed or stalled after its answer had begun).
HTTP_OUTCOMES = ("2xx", "3xx", "4xx", "5xx", "400", "401", "404", "413", "502", "503", "504",
                 "aborted")
# The limits of wslb_limit_hits_total, each a series from the start (so that
# rate() counts the first hit, and dashboards find the name before any).
LIMITS = (
    "max_connections", "per_ip_connections", "per_ip_rate", "request_head_size",
    "open_handshake_timeout", "queue_length", "queue_timeout", "max_message_size",
    "idle_timeout", "auto_ping",
)


class Traffic:
    """Relayed messages and payload bytes, by direction."""

    __slots__ = ("messages", "bytes")

    def __init__(self):
        self.messages = {TO_WORKER: 0, TO_USER: 0}
        self.bytes = {TO_WORKER: 0, TO_USER: 0}


@dataclass(frozen=True)
class PoolNumbers:
    """What the registry holds, as numbers: the pool's gauges, and the status page's history."""

    workers: dict  # state -> how many
    load: int  # of the workers that are not dead
    capacity: int  # likewise
    sessions: int
    sessions_in_grace: int
    queue_length: int
    queue_oldest_wait: float


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.traffic = Traffic()
        self.handshakes = Counter(
            "wslb_handshakes", "User handshakes answered, by outcome.",
            ["outcome"], registry=self.registry,
        )
        for outcome in HANDSHAKE_OUTCOMES:
            self.handshakes.labels(outcome)
        self.queueWait = Histogram(
            "wslb_queue_wait_seconds", "Time users waited in the queue for a worker.",
            registry=self.registry,
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
        )
        self.assignSeconds = Histogram(
            "wslb_assign_seconds", "Time to look up or assign a worker (one registry round trip).",
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        )
        self.registryErrors = Counter(
            "wslb_registry_errors", "Registry calls that failed or timed out.",
            registry=self.registry,
        )
        self.limitHits = Counter(
            "wslb_limit_hits", "Connections refused or closed by a limit.",
            ["limit"], registry=self.registry,
        )
        for limit in LIMITS:
            self.limitHits.labels(limit)
        self.httpRequests = Counter(
            "wslb_http_requests", "Plain HTTP requests on the [http] paths, by outcome and worker "
            "(empty: none was reached).", ["outcome", "worker"], registry=self.registry,
        )
        for outcome in HTTP_OUTCOMES:
            self.httpRequests.labels(outcome, "")
        httpBytes = Counter(
            "wslb_http_bytes", "Body bytes of plain HTTP requests and answers proxied, by "
            "direction.", ["direction"], registry=self.registry,
        )
        self.httpBytes = {d: httpBytes.labels(d) for d in (TO_WORKER, TO_USER)}
        self.httpSeconds = Histogram(
            "wslb_http_request_seconds",
            "Plain HTTP requests on the [http] paths: from the head read to the answer's end.",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                     60, 300),
        )
        self.gcPauses = Histogram(
            "wslb_gc_pause_seconds", "Pauses of Python's garbage collector (the reactor waits "
            "meanwhile), by generation; a full pass (2) traces every object.", ["generation"],
            registry=self.registry, buckets=PAUSE_BUCKETS,
        )
        self.pool = None  # PoolNumbers as of the last refresh; None when it failed
        self._live = {}  # name -> callable giving a number now (connections...)
        self._counts = {}  # name -> (help, label, callable giving {label value: n})
        self.registry.register(_SnapshotCollector(self))

    def watch(self, name, read):
        """Report ``read()`` as gauge ``name`` at each scrape."""
        self._live[name] = read

    def watchCounts(self, name, help, label, read):
        """Report ``read()`` (a mapping) as counter ``name`` by ``label``."""
        self._counts[name] = (help, label, read)

    def handshakeCounts(self):
        """User handshakes answered since start: outcome -> how many."""
        [family] = self.handshakes.collect()
        return {sample.labels["outcome"]: sample.value for sample in family.samples
                if sample.name == "wslb_handshakes_total"}

    def refresh(self, registry, clock):
        """Fire when L{pool} (the registry-derived gauges) is current."""
        d = defer.gatherResults([
            registry.countWorkers(), registry.workerTotals(), registry.countSessions(),
            registry.countSessions(connected=False), registry.queueInfo(clock.seconds()),
        ], consumeErrors=True)

        def store(results):
            workers, totals, sessions, inGrace, queue = results
            self.pool = PoolNumbers(
                workers=workers, load=totals["load"], capacity=totals["capacity"],
                sessions=sessions, sessions_in_grace=inGrace,
                queue_length=queue.length, queue_oldest_wait=queue.oldest_wait,
            )

        def failed(failure):
            self.registryErrors.inc()
            self.pool = None

        return d.addCallbacks(store, failed)


class _SnapshotCollector:
    """Gauges from the last refresh, the live readings, and the relay's counts."""

    def __init__(self, metrics):
        self._metrics = metrics

    def collect(self):
        m = self._metrics
        traffic = m.traffic
        messages = CounterMetricFamily(
            "wslb_relay_messages", "Messages relayed, by direction.", labels=["direction"])
        payload = CounterMetricFamily(
            "wslb_relay_bytes", "Message payload bytes relayed, by direction.",
            labels=["direction"])
        for direction in (TO_WORKER, TO_USER):
            messages.add_metric([direction], traffic.messages[direction])
            payload.add_metric([direction], traffic.bytes[direction])
        yield messages
        yield payload

        for name, (help, label, read) in m._counts.items():
            family = CounterMetricFamily(name, help, labels=[label])
            for value, count in sorted(read().items()):
                family.add_metric([value], count)
            yield family

        for name, read in m._live.items():
            yield GaugeMetricFamily(name, _LIVE_HELP.get(name, name), value=read())

        pool = m.pool
        if pool is None:
            return
        workers = GaugeMetricFamily("wslb_workers", "Workers by state.", labels=["state"])
        for state in WORKER_STATES:
            workers.add_metric([state], pool.workers[state])
        yield workers
        for name, help, value in (
            ("wslb_workers_load", "Sum of the session costs on workers not dead.", pool.load),
            ("wslb_workers_capacity", "Sum of the capacities of workers not dead.",
             pool.capacity),
            ("wslb_sessions", "Sessions bound to a worker.", pool.sessions),
            ("wslb_sessions_in_grace",
             "Sessions without a live connection, keeping their worker for reconnect_grace.",
             pool.sessions_in_grace),
            ("wslb_queue_length", "Users waiting for a worker.", pool.queue_length),
            ("wslb_queue_oldest_wait_seconds",
             "How long the first user in the queue has waited (0: nobody).",
             pool.queue_oldest_wait),
        ):
            yield GaugeMetricFamily(name, help, value=value)


_LIVE_HELP = {
    "wslb_connections": "User connections open or in their handshake on this instance.",
    "wslb_leader": "1 when this instance is the pool's leader.",
    "wslb_leader_fencing_token": "The fencing token of this instance's leadership.",
    "wslb_workers_starting_oldest_seconds": (
        "How long the longest-starting worker has been starting (the leader's; 0 elsewhere)."),
    "wslb_queue_timeout_seconds": "[queue] timeout: a user waiting longer gets 503.",
    "wslb_pool_start_timeout_seconds": (
        "[pool] start_timeout: a worker not healthy by then is replaced."),
}
