"""The pool as a service: scaler and health timers on the leader, the provider's lifetime."""

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger

from wslb.pool.ec2 import Ec2Provider
from wslb.pool.health import HealthChecker
from wslb.pool.local import LocalProvider
from wslb.pool.scaler import Scaler
from wslb.pool.static import StaticProvider


def makeProvider(reactor, pool_config):
    """The provider C{pool.provider} names."""
    if pool_config.provider == "local":
        local = pool_config.local
        return LocalProvider(reactor, local.command, local.host, local.ports)
    if pool_config.provider == "static":
        return StaticProvider(pool_config.static.workers)
    if pool_config.provider == "ec2":
        ec2 = pool_config.ec2
        return Ec2Provider(reactor, ec2.region, ec2.launch_template, ec2.port, ec2.address,
                           ec2.pool_id, endpoint_url=ec2.endpoint_url)
    raise ValueError(
        f"pool.provider = {pool_config.provider!r}: use \"local\", \"static\" or \"ec2\""
    )


class PoolService(MultiService):
    """
    Every C{scale_interval} a scaler tick, every health poll a health round,
    both only while C{leader.isLeader()}. An error inside a tick is logged
    and the timer goes on (a TimerService stops for good on an unhandled
    one). Stopping waits for a tick in progress, closes the health checks'
    connections, then stops the provider when it is a service (local
    workers end with wslb).
    """

    log = Logger()

    def __init__(self, registry, provider, leader, clock, pool_config, http=None,
                 ready=None):
        super().__init__()
        self.provider = provider
        self._leader = leader
        self._clock = clock
        self.scaler = Scaler(
            registry, provider, clock, leader,
            min_spare=pool_config.min_spare, max_spare=pool_config.max_spare,
            min_workers=pool_config.min_workers, max_workers=pool_config.max_workers,
            capacity=pool_config.capacity,
        )
        health = pool_config.health
        self.health = HealthChecker(
            registry, clock, health.path, health.interval, health.timeout,
            health.failures, pool_config.start_timeout, pool_config.unhealthy_timeout,
            http=http,
        )
        for step, tick in ((pool_config.scale_interval, self.scaler.tick),
                           (self.health.pollInterval, self.health.check)):
            timer = TimerService(step, self._asLeader, tick)
            timer.clock = clock
            timer.setServiceParent(self)
        self._running = set()  # ticks in progress: never two of one kind at once
        # ready() fires False while the registry is settling (see service.py).
        self._ready = ready or (lambda: True)
        leader.addLeadershipListener(self._leadNow)

    def startingFor(self):
        """How long the longest-starting worker has been starting; 0 on followers."""
        return self.health.startingFor(self._clock.seconds()) if self._leader.isLeader() else 0.0

    def _leadNow(self):
        # A new leader reconciles and checks at once, not a whole interval later.
        if self.running:
            self._asLeader(self.scaler.tick)
            self._asLeader(self.health.check)

    def _asLeader(self, tick):
        if not self._leader.isLeader() or tick in self._running:
            return None
        self._running.add(tick)
        d = maybeDeferred(self._ready)
        d.addCallback(lambda ready: tick() if ready else None)
        d.addErrback(lambda failure: self.log.failure(
            "pool {tick} failed", failure, tick=tick.__qualname__))
        d.addBoth(lambda _: self._running.discard(tick))
        return d

    def startService(self):
        if IService.providedBy(self.provider):
            self.provider.startService()
        super().startService()

    def stopService(self):
        d = super().stopService()
        d.addCallback(lambda _: self.health.close())
        if IService.providedBy(self.provider):
            d.addCallback(lambda _: self.provider.stopService())
        return d
