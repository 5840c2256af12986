"""
The last hour of what the status page charts, kept by this instance.

Every C{interval} seconds a sample: the pool's numbers as the registry holds
them (the same reads as a ``/metrics`` scrape, so the page and Prometheus
agree), and this instance's handshakes per second by outcome since the
sample before. Samples go into a ring buffer of one hour.

Per instance, not in Redis: a sample costs no write, the history outlives
a Redis outage (a gap in the pool's numbers, the handshakes' 503s still
drawn: what one looks at afterwards), and each instance's own numbers stay
its own. Every instance samples the same pool-wide numbers, so each one's
page shows the whole pool; an instance started less than an hour ago shows
less than an hour. Prometheus (examples/grafana-dashboard.json) keeps the
long view.
"""

from collections import deque
from dataclasses import asdict

from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.logger import Logger

from wslb.admin.web import HTTPError, Response

log = Logger()

INTERVAL = 5.0  # seconds between samples
WINDOW = 3600.0  # seconds of samples kept


class History(TimerService):
    """
    Samples ``metrics`` (a L{wslb.metrics.Metrics}, refreshed from
    ``registry``) every ``interval`` seconds on ``clock``, keeping
    ``window`` seconds of them. Each sample's C{seq} is one more than the
    last one's, so that the page asks only for samples it has not seen.
    """

    def __init__(self, clock, metrics, registry, interval=INTERVAL, window=WINDOW):
        super().__init__(interval, lambda: defer.ensureDeferred(self._sample()))
        self.clock = clock  # TimerService's, and ours
        self._metrics = metrics
        self._registry = registry
        self._samples = deque(maxlen=round(window / interval))
        self._seq = 0
        self._counted = None  # (time, handshake counts) of the sample before

    @property
    def interval(self):
        """Seconds between two samples (TimerService's step)."""
        return self.step

    async def _sample(self):
        # A TimerService stops for good on a failure: this never fails.
        try:
            await self._metrics.refresh(self._registry, self.clock)
        except Exception:
            log.failure("history: reading the registry failed")
        now = self.clock.seconds()
        pool = self._metrics.pool  # None when the registry did not answer: a gap
        self._seq += 1
        self._samples.append({
            "seq": self._seq,
            "time": now,
            **(asdict(pool) if pool is not None else {}),
            "handshakes": self._handshakeRates(now),
        })

    def _handshakeRates(self, now):
        """Handshakes per second since the sample before, by outcome (None for the first)."""
        counts = self._metrics.handshakeCounts()
        before, self._counted = self._counted, (now, counts)
        if before is None or now <= before[0]:
            return None
        elapsed = now - before[0]
        return {outcome: (n - before[1].get(outcome, 0)) / elapsed for outcome, n in counts.items()}

    def samples(self, after=0):
        """The samples kept whose C{seq} is above ``after``, oldest first."""
        return [sample for sample in self._samples if sample["seq"] > after]

    def addRoutes(self, routes):
        """``GET /api/v1/history[?after=SEQ]``: the samples after C{seq} SEQ."""
        routes.add("GET", "/api/v1/history", self.history)

    async def history(self, request):
        after = request.args.get(b"after", [b"0"])[-1]
        try:
            after = int(after)
        except ValueError:
            raise HTTPError(400, "after must be a sample's seq (an integer)") from None
        return Response(200, {
            "last": self._seq,  # below the page's last seq: this instance restarted
            "interval": self.interval,
            "window": self._samples.maxlen * self.interval,
            "now": self.clock.seconds(),
            "samples": self.samples(after),
        })
