"""DRF authentication: portal session cookies (with CSRF) and bearer tokens, both bound to one organization.

Both run after TenantAPIView has opened the organization's signed-out context, so every lookup they make
(token by hash, membership by user) is confined by row-level security to the request's organization.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import logout as django_logout
from django.http import HttpRequest
from rest_framework import authentication, exceptions
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request

from .errors import TenancyCode
from .models import ApiToken, Membership, Organization, User
from .services import find_live_token, idle_touch_seconds, known_token, record_auth_event, remember_token

SESSION_ORG = "tm_org"
SESSION_LAST_SEEN = "tm_last_seen"
SESSION_MFA_PENDING = "tm_mfa_pending"
SESSION_SIGNED_IN_AT = "tm_signed_in_at"  # compared with Membership.sessions_revoked_at (set by a lockout)


@dataclass
class AuthInfo:
    membership: Membership
    method: str  # "session" | "token"
    token: ApiToken | None = None
    mfa_pending: bool = False
    # A token this worker already knew: the database confirms it with the request's first statement.
    confirm_in_database: bool = False


def source_ip(request: Any) -> str | None:
    return request.META.get("REMOTE_ADDR")


# Typed accessors for what the middleware and TenantAPIView put on a request: attributes set at runtime, which
# the Django and DRF stubs cannot know about.


def request_id_of(request: HttpRequest) -> str:
    """The id tenancy.middleware.RequestIdMiddleware gave this request."""
    value = getattr(request, "request_id", None)
    if not isinstance(value, str):
        raise RuntimeError("The request has no request_id: is RequestIdMiddleware installed?")
    return value


def request_org(request: Request) -> Organization:
    """The organization serving this request, set by TenantAPIView.initial before authentication."""
    org = getattr(request, "organization", None)
    if not isinstance(org, Organization):
        raise RuntimeError("The request has no organization: only TenantAPIView sets request.organization.")
    return org


def request_user(request: Request) -> User:
    """The signed-in user, for views whose permission classes already require a sign-in."""
    user = request.user
    if not isinstance(user, User):
        raise RuntimeError("The request has no signed-in user: the view must require authentication.")
    return user


def request_auth(request: Request) -> AuthInfo:
    """The membership and sign-in method this module's authenticators put on request.auth."""
    auth = request.auth
    if not isinstance(auth, AuthInfo):
        raise RuntimeError("The request has no AuthInfo: the view must require authentication.")
    return auth


class SessionExpired(exceptions.AuthenticationFailed):
    default_code = TenancyCode.SESSION_EXPIRED
    default_detail = "Signed out after inactivity; sign in again."


class SessionRevoked(exceptions.AuthenticationFailed):
    default_code = TenancyCode.SESSION_REVOKED
    default_detail = "Signed out: the account was locked after repeated failures; sign in again."


class CsrfFailed(exceptions.PermissionDenied):
    default_code = TenancyCode.CSRF_FAILED
    default_detail = "CSRF token missing or incorrect."


def enforce_csrf(request: Request) -> None:
    """Django's CSRF check for a cookie-carrying DRF request; fails with the code `csrf_failed`."""
    try:
        authentication.SessionAuthentication().enforce_csrf(request)
    except exceptions.PermissionDenied as exc:
        raise CsrfFailed(str(exc.detail)) from exc


class BearerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[User, AuthInfo] | None:
        header = request.headers.get("Authorization", "")
        if not header:
            return None
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        raw = raw.strip()
        org = request_org(request)
        # Reads only: a write loads the token, its membership and user afresh (and remembers them again), so
        # whatever a write decides from them (MFA enrolment, say) is never a minute old.
        known = known_token(raw, org) if raw and request.method in SAFE_METHODS else None
        if known is not None:
            # No lookup: TenantAPIView sends tenancy_token_in_force() with the member's context instead.
            return known.user, AuthInfo(
                membership=known.membership, method="token", token=known, confirm_in_database=True
            )
        token = find_live_token(raw, org) if raw else None
        if token is None:
            raise exceptions.AuthenticationFailed(
                "The token is invalid, expired or revoked.", code=TenancyCode.INVALID_TOKEN
            )
        membership = token.membership
        if not membership.is_active or not token.user.is_active or membership.revoked_since(token.created_at):
            raise exceptions.AuthenticationFailed(
                "The token is invalid, expired or revoked.", code=TenancyCode.INVALID_TOKEN
            )
        remember_token(token, org)
        return token.user, AuthInfo(membership=membership, method="token", token=token)

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class OrgSessionAuthentication(authentication.SessionAuthentication):
    """Django's session, accepted only for the organization it signed in to, and only until it goes idle."""

    def authenticate(self, request: Request) -> tuple[User, AuthInfo] | None:
        django_request = request._request
        user = getattr(django_request, "user", None)
        if user is None or not user.is_active or not user.is_authenticated:
            return None
        org = request_org(request)
        session = django_request.session
        if session.get(SESSION_ORG) != str(org.id):
            return None  # a session from another organization's portal means nothing here
        now = time.time()
        last_seen = float(session.get(SESSION_LAST_SEEN, 0))
        if now - last_seen > org.idle_timeout_minutes * 60:
            record_auth_event(
                kind="logout",
                outcome="success",
                org_id=org.id,
                user_id=user.pk,
                reason="idle_timeout",
                request_id=request_id_of(django_request),
                source_ip=source_ip(django_request),
            )
            django_logout(django_request)
            raise SessionExpired()
        membership = (
            Membership.objects.filter(user_id=user.pk, is_active=True).defer("email", "display_name").first()
        )
        if membership is None:
            django_logout(django_request)
            return None
        if membership.revoked_since(float(session.get(SESSION_SIGNED_IN_AT, 0))):
            # Signed in before a lockout at this organization: that lockout ended this session too.
            record_auth_event(
                kind="logout",
                outcome="success",
                org_id=org.id,
                user_id=user.pk,
                reason="revoked_by_lockout",
                request_id=request_id_of(django_request),
                source_ip=source_ip(django_request),
            )
            django_logout(django_request)
            raise SessionRevoked()
        enforce_csrf(request)
        if now - last_seen > idle_touch_seconds(org.idle_timeout_minutes):
            session[SESSION_LAST_SEEN] = now
        return user, AuthInfo(
            membership=membership, method="session", mfa_pending=bool(session.get(SESSION_MFA_PENDING))
        )

    def authenticate_header(self, request: Request) -> str:
        return 'Session realm="portal"'
