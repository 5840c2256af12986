"""A fixed list of workers that wslb uses but never launches or terminates."""

from twisted.internet.defer import succeed
from zope.interface import implementer

from wslb.pool._interfaces import IProvider, LaunchedWorker
from wslb.worker_urls import hostPort


@implementer(IProvider)
class StaticProvider:
    """
    The workers of C{pool.static.workers}, ids C{host:port}. The scaler only
    adopts them; health checks alone move them between states, and a dead
    one stays registered so that it can come back.
    """

    name = "static"
    managed = False

    def __init__(self, urls):
        workers = {}
        for url in urls:
            worker_id = hostPort(url)
            workers.setdefault(worker_id, LaunchedWorker(worker_id, url))
        self._workers = list(workers.values())

    def launch(self, n):
        return succeed([])

    def terminate(self, worker_ids):
        return succeed([])

    def list(self):
        return succeed(list(self._workers))

    def addDeathListener(self, listener):
        """Nothing to listen to: a static list never learns of a death."""
