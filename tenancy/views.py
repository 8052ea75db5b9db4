"""HTTP views for tenancy: branding, sign-in and out, MFA, the organization's settings, members and invitations.

They derive from tenancy.api.TenantAPIView, the base of every tenant API view in every app, and only translate
between HTTP and tenancy.services.
"""

from __future__ import annotations

import uuid

from django.contrib.auth import login as django_login
from django.contrib.auth import logout as django_logout
from django.http import HttpRequest, JsonResponse
from django.middleware.csrf import get_token
from django.views.decorators.csrf import ensure_csrf_cookie
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from . import services
from .api import PURPOSE_HEADER, TenantAPIView, cursor_page, paginated
from .authentication import (
    SESSION_LAST_SEEN,
    SESSION_MFA_PENDING,
    SESSION_ORG,
    SESSION_SIGNED_IN_AT,
    enforce_csrf,
    request_auth,
    request_id_of,
    request_org,
    request_user,
    source_ip,
)
from .errors import ApiError, TenancyCode, error_body, json_error
from .models import Invitation, Membership, Organization, User
from .permissions import IsOrgAdmin
from .schema import error_responses
from .serializers import (
    BrandingSerializer,
    InvitationAcceptSerializer,
    InvitationSerializer,
    LoginSerializer,
    MembershipCreateSerializer,
    MembershipSerializer,
    MembershipUpdateSerializer,
    OrganizationSettingsSerializer,
    TotpCodeSerializer,
)

# -- public ------------------------------------------------------------------------------------------


class BrandingView(TenantAPIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(responses=BrandingSerializer, summary="The portal's branding for this host (no sign-in)")
    def get(self, request: Request) -> Response:
        return Response(request_org(request).branding)


@ensure_csrf_cookie
def csrf_view(request: HttpRequest) -> JsonResponse:
    """Hands the portal its CSRF token (also set as the csrftoken cookie)."""
    if request.method not in ("GET", "HEAD"):
        response = json_error(TenancyCode.METHOD_NOT_ALLOWED, f'Method "{request.method}" not allowed.')
        response["Allow"] = "GET, HEAD"
        return response
    return JsonResponse({"csrf_token": get_token(request)})


# -- sign-in -----------------------------------------------------------------------------------------


class _SignInBase(TenantAPIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    def _check(self, request: Request) -> services.SignIn | Response:
        serializer = LoginSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = services.sign_in(
            org=request_org(request),
            email=data["email"],
            password=data["password"],
            totp_code=data.get("totp", ""),
            request_id=request_id_of(request._request),
            source_ip=source_ip(request._request),
        )
        if result.ok:
            return result
        # Returned, not raised: a raised error would roll back the failure count and lockout.
        if result.error == "mfa_required":
            body = error_body(
                TenancyCode.MFA_REQUIRED,
                "Enter the code from your authenticator app.",
                {"totp": ["Required."]},
            )
        else:
            body = error_body(
                TenancyCode.INVALID_CREDENTIALS,
                "The email, password or code is not correct, or the account is temporarily locked.",
            )
        return Response(body, status=status.HTTP_401_UNAUTHORIZED)


class LoginView(_SignInBase):
    """Portal sign-in: a session cookie, CSRF-protected like every unsafe request on a session."""

    @extend_schema(
        request=LoginSerializer,
        responses={
            200: inline_serializer(
                "LoginResult",
                {
                    "user": serializers.DictField(),
                    "organization": serializers.CharField(),
                    "role": serializers.CharField(),
                    "mfa_enrollment_required": serializers.BooleanField(),
                },
            ),
            **error_responses(401, 403),  # wrong credentials or locked; the CSRF check
        },
        summary="Sign in to this organization's portal (session cookie)",
    )
    def post(self, request: Request) -> Response:
        enforce_csrf(request)
        result = self._check(request)
        if isinstance(result, Response):
            return result
        django_request = request._request
        django_login(django_request, result.user, backend="django.contrib.auth.backends.ModelBackend")
        org = request_org(request)
        django_request.session[SESSION_ORG] = str(org.id)
        import time

        django_request.session[SESSION_LAST_SEEN] = time.time()
        django_request.session[SESSION_SIGNED_IN_AT] = time.time()
        django_request.session[SESSION_MFA_PENDING] = result.mfa_enrollment_required
        assert result.user is not None and result.membership is not None
        return Response(_me(result.user, result.membership, org, result.mfa_enrollment_required))


class TokenView(_SignInBase):
    """API clients: exchange credentials for a short-lived bearer token."""

    @extend_schema(
        request=LoginSerializer,
        responses={
            201: inline_serializer(
                "TokenResult",
                {
                    "token": serializers.CharField(),
                    "token_type": serializers.CharField(),
                    "expires_at": serializers.DateTimeField(),
                },
            ),
            **error_responses(401, 403),  # wrong credentials or locked; MFA enrollment required first
        },
        summary="Issue a short-lived bearer token",
    )
    def post(self, request: Request) -> Response:
        result = self._check(request)
        if isinstance(result, Response):
            return result
        if result.mfa_enrollment_required:
            raise ApiError(
                TenancyCode.MFA_ENROLLMENT_REQUIRED,
                "This organization requires MFA: enroll an authenticator in the portal before using API tokens.",
            )
        assert result.membership is not None
        raw, token = services.issue_api_token(membership=result.membership)
        return Response(
            {"token": raw, "token_type": "Bearer", "expires_at": token.expires_at},
            status=status.HTTP_201_CREATED,
        )


class LogoutView(TenantAPIView):
    allow_mfa_pending = True

    @extend_schema(
        request=None, responses={204: None}, summary="Sign out (ends the session or revokes the token)"
    )
    def post(self, request: Request) -> Response:
        auth = request_auth(request)
        if auth.token is not None:
            services.revoke_token(auth.token)
        services.record_auth_event(
            kind="logout",
            outcome="success",
            org_id=request_org(request).id,
            user_id=request.user.pk,
            request_id=request_id_of(request._request),
            source_ip=source_ip(request._request),
            reason=auth.method,
        )
        if auth.method == "session":
            django_logout(request._request)
        return Response(status=status.HTTP_204_NO_CONTENT)


def _me(user: User, membership: Membership, org: Organization, mfa_pending: bool) -> dict:
    return {
        "user": {"id": str(user.pk), "email": membership.email, "full_name": membership.display_name},
        "organization": org.slug,
        "role": membership.role,
        "membership_id": str(membership.pk),
        "mfa_enrolled": user.totp_confirmed,
        "mfa_enrollment_required": mfa_pending,
        "idle_timeout_minutes": org.idle_timeout_minutes,
    }


class MeView(TenantAPIView):
    allow_mfa_pending = True

    @extend_schema(parameters=[PURPOSE_HEADER], responses=dict, summary="Who is signed in, and as what")
    def get(self, request: Request) -> Response:
        auth = request_auth(request)
        body = _me(request_user(request), auth.membership, request_org(request), auth.mfa_pending)
        body["purpose_of_use"] = request.purpose  # type: ignore[attr-defined]  # set by TenantAPIView.initial
        return Response(body)


# -- MFA ---------------------------------------------------------------------------------------------


class TotpView(TenantAPIView):
    allow_mfa_pending = True

    @extend_schema(
        request=None, responses={201: dict}, summary="Start TOTP enrollment: a secret and otpauth URI"
    )
    def post(self, request: Request) -> Response:
        body = services.begin_totp_enrollment(
            user=request_user(request),
            org=request_org(request),
            membership=request_auth(request).membership,
        )
        services.record_auth_event(
            kind="mfa",
            outcome="enrollment_started",
            org_id=request_org(request).id,
            user_id=request.user.pk,
            request_id=request_id_of(request._request),
            source_ip=source_ip(request._request),
        )
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=TotpCodeSerializer, responses={204: None}, summary="Remove the authenticator")
    def delete(self, request: Request) -> Response:
        serializer = TotpCodeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.remove_totp(
            user=request_user(request),
            org=request_org(request),
            membership=request_auth(request).membership,
            code=serializer.validated_data["code"],
            request_id=request_id_of(request._request),
            source_ip=source_ip(request._request),
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class TotpConfirmView(TenantAPIView):
    allow_mfa_pending = True

    @extend_schema(
        request=TotpCodeSerializer, responses={204: None}, summary="Confirm TOTP enrollment with a code"
    )
    def post(self, request: Request) -> Response:
        serializer = TotpCodeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.confirm_totp_enrollment(
            user=request_user(request),
            org=request_org(request),
            code=serializer.validated_data["code"],
            request_id=request_id_of(request._request),
            source_ip=source_ip(request._request),
        )
        if request_auth(request).method == "session":
            request._request.session[SESSION_MFA_PENDING] = False
        return Response(status=status.HTTP_204_NO_CONTENT)


# -- organization administration ---------------------------------------------------------------------


class OrganizationSettingsView(TenantAPIView):
    permission_classes = [IsOrgAdmin]

    @extend_schema(
        responses=OrganizationSettingsSerializer, summary="This organization's branding and security settings"
    )
    def get(self, request: Request) -> Response:
        return Response(OrganizationSettingsSerializer(request_org(request)).data)

    @extend_schema(
        request=OrganizationSettingsSerializer(partial=True), responses=OrganizationSettingsSerializer
    )
    def patch(self, request: Request) -> Response:
        serializer = OrganizationSettingsSerializer(request_org(request), data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        serializer.save()
        from .middleware import host_cache

        host_cache.clear()
        services.forget_organization(request_org(request).id)
        return Response(serializer.data)


def get_membership_for_user(request: Request, membership_id: uuid.UUID) -> Membership:
    """The membership, if it is in this organization (RLS confines the query); otherwise 404."""
    membership = Membership.objects.filter(pk=membership_id).first()
    if membership is None:
        raise ApiError(TenancyCode.NOT_FOUND, "Not found.")
    return membership


class MembershipListView(TenantAPIView):
    permission_classes = [IsOrgAdmin]

    @extend_schema(responses=paginated(MembershipSerializer), summary="Members of this organization")
    def get(self, request: Request) -> Response:
        return cursor_page(self, request, Membership.objects.all(), "created_at", MembershipSerializer)

    @extend_schema(
        request=MembershipCreateSerializer,
        responses={202: InvitationSerializer},
        summary="Invite a person: they become a member when they accept (the token is mailed to them)",
    )
    def post(self, request: Request) -> Response:
        serializer = MembershipCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        invitation = services.invite_member(
            org=request_org(request),
            email=data["email"],
            role=data["role"],
            display_name=data.get("display_name", ""),
            invited_by=request_user(request),
            accept_url=request.build_absolute_uri("/api/v1/invitations/accept"),
        )
        return Response(InvitationSerializer(invitation).data, status=status.HTTP_202_ACCEPTED)


class MembershipDetailView(TenantAPIView):
    permission_classes = [IsOrgAdmin]

    @extend_schema(responses=MembershipSerializer)
    def get(self, request: Request, membership_id: uuid.UUID) -> Response:
        return Response(MembershipSerializer(get_membership_for_user(request, membership_id)).data)

    @extend_schema(request=MembershipUpdateSerializer, responses=MembershipSerializer)
    def patch(self, request: Request, membership_id: uuid.UUID) -> Response:
        membership = get_membership_for_user(request, membership_id)
        serializer = MembershipUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.change_role(
            membership=membership, role=serializer.validated_data["role"], actor=request_user(request)
        )
        return Response(MembershipSerializer(membership).data)


# -- invitations -------------------------------------------------------------------------------------


class InvitationListView(TenantAPIView):
    permission_classes = [IsOrgAdmin]

    @extend_schema(responses=paginated(InvitationSerializer), summary="Invitations of this organization")
    def get(self, request: Request) -> Response:
        return cursor_page(self, request, Invitation.objects.all(), "created_at", InvitationSerializer)


class InvitationDetailView(TenantAPIView):
    permission_classes = [IsOrgAdmin]

    @extend_schema(request=None, responses={204: None}, summary="Revoke a pending invitation")
    def delete(self, request: Request, invitation_id: uuid.UUID) -> Response:
        invitation = Invitation.objects.filter(pk=invitation_id).first()  # this organization's only (RLS)
        if invitation is None:
            raise ApiError(TenancyCode.NOT_FOUND, "Not found.")
        services.revoke_invitation(invitation=invitation)
        return Response(status=status.HTTP_204_NO_CONTENT)


class InvitationAcceptView(TenantAPIView):
    """The invited person accepts, signed out, on the inviting organization's host. The token travels in the body,
    not the path, so that it stays out of access logs and Referer headers."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        request=InvitationAcceptSerializer,
        responses={
            200: inline_serializer(
                "InvitationAccepted",
                {"organization": serializers.CharField(), "role": serializers.CharField()},
            ),
            **error_responses(401),  # the password or code of an existing account is wrong
        },
        summary="Accept an invitation (the mailed token, and your password and TOTP code if you have an account)",
    )
    def post(self, request: Request) -> Response:
        serializer = InvitationAcceptSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        membership = services.accept_invitation(
            org=request_org(request),
            token=data["token"],
            password=data["password"],
            totp_code=data.get("totp", ""),
            request_id=request_id_of(request._request),
            source_ip=source_ip(request._request),
        )
        return Response({"organization": request_org(request).slug, "role": membership.role})
