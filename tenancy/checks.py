"""System checks: configuration mistakes that would silently weaken isolation."""

from django.conf import settings
from django.core.checks import Error, register


@register()
def runtime_role_is_not_owner(app_configs, **kwargs):
    if settings.DATABASE_OWNER_URL and settings.DATABASE_URL == settings.DATABASE_OWNER_URL:
        return [
            Error(
                "DATABASE_URL and DATABASE_OWNER_URL are the same: the server would connect as the table owner.",
                hint="Give the server a runtime role that does not own the tables (README, deploy/postgres/).",
                id="tenancy.E001",
            )
        ]
    return []
