"""One error shape for every 4xx and 5xx: {"error": {"code": ..., "message": ..., "fields": {...}}}.

Input a client can send never becomes a 500: malformed JSON, wrong types, overlong or NUL-bearing strings and
database-level rejections of a value all answer 400 with this body.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import psycopg
from django.core.exceptions import PermissionDenied, RequestDataTooBig, ValidationError
from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    InternalError,
    OperationalError,
    connections,
)
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response

from .context import NoTenantContext
from .crypto.envelope import CiphertextError
from .crypto.vault import KeyServiceError

logger = logging.getLogger(__name__)


class ApiError(exceptions.APIException):
    """An error raised by a service function, with a stable machine-readable code."""

    def __init__(self, code: str, message: str, status_code: int = 400, fields: dict | None = None):
        super().__init__(detail=message, code=code)
        self.status_code = status_code
        self.error_code = code
        self.fields = fields or {}


class RecordedFailure(ApiError):
    """A refusal raised after the service recorded the attempt: an audit event, a failure toward lockout.

    The exception handler answers it like any ApiError but keeps the transaction's writes (it does not mark
    ATOMIC_REQUESTS for rollback), so the record of a failed credential check survives the refusal. Raise it only
    when everything the transaction wrote so far is meant to stay.
    """


class ServiceUnavailable(ApiError):
    def __init__(self, dependency: str, message: str):
        super().__init__("service_unavailable", message, status.HTTP_503_SERVICE_UNAVAILABLE, {})
        self.dependency = dependency


# Tables whose refused write means that a dependency of the request is down, not that the caller overstepped:
# table -> (dependency, message). Apps register their own (the audit app: its outbox, which the backstop
# triggers also write on every change to a health-information table).
_unavailable_if_refused: dict[str, tuple[str, str]] = {}


def unavailable_if_refused(table: str, dependency: str, message: str) -> None:
    """Answer 503 `service_unavailable` (with `message`), not 403, when PostgreSQL refuses the runtime role a
    write to `table` for lack of privilege: no client can cause that, and the request's writes are lost."""
    _unavailable_if_refused[table] = (dependency, message)


def _refused_dependency(exc: BaseException) -> ServiceUnavailable | None:
    cause = getattr(exc, "__cause__", None)
    if not isinstance(exc, DatabaseError) or getattr(cause, "sqlstate", "") != "42501":
        return None
    message = getattr(getattr(cause, "diag", None), "message_primary", None) or ""
    for table, (dependency, text) in _unavailable_if_refused.items():
        if message == f"permission denied for table {table}":
            return ServiceUnavailable(dependency, text)
    return None


# A database that cannot be reached: Django's wrappers, and psycopg's own from the raw audit-database connections.
DATABASE_OUTAGE = (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)


def is_database_outage(exc: BaseException | None) -> bool:
    """DATABASE_OUTAGE, or an InternalError on a connection that broke under it: psycopg reports a connection
    lost during its own BEGIN or COMMIT as "received 2 results from command 'COMMIT'" (PgBouncer's "server
    conn crashed?" and libpq's connection-lost error), which is the same outage, not a bug.

    Broken means psycopg marked it so, or Django already dropped it: a failed COMMIT whose ROLLBACK failed too
    leaves no connection (Atomic.__exit__ closes it), while a genuine internal error keeps a usable one."""
    if isinstance(exc, DATABASE_OUTAGE):
        return True
    if isinstance(exc, (InternalError, psycopg.InternalError)):
        raw = connections["default"].connection
        return raw is None or bool(getattr(raw, "broken", False) or getattr(raw, "closed", False))
    return False


DATABASE_UNAVAILABLE = (
    "database_unavailable",
    "The clinic's records are temporarily unavailable. Nothing was saved; try again shortly.",
)


def database_unavailable() -> JsonResponse:
    """PostgreSQL unreachable or restarting. ATOMIC_REQUESTS rolled the request back, so "nothing was saved"
    is true; 503 with Retry-After tells clients and nginx the failure is transient."""
    response = json_error(*DATABASE_UNAVAILABLE, 503)
    response["Retry-After"] = "5"
    return response


def error_body(code: str, message: str, fields: dict | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def json_error(code: str, message: str, status_code: int, fields: dict | None = None) -> JsonResponse:
    return JsonResponse(error_body(code, message, fields), status=status_code)


def _flatten(detail: Any) -> Any:
    if isinstance(detail, dict):
        return {str(k): _flatten(v) for k, v in detail.items()}
    if isinstance(detail, list):
        return [_flatten(v) for v in detail]
    return str(detail)


_DEFAULT_CODES = {
    400: "invalid_request",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    423: "locked",
    429: "throttled",
    503: "service_unavailable",
}


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF's exception handler, reshaped. Unknown exceptions are logged and answered 500 in the same shape.

    Like DRF's own handler it marks the request's transaction (ATOMIC_REQUESTS) for rollback, so an error
    raised halfway through a view leaves none of its writes behind. Authentication failures are the
    exception: they come before any view work, and what they did (signing out an idle session, the sign-in
    event) must stay done. So is RecordedFailure, raised after a service recorded a failed check.
    """
    if not isinstance(exc, (exceptions.AuthenticationFailed, exceptions.NotAuthenticated, RecordedFailure)):
        # Imported here: rest_framework.views imports the authentication classes, which import this module.
        from rest_framework.views import set_rollback

        set_rollback()
    headers: dict[str, str] = {}
    if isinstance(exc, ApiError):
        return Response(error_body(exc.error_code, str(exc.detail), exc.fields), status=exc.status_code)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, ValidationError):
        exc = exceptions.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
    elif isinstance(exc, DataError):
        # A value the database refused (out of range, bad encoding): the client's input, not our fault.
        return Response(
            error_body("invalid_input", "A value is out of range or not valid for its field."),
            status=status.HTTP_400_BAD_REQUEST,
        )
    elif (refused := _refused_dependency(exc)) is not None:
        logger.error("%s cannot be written: %s", refused.dependency, exc)
        return Response(error_body(refused.error_code, str(refused.detail)), status=refused.status_code)
    elif (
        isinstance(exc, DatabaseError) and getattr(getattr(exc, "__cause__", None), "sqlstate", "") == "42501"
    ):
        # A row policy refused a write the caller could attempt (e.g. a note outside their care relationship).
        logger.info("row policy refused a write: %s", exc)
        return Response(
            error_body("not_permitted", "You are not permitted to make this change."),
            status=status.HTTP_403_FORBIDDEN,
        )
    elif isinstance(exc, IntegrityError):
        # Never echo the constraint: it can name another tenant's value.
        return Response(
            error_body("conflict", "The request conflicts with existing data."),
            status=status.HTTP_409_CONFLICT,
        )
    elif is_database_outage(exc):
        logger.warning("database unavailable: %s", exc)
        return Response(
            error_body(*DATABASE_UNAVAILABLE),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )
    elif isinstance(exc, KeyServiceError):
        # Vault unreachable, a refused credential, or the organization's key gone: never plaintext, never a guess.
        logger.warning("key service unavailable: %s", exc)
        return Response(
            error_body(
                "key_service_unavailable",
                "Health information is temporarily unavailable: the key service cannot be reached. Try again shortly.",
            ),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )
    elif isinstance(exc, CiphertextError):
        logger.error("stored value failed authentication: %s", exc)
        return Response(
            error_body(
                "data_integrity_error", "A stored value failed its integrity check; it was not returned."
            ),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    elif isinstance(exc, NoTenantContext):
        logger.error("tenant data touched without a tenant context", exc_info=exc)
        return Response(
            error_body("internal_error", "The server could not complete the request."),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )

    if not isinstance(exc, exceptions.APIException):
        return None  # Django's 500 handler (config.urls.server_error) answers in the same shape.

    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header  # type: ignore[attr-defined]
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))  # type: ignore[attr-defined]

    code = _DEFAULT_CODES.get(exc.status_code, "error")
    fields: dict[str, Any] = {}
    if isinstance(exc, exceptions.ValidationError):
        code = "invalid_request"
        detail = exc.detail
        if isinstance(detail, dict):
            fields = _flatten(detail)
            non_field = fields.pop("non_field_errors", None)
            message = non_field[0] if non_field else "Some fields are not valid."
        else:
            items = _flatten(detail)
            message = items[0] if isinstance(items, list) and items else str(items)
    else:
        # The exception's own code when it has one: a 401 says why (invalid_token, session_expired, ...),
        # which tells a client whether to refresh a token or send the user back to the sign-in page.
        detail_code = exc.get_codes() if hasattr(exc, "get_codes") else None
        if isinstance(detail_code, str):
            code = {"parse_error": "malformed_json", "error": code}.get(detail_code, detail_code)
        message = str(exc.detail)
    return Response(error_body(code, message, fields), status=exc.status_code, headers=headers)


# Django-level handlers (URLs that never reach DRF).
def bad_request(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    if isinstance(exception, RequestDataTooBig):
        return json_error("request_too_large", "The request body is too large.", 413)
    return json_error("invalid_request", "The request could not be understood.", 400)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    message = "Permission denied."
    if exception is not None and "CSRF" in str(exception):
        return json_error("csrf_failed", "CSRF token missing or incorrect.", 403)
    return json_error("permission_denied", message, 403)


def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return json_error("not_found", "Not found.", 404)


def server_error(request: HttpRequest) -> JsonResponse:
    # Django calls this inside its except block: a lost database connection raised by a middleware (the
    # host lookup, the session) is an outage to report as one, not a bug.
    if is_database_outage(sys.exc_info()[1]):
        return database_unavailable()
    return json_error("internal_error", "The server could not complete the request.", 500)


def csrf_failure(request: HttpRequest, reason: str = "") -> JsonResponse:
    return json_error("csrf_failed", f"CSRF check failed: {reason}", 403)
