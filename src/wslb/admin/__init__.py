"""The admin HTTP side: health, the JSON API, metrics and the status page, on klein."""

from wslb.admin.api import makeAdminRoutes, makeAdminSite

__all__ = ["makeAdminRoutes", "makeAdminSite"]
