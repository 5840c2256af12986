"""What the scaler needs from a way of getting workers."""

from __future__ import annotations

from dataclasses import dataclass

from zope.interface import Attribute, Interface


@dataclass(frozen=True)
class LaunchedWorker:
    """A worker a provider started (or found running)."""

    id: str  # "local-9100", "i-0e21...", "10.0.2.110:9000"
    url: str  # ws://host:port


class IProvider(Interface):
    """
    Launches and terminates workers. Every method returns a Deferred and
    never blocks the reactor.
    """

    name = Attribute('"local", "static" or "ec2": recorded as Worker.provider.')
    managed = Attribute(
        "True when the provider launches and terminates its workers; False "
        "for static lists, which the scaler never grows or shrinks."
    )

    def launch(n):
        """Start ``n`` workers. Fires with a list of L{LaunchedWorker}."""

    def terminate(worker_ids):
        """Stop these workers. Fires when asked (not necessarily gone)."""

    def list():
        """
        Fire with the L{LaunchedWorker}s that exist now, so the scaler can
        reconcile the registry with reality.
        """

    def addDeathListener(listener):
        """
        Call ``listener(worker_id)`` when the provider learns a worker is gone
        (a local process exited), so it is marked dead without waiting for
        health checks.
        """


class ILeader(Interface):
    """
    Whether this instance runs the pool: exactly one instance launches,
    terminates and health-checks workers (DESIGN §6).
    """

    fencingToken = Attribute(
        "An int that grows with every new leadership, recorded with each "
        "scaler action so that actions of a stale leader can be told apart."
    )

    def isLeader():
        """True while this instance believes it leads (no I/O): gates the pool's timers."""

    def checkLeader():
        """
        Confirm the leadership with its source of truth just before an action
        with effects outside wslb (launch, terminate). Fires with a bool.
        """

    def addLeadershipListener(listener):
        """
        Call ``listener()`` each time this instance becomes the leader, so the
        pool acts at once instead of at its next timer tick.
        """
