"""Request plumbing: request ids, the organization owning the Host, and the Content-Security-Policy.

The organization is found here, before any view; the tenant context itself is opened later, inside the
request's transaction and after authentication (tenancy.views.TenantAPIView.initial), because Django runs
middleware outside ATOMIC_REQUESTS and DRF authenticates inside the view.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid

from django.core.exceptions import DisallowedHost
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse

from .errors import TenancyCode, database_unavailable, json_error

logger = logging.getLogger(__name__)

# Paths that are the same for every organization and answer on any allowed host.
HOST_AGNOSTIC = re.compile(r"^/(healthz|readyz|metrics|static/|api/v1/schema/|api/v1/docs/|favicon\.ico)")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


class RequestIdMiddleware:
    """Gives every request an id (or keeps a well-formed X-Request-ID) that logs, audit and Vault share."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-ID", "")
        request.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex  # type: ignore[attr-defined]
        response = self.get_response(request)
        response["X-Request-ID"] = request.request_id  # type: ignore[attr-defined]
        return response


class HostCache:
    """Hostname -> organization id, kept briefly in process so a request costs no extra query."""

    def __init__(self, ttl: float = 30.0, negative_ttl: float = 5.0, max_entries: int = 10_000):
        self.ttl, self.negative_ttl, self.max_entries = ttl, negative_ttl, max_entries
        self._entries: dict[str, tuple[uuid.UUID | None, float]] = {}
        self._lock = threading.Lock()

    def get(self, hostname: str) -> tuple[bool, uuid.UUID | None]:
        entry = self._entries.get(hostname)
        if entry is None or entry[1] < time.monotonic():
            return False, None
        return True, entry[0]

    def put(self, hostname: str, org_id: uuid.UUID | None) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            ttl = self.ttl if org_id else self.negative_ttl
            self._entries[hostname] = (org_id, time.monotonic() + ttl)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


host_cache = HostCache()


def org_id_for_host(hostname: str) -> uuid.UUID | None:
    from .services import find_org_id_for_host

    hit, org_id = host_cache.get(hostname)
    if not hit:
        org_id = find_org_id_for_host(hostname)
        host_cache.put(hostname, org_id)
    return org_id


class OrganizationByHostMiddleware:
    """Sets request.org_id from the Host header; an unknown host gets 404 before anything else runs."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.org_id = None  # type: ignore[attr-defined]
        try:
            host = request.get_host()
        except DisallowedHost:
            return json_error(TenancyCode.UNKNOWN_HOST, "No organization is served at this host.")
        if HOST_AGNOSTIC.match(request.path):
            return self.get_response(request)
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        try:
            org_id = org_id_for_host(hostname.lower().rstrip("."))
        except (OperationalError, InterfaceError):
            # The database is unreachable: say so (503, as /readyz does) rather than answer 500, with the same
            # code and Retry-After as an outage met later in the request.
            logger.exception("database unavailable while resolving the host")
            return database_unavailable()
        if org_id is None:
            return json_error(TenancyCode.UNKNOWN_HOST, "No organization is served at this host.")
        request.org_id = org_id  # type: ignore[attr-defined]
        return self.get_response(request)


JSON_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


class ContentSecurityPolicyMiddleware:
    """A strict CSP on everything: nothing inline, nothing from elsewhere, never framed."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            is_page = response.get("Content-Type", "").startswith("text/html")
            response["Content-Security-Policy"] = PAGE_CSP if is_page else JSON_CSP
        response.setdefault("Permissions-Policy", "geolocation=(), payment=(), usb=()")
        response.setdefault("Cache-Control", "no-store")
        return response
