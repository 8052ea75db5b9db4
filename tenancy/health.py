"""Liveness and readiness.

`/healthz` answers while the process runs. `/readyz` checks the database and every configured dependency
(Redis when REDIS_URL is set, Vault when VAULT_ADDR is set, and whatever other apps register, such as the
audit outbox's age) and names each one that fails.

Only a *required* check (the database: without it a worker can serve nothing) makes it answer 503. The others
are shared by every worker, so failing readiness on them would take every pod out of the load balancer at once
and turn a partial outage (Vault down: warm keys still serve; Redis down: records still work, video does not)
into a total one. For those it answers 200 with `"status": "degraded"` and the same per-check detail, which is
what monitoring alerts on (deploy/RUNBOOK.md).
"""

from __future__ import annotations

import logging
import time
import urllib.request
from collections.abc import Callable

from django.conf import settings
from django.db import connections, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse

from .errors import TenancyCode, error_body

logger = logging.getLogger(__name__)

Check = Callable[[], str | None]  # returns None when healthy, else a short reason
_checks: dict[str, Check] = {}
_required: set[str] = set()


def register_check(name: str, check: Check, *, required: bool = False) -> None:
    _checks[name] = check
    if required:
        _required.add(name)
    else:
        _required.discard(name)


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
    problem = _vault_at(settings.VAULT_ADDR)
    if problem is not None:
        return problem
    # Reachable is not enough: a revoked token or an expired AppRole secret id leaves Vault healthy while
    # every cold organization's read fails. Look the application's own token up (logging in first if due).
    from .crypto.vault import app_client

    try:
        app_client().token_info()
    except Exception as exc:  # any refusal is the report, whatever hvac raised
        return f"the application's Vault credential was refused: {type(exc).__name__}: {str(exc)[:120]}"
    return None


def _vault_at(addr: str) -> str | None:
    # Active (200) or a standby that forwards (429, 472, 473) is ready; sealed (503) or uninitialized is not.
    request = urllib.request.Request(addr.rstrip("/") + "/v1/sys/health", method="GET")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310 (operator-set URL)
            return None if response.status in (200, 429, 472, 473) else f"status {response.status}"
    except urllib.error.HTTPError as exc:
        return None if exc.code in (429, 472, 473) else f"status {exc.code}"


register_check("database", _database, required=True)
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
        down = any(name in _required for name in failing)
        return JsonResponse(
            {
                "status": "unavailable" if down else "degraded",
                **error_body(
                    TenancyCode.DEPENDENCY_UNAVAILABLE,
                    f"{'Not ready' if down else 'Degraded'}: {', '.join(failing)} unreachable.",
                    {name: [results[name]["error"]] for name in failing},
                ),
                "checks": results,
                "gauges": _gauge_values(),
            },
            status=503 if down else 200,
        )
    return JsonResponse({"status": "ok", "checks": results, "gauges": _gauge_values()})
