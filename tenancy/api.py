"""The public seam for every app's HTTP API: what a view in clinic, audit, video (and the portal's JSON
endpoints) builds on, from one module.

- `TenantAPIView`: the base of every tenant API view. It opens the organization's signed-out context inside
  the request's transaction, lets DRF authenticate under it, then narrows it to the signed-in member's role
  and purpose of use.
- `request_org`, `request_user`: the request's organization and signed-in user, typed.
- `PURPOSE_HEADER`: the `X-Purpose-Of-Use` parameter, for each operation's schema.
- `paginated` (a cursor page's schema) and `cursor_page` (the page itself), for views that page by hand.
- `uuid_param`: the one parser of a UUID query parameter (400 `invalid_request` naming the parameter).
- `StrictSerializer`, `StrictModelSerializer`: the bases of every input serializer (tenancy/strict.py).

The modules behind it (authentication, strict, context) are tenancy's own; other apps import this one.
"""

from __future__ import annotations

import contextvars
import hashlib
import uuid
from typing import Literal, overload

from django.db import connections
from django.db.models import QuerySet
from django.http import HttpRequest
from drf_spectacular.utils import OpenApiParameter, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import services
from .authentication import AuthInfo, request_org, request_user, source_ip
from .context import ANONYMOUS, ContextRefused, TenantContext, activate, deactivate
from .context import flush as context_flush
from .context import pending as context_pending
from .errors import ApiError, TenancyCode, json_error
from .strict import StrictModelSerializer, StrictRequestMixin, StrictSerializer

__all__ = [
    "PURPOSE_HEADER",
    "StrictModelSerializer",
    "StrictSerializer",
    "TenantAPIView",
    "cursor_page",
    "paginated",
    "request_org",
    "request_user",
    "uuid_param",
]

PURPOSE_HEADER = OpenApiParameter(
    "X-Purpose-Of-Use",
    str,
    OpenApiParameter.HEADER,
    required=False,
    enum=["treatment", "operations", "analytics", "audit", "emergency"],
    description="Purpose of use for this request; defaults to the role's usual purpose.",
)


def session_label(auth: AuthInfo, django_request: HttpRequest) -> str:
    """Which sign-in this is, for the audit log, without writing a credential there."""
    if auth.token is not None:
        return f"token:{auth.token.pk}"
    key = getattr(getattr(django_request, "session", None), "session_key", None) or ""
    return "session:" + hashlib.sha256(key.encode()).hexdigest()[:16] if key else "session"


def paginated(serializer_class: type[serializers.Serializer]) -> serializers.Serializer:
    """The schema of one cursor page of `serializer_class`, for APIViews that paginate by hand (drf-spectacular
    wraps only generic views' lists)."""
    name = serializer_class.__name__.removesuffix("Serializer")
    return inline_serializer(
        f"Paginated{name}List",
        {
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": serializer_class(many=True),
        },
    )


class TenantAPIView(StrictRequestMixin, APIView):
    """Base view: the organization comes from the Host, the context from authentication."""

    allow_mfa_pending = False

    def initial(self, request: Request, *args, **kwargs) -> None:
        django_request = request._request
        org_id = getattr(django_request, "org_id", None)
        if org_id is None:
            raise ApiError(TenancyCode.UNKNOWN_HOST, "No organization is served at this host.")
        self._context_tokens: list[contextvars.Token] = []
        request_id = getattr(django_request, "request_id", uuid.uuid4().hex)
        # Signed-out context first: enough to read the organization and confine the authentication lookups.
        ip = source_ip(django_request)
        self._push(TenantContext(org_id=org_id, role=ANONYMOUS, request_id=request_id, source_ip=ip))
        # DRF's Request has no such attribute in the stubs; read it back through request_org().
        request.organization = services.get_organization(org_id)  # type: ignore[attr-defined]
        super().initial(request, *args, **kwargs)
        auth = request.auth
        if isinstance(auth, AuthInfo):
            purpose = services.check_purpose(auth.membership.role, request.headers.get("X-Purpose-Of-Use"))
            # A token this worker already knew was not looked up: the database confirms it is still in force
            # for this very context, in the same statement as the context, just before the request's first statement.
            checks = (
                (services.token_in_force_check(auth.token),)
                if auth.confirm_in_database and auth.token is not None
                else ()
            )
            self._push(
                TenantContext(
                    org_id=org_id,
                    role=auth.membership.role,
                    user_id=request.user.pk,
                    purpose=purpose,
                    request_id=request_id,
                    source_ip=ip,
                    session=session_label(auth, django_request),
                ),
                checks,
            )
            request.purpose = purpose  # type: ignore[attr-defined]  # set here for views to read

    def _push(self, ctx: TenantContext, checks: tuple[tuple[str, list], ...] = ()) -> None:
        self._context_tokens.append(activate(ctx, checks=checks))

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, ContextRefused):
            exc = self._token_refused()
        return super().handle_exception(exc)

    def _token_refused(self) -> exceptions.AuthenticationFailed:
        auth = getattr(self.request, "_auth", None)  # `auth` itself would authenticate a request not yet done
        if isinstance(auth, AuthInfo) and auth.token is not None:
            services.forget_token(auth.token.key_hash)
        return exceptions.AuthenticationFailed(
            "The token is invalid, expired or revoked.", code=TenancyCode.INVALID_TOKEN
        )

    def finalize_response(self, request: Request, response, *args, **kwargs):
        # A view that made no statement has not had its known token confirmed yet: confirm it before answering.
        # (`_auth`: reading `auth` would authenticate a request that failed before it got that far.)
        auth = getattr(request, "_auth", None)
        unconfirmed = isinstance(auth, AuthInfo) and auth.confirm_in_database and context_pending()
        answered = getattr(response, "status_code", 500) < 400 and not connections["default"].needs_rollback
        if unconfirmed and answered:
            try:
                context_flush()
            except ContextRefused:
                response = super().handle_exception(self._token_refused())
        return super().finalize_response(request, response, *args, **kwargs)

    def dispatch(self, request: HttpRequest, *args, **kwargs):
        if not connections["default"].in_atomic_block:
            # ATOMIC_REQUESTS is what makes the context transaction-local to this request; refuse without it.
            return json_error(TenancyCode.INTERNAL_ERROR, "Request is not in a transaction.")
        self._context_tokens = []
        try:
            return super().dispatch(request, *args, **kwargs)
        finally:
            for token in reversed(self._context_tokens):
                deactivate(token)


def cursor_page(
    view: APIView,
    request: Request,
    queryset: QuerySet,
    ordering: str,
    serializer_class: type[serializers.Serializer],
    page_size: int | None = None,
) -> Response:
    """One cursor page of `queryset` in `ordering`, serialized: `{"next", "previous", "results"}` (its schema
    is `paginated(serializer_class)`). `page_size` defaults to REST_FRAMEWORK's PAGE_SIZE."""
    paginator = CursorPagination()
    paginator.ordering = ordering
    if page_size is not None:
        paginator.page_size = page_size
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer_class(page, many=True).data)


@overload
def uuid_param(request: Request, name: str, *, required: Literal[True]) -> uuid.UUID: ...
@overload
def uuid_param(request: Request, name: str, *, required: bool = False) -> uuid.UUID | None: ...
def uuid_param(request: Request, name: str, *, required: bool = False) -> uuid.UUID | None:
    """The query parameter `name` as a UUID; None when absent or empty, unless `required`.

    Anything that is not a UUID (and, when required, nothing at all) is 400 `invalid_request` with the
    parameter named in `fields`, never a 500 nor a silently ignored filter.
    """
    raw = request.query_params.get(name)
    if raw in (None, "") and not required:
        return None
    try:
        return uuid.UUID(raw or "")
    except ValueError:
        raise ApiError(
            TenancyCode.INVALID_REQUEST, f"{name} must be a UUID.", fields={name: ["Must be a UUID."]}
        ) from None
