"""The shared registry of workers, sessions and the queue."""

from wslb.registry._interfaces import (
    DEAD,
    HEALTHY,
    MAX_OVERTAKES,
    PACK,
    SPREAD,
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
    Session,
    Worker,
)

__all__ = [
    "DEAD", "HEALTHY", "MAX_OVERTAKES", "PACK", "SPREAD", "STARTING", "UNHEALTHY",
    "WORKER_STATES",
    "Abandoned", "Assigned", "AssignRequest", "IRegistry", "Queued", "QueueFull", "QueueInfo",
    "Session", "Worker",
]
