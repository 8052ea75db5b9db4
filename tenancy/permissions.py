"""Who may call what. Object-level access is decided by loaders that answer 404 (see services/views)."""

from __future__ import annotations

from rest_framework import permissions

from .errors import ApiError, TenancyCode
from .models import Role


class IsOrganizationMember(permissions.BasePermission):
    """Signed in to this request's organization; a session awaiting MFA enrollment may only enroll."""

    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated and request.auth is not None):
            return False
        if request.auth.mfa_pending and not getattr(view, "allow_mfa_pending", False):
            raise ApiError(
                TenancyCode.MFA_ENROLLMENT_REQUIRED,
                "This organization requires MFA: enroll an authenticator (POST /api/v1/auth/mfa/totp).",
            )
        return True


class HasRole(IsOrganizationMember):
    roles: tuple[str, ...] = ()

    def has_permission(self, request, view) -> bool:
        if not super().has_permission(request, view):
            return False
        return request.auth.membership.role in self.roles


class IsOrgAdmin(HasRole):
    roles = (Role.ORG_ADMIN,)
