"""The audit app: its subscription to the event bus (audit.events.connect) and its health checks."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from django.apps import AppConfig

if TYPE_CHECKING:
    from .shipper import UnsignedTail


class AuditConfig(AppConfig):
    name = "audit"

    def ready(self) -> None:
        from tenancy import health

        from . import events

        # The audit app's one subscription: every event published on tenancy.events becomes an outbox row
        # in the publisher's transaction (audit/events.py).
        events.connect()
        health.register_check("audit_outbox", _outbox_lag)
        health.register_gauge("audit_outbox_oldest_age_seconds", _outbox_age)
        # Shipped but not yet under a signed checkpoint (deploy/RUNBOOK.md: signing stalls while Vault is down).
        health.register_gauge("audit_unsigned_entries", lambda: _unsigned().entries)
        health.register_gauge("audit_unsigned_oldest_age_seconds", lambda: _unsigned().oldest_age)


def _outbox_lag() -> str | None:
    """Not ready when the oldest unshipped audit event is older than AUDIT_MAX_LAG_SECONDS."""
    from django.conf import settings
    from django.db import DatabaseError

    from .shipper import oldest_unshipped_age

    try:
        age = oldest_unshipped_age()
    except DatabaseError:
        return None  # the database check names the database; this one cannot know
    if age is not None and age > settings.AUDIT_MAX_LAG_SECONDS:
        return f"oldest unshipped audit event is {age:.0f} s old (shipper down?)"
    return None


def _outbox_age() -> float | None:
    from .shipper import oldest_unshipped_age

    return oldest_unshipped_age()


# (when read, the tail or None when the read failed): probes and scrapes call /readyz and /metrics often.
_unsigned_cache: tuple[float, UnsignedTail | None] | None = None


def _unsigned() -> UnsignedTail:
    """The unsigned tail, read at most every 5 s per process, and after a failed read (the audit database
    unreachable: up to 2 s) not again for 30 s, so the probe never waits on it more than now and then. Both
    gauges come from one read; a failure makes them report null."""
    from .shipper import unsigned_tail

    global _unsigned_cache
    now = time.monotonic()
    if _unsigned_cache is None or now - _unsigned_cache[0] > (5 if _unsigned_cache[1] is not None else 30):
        try:
            _unsigned_cache = (now, unsigned_tail())
        except Exception:
            _unsigned_cache = (now, None)
    tail = _unsigned_cache[1]
    if tail is None:
        raise LookupError("the audit database could not be read")
    return tail
