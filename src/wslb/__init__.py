"""wslb: a WebSocket load balancer for stateful per-session backends."""

__all__ = ["load_config", "makeService"]


def __getattr__(name):
    # Lazy, so that importing one subpackage (a Lambda handler, the echo
    # worker) does not pull in the whole service.
    if name == "load_config":
        from wslb.config import load_config

        return load_config
    if name == "makeService":
        from wslb.service import makeService

        return makeService
    raise AttributeError(name)
