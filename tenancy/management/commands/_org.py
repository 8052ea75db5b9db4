"""Shared by the key commands: find an organization by slug or fail with a clear message."""

from django.core.management.base import CommandError

from tenancy.context import platform_context
from tenancy.models import Organization


def organization_by_slug(slug: str) -> Organization:
    with platform_context():
        org = Organization.objects.filter(slug=slug).first()
    if org is None:
        raise CommandError(f"no organization with slug {slug!r}")
    return org
