"""The signalling socket accepts only pages of its own origin: the same scheme, host and port.

Channels' AllowedHostsOriginValidator accepts an Origin on any allowed host, and every clinic's portal host is
allowed, so a page on one clinic's portal could open a socket to another clinic's host, and the browser would
send that host's cookie with it. A WebSocket is not covered by CORS, so the Origin check is the only guard.
The host name alone is not enough: a page on another port of the same name (another service, or anything a
local user can start there), or a plain-http or file:// page, is another origin, and the browser sends the
cookie to the socket all the same (cookies do not isolate ports or, without Secure, schemes).

The socket's own origin is its scheme as the server reports it (ws or wss; behind a TLS-terminating proxy,
uvicorn sets wss from X-Forwarded-Proto when --forwarded-allow-ips trusts the proxy) and its Host header,
whose port is the scheme's default when absent. A proxy must therefore pass the Host the browser sent, port
included (nginx: `proxy_set_header Host $http_host`, not `$host`, which drops the port).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier

DEFAULT_PORTS = {"http": 80, "https": 443}
PAGE_SCHEME = {"ws": "http", "wss": "https", "http": "http", "https": "https"}

Origin = tuple[str, str, int]


def _origin(scheme: str, netloc: str) -> Origin | None:
    """(scheme, host, port) of scheme://netloc, or None if it is not an http(s) origin."""
    if scheme not in DEFAULT_PORTS or not netloc or "@" in netloc:
        return None
    parts = urlsplit(f"//{netloc}")
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        return None
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return None
    return scheme, host.lower(), DEFAULT_PORTS[scheme] if port is None else port


def page_origin(origin: str) -> Origin | None:
    """The Origin header: a browser sends scheme://host[:port], nothing more ("null" for an opaque origin)."""
    parts = urlsplit(origin)
    if parts.path or parts.query or parts.fragment:
        return None
    return _origin(parts.scheme.lower(), parts.netloc)


def socket_origin(scope) -> Origin | None:
    """The origin of a page served from where this socket was opened."""
    scheme = PAGE_SCHEME.get(str(scope.get("scheme") or "ws").lower())
    host = next((v.decode("latin1") for k, v in scope.get("headers") or [] if k == b"host"), "")
    return None if scheme is None else _origin(scheme, host)


def same_origin(scope) -> bool:
    headers = dict(scope.get("headers") or [])
    page = page_origin(headers.get(b"origin", b"").decode("latin1"))
    return page is not None and page == socket_origin(scope)


class SameHostOriginValidator:
    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not same_origin(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)
