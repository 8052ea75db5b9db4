"""Liveness and readiness.

`/healthz` answers while the process runs. `/readyz` checks the database and every configured dependency
(Redis when REDIS_URL is set, Vault when VAULT_ADDR is set, and whatever other apps register) and answers 503
naming each one that is not reachable, so a load balancer stops sending traffic and an operator sees why.
"""

from __future__ import annotations

import logging
import time
import urllib.request
from collections.abc import Callable

from django.conf import settings
from django.db import connections, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse

logger = logging.getLogger(__name__)

Check = Callable[[], str | None]  # returns None when healthy, else a short reason
_checks: dict[str, Check] = {}


def register_check(name: str, check: Check) -> None:
    _checks[name] = check


# Figures shown by /readyz and exported by /metrics (e.g. the age of the oldest unshipped audit event).
Gauge = Callable[[], float | None]
_gauges: dict[str, Gauge] = {}


def register_gauge(name: str, gauge: Gauge) -> None:
    _gauges[name] = gauge


def _gauge_values() -> dict[str, float | None]:
    values: dict[str, float | None] = {}
    for name, gauge in _gauges.items():
        try:
            value = gauge()
            values[name] = None if value is None else round(float(value), 3)
        except Exception:  # a gauge that fails reports nothing rather than failing the probe
            values[name] = None
    return values


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format."""
    lines = []
    for name, value in _gauge_values().items():
        lines += [f"# TYPE telemed_{name} gauge", f"telemed_{name} {0 if value is None else value}"]
    return HttpResponse("\n".join(lines) + "\n", content_type="text/plain; version=0.0.4")


def _database() -> str | None:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT 1")
    return None


def _redis() -> str | None:
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    finally:
        client.close()
    return None


def _vault() -> str | None:
    return _vault_at(settings.VAULT_ADDR)


def _vault_at(addr: str) -> str | None:
    # Active (200) or a standby that forwards (429, 472, 473) is ready; sealed (503) or uninitialized is not.
    request = urllib.request.Request(addr.rstrip("/") + "/v1/sys/health", method="GET")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310 (operator-set URL)
            return None if response.status in (200, 429, 472, 473) else f"status {response.status}"
    except urllib.error.HTTPError as exc:
        return None if exc.code in (429, 472, 473) else f"status {exc.code}"


register_check("database", _database)
if settings.REDIS_URL:
    register_check("redis", _redis)
if settings.VAULT_ADDR:
    register_check("vault", _vault)


# Both probes run outside ATOMIC_REQUESTS: its transaction would connect to the database before the view runs,
# so with the database down liveness would fail (and restart every worker) and readiness would answer 500.
@transaction.non_atomic_requests
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@transaction.non_atomic_requests
def readyz(request: HttpRequest) -> JsonResponse:
    results: dict[str, dict] = {}
    failing: list[str] = []
    for name, check in _checks.items():
        started = time.monotonic()
        try:
            problem = check()
        except Exception as exc:  # a dependency's failure is a report here, never a 500
            problem = f"{type(exc).__name__}: {str(exc)[:200]}"
        results[name] = {
            "status": "ok" if problem is None else "unavailable",
            "ms": round((time.monotonic() - started) * 1000, 1),
        }
        if problem is not None:
            results[name]["error"] = problem
            failing.append(name)
    if failing:
        return JsonResponse(
            {
                "status": "unavailable",
                "error": {
                    "code": "dependency_unavailable",
                    "message": f"Not ready: {', '.join(failing)} unreachable.",
                    "fields": {name: [results[name]["error"]] for name in failing},
                },
                "checks": results,
                "gauges": _gauge_values(),
            },
            status=503,
        )
    return JsonResponse({"status": "ok", "checks": results, "gauges": _gauge_values()})
