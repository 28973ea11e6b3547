"""Server roots, the URLs endpoint paths are appended to: from what people give (with a trailing slash, or
an OpenAI base URL ending in /v1), and from the address a server binds."""
from __future__ import annotations

from urllib.parse import urlsplit


class InvalidServerURL(ValueError):
    """A URL that names no http(s) server."""

    def __init__(self, url: str, what: str = "server URL") -> None:
        super().__init__(f"{what} {url!r} must start with http:// or https:// and name a host, "
                         f"e.g. http://127.0.0.1:8001")
        self.url = url


def server_root(url: str, what: str = "server URL") -> str:
    """The root of the server at `url`; raises InvalidServerURL (its message starts with `what`)."""
    root = url.strip().rstrip("/")
    if root.endswith("/v1"):
        root = root[:-3]
    parts = urlsplit(root)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidServerURL(url, what)
    return root


def server_url(host: str, port: int) -> str:
    """The root of a server bound to host:port (an IPv6 host goes in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
