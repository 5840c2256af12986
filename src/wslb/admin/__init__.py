"""The admin HTTP side: health, the JSON API, (later) metrics and status."""

from wslb.admin.api import makeAdminResource, makeAdminSite

__all__ = ["makeAdminResource", "makeAdminSite"]
