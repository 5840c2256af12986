"""The shared registry of workers, sessions and the queue."""

from wslb.registry._interfaces import (
    DEAD,
    HEALTHY,
    MAX_OVERTAKES,
    PACK,
    SERVED_BUCKET,
    SERVED_SLOTS,
    SESSION_KEY,
    SPREAD,
    START_SAMPLES,
    STARTING,
    UNHEALTHY,
    WORKER_STATES,
    Abandoned,
    Assigned,
    AssignRequest,
    IRegistry,
    Queued,
    QueueFull,
    QueueInfo,
    QueuePace,
    QueuePlace,
    QueueStatus,
    Session,
    Worker,
)

__all__ = [
    "DEAD", "HEALTHY", "MAX_OVERTAKES", "PACK", "SERVED_BUCKET", "SERVED_SLOTS", "SESSION_KEY",
    "SPREAD",
    "START_SAMPLES", "STARTING", "UNHEALTHY", "WORKER_STATES",
    "Abandoned", "Assigned", "AssignRequest", "IRegistry", "Queued", "QueueFull", "QueueInfo",
    "QueuePace", "QueuePlace", "QueueStatus", "Session", "Worker",
]
