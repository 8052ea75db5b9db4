from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"

    def ready(self) -> None:
        from tenancy import health

        from . import listeners

        listeners.connect()
        health.register_check("audit_outbox", _outbox_lag)
        health.register_gauge("audit_outbox_oldest_age_seconds", _outbox_age)


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
