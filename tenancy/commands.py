"""The public seam for management commands of every app: what they share to find an organization.

A command names an organization by its slug (`--org northwind`); `organization_by_slug` finds it under the
platform context (no tenant is set yet, and RLS shows no row without one) or stops with a clear message.
"""

from __future__ import annotations

from django.core.management.base import CommandError

from .context import platform_context
from .models import Organization

__all__ = ["organization_by_slug"]


def organization_by_slug(slug: str) -> Organization:
    with platform_context():
        org = Organization.objects.filter(slug=slug).first()
    if org is None:
        raise CommandError(f"no organization with slug {slug!r}")
    return org
