"""
What is derived from a worker's ws:// URL: its host:port, the id of the workers
the static pool lists and of those registered through the admin API; its health URL.
"""

from urllib.parse import urlsplit

_HTTP_SCHEME = {"ws": "http", "wss": "https"}
_DEFAULT_PORT = {"ws": 80, "wss": 443}


def _split(url):
    parts = urlsplit(url)
    if parts.scheme not in _HTTP_SCHEME or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// worker URL: {url!r}")
    return parts


def hostPort(url):
    """C{"host:port"} of a worker URL: the id of static and registered workers."""
    parts = _split(url)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port or _DEFAULT_PORT[parts.scheme]}"


def healthUrl(url, path):
    """The HTTP(S) URL of C{path} on the worker's own host and port."""
    parts = _split(url)
    return f"{_HTTP_SCHEME[parts.scheme]}://{parts.netloc}{path}"
