"""``GET /metrics``: Prometheus text, rendered on the reactor thread."""

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET


class MetricsPage(Resource):
    """
    prometheus-client's own Twisted resource collects in a thread; our
    collectors read reactor-owned state, so this one stays on the reactor,
    after refreshing the registry-derived gauges.
    """

    isLeaf = True

    def __init__(self, metrics, refresh):
        super().__init__()
        self._metrics = metrics
        self._refresh = refresh  # () -> Deferred, fired when gauges are current

    def render_GET(self, request):
        gone = []
        request.notifyFinish().addErrback(gone.append)

        def write(_):
            if gone:
                return
            request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
            request.write(generate_latest(self._metrics.registry))
            request.finish()

        self._refresh().addBoth(write)
        return NOT_DONE_YET
