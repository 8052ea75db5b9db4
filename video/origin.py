"""The signalling socket accepts only pages of the organization it belongs to.

Channels' AllowedHostsOriginValidator accepts an Origin on any allowed host, and every clinic's portal host is
allowed, so a page on one clinic's portal could open a socket to another clinic's host, and the browser would
send that host's cookie with it. A WebSocket is not covered by CORS, so the Origin check is the only guard:
require the page's host to be the socket's own host (the organization comes from the host).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier


def _hostname(value: str) -> str:
    # "northwind.localhost:8080" and "[::1]:8000" alike: what urlsplit calls the hostname, lower-cased.
    return (urlsplit(f"//{value}").hostname or "").rstrip(".").lower()


class SameHostOriginValidator:
    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":
            headers = dict(scope.get("headers") or [])
            origin = headers.get(b"origin", b"").decode("latin1")
            host = headers.get(b"host", b"").decode("latin1")
            origin_host = (urlsplit(origin).hostname or "").rstrip(".").lower() if origin else ""
            if not origin_host or origin_host != _hostname(host):
                return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)
