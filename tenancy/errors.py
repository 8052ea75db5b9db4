"""One error shape for every 4xx and 5xx: {"error": {"code": ..., "message": ..., "fields": {...}}}.

Input a client can send never becomes a 500: malformed JSON, wrong types, overlong or NUL-bearing strings and
database-level rejections of a value all answer 400 with this body.

Every code a client can receive is a member of an ErrorCode enum, with its HTTP status and a description for
client developers: tenancy's general ones in TenancyCode below, each app's own in its errors module
(clinic/errors.py, video/errors.py, with the signalling socket's codes). every_error_code() lists them all and the
OpenAPI schema's Error component shows them (tenancy/schema.py). ApiError, json_error and error_body take members
only, so no bare string reaches a client.
"""

from __future__ import annotations

import logging
import sys
from enum import StrEnum
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


class ErrorCode(StrEnum):
    """A code a client can receive in `error.code`, with its HTTP status and what it means to a client developer.

    No members here: each app lists its own codes in a subclass (tenancy's general ones in TenancyCode below,
    clinic/errors.py, video/errors.py), a member being `NAME = ("wire_value", status, "description")`. A
    subclass that repeats another's value is refused when it is defined: a code means one thing (an HTTP code
    among the HTTP codes, a socket code among the socket codes).
    """

    _value_: str
    status: int | None  # None for a SocketErrorCode: it never comes as an HTTP response
    description: str

    def __new__(cls, value: str, status: int | None, description: str) -> ErrorCode:
        return _member(cls, value, status, description)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _register(cls)


def _member(cls: type, value: str, status: int | None, description: str) -> Any:
    member: Any = str.__new__(cls, value)
    member._value_ = value
    member.status = status
    member.description = description
    return member


# (is a socket code, value) -> member: every code of every ErrorCode subclass defined so far.
_codes: dict[tuple[bool, str], ErrorCode] = {}


def _register(cls: type[ErrorCode]) -> None:
    members = list(cls)
    if len(members) != len(cls.__members__):
        raise TypeError(f"{cls.__qualname__} gives one code two names: {sorted(cls.__members__)}")
    for member in members:
        if not member.description.strip() or not (member.status is None or 400 <= member.status <= 599):
            raise TypeError(f"{cls.__qualname__}.{member.name} needs a description and a 4xx or 5xx status")
        other = _codes.get((member.status is None, member.value))
        if other is not None:
            raise TypeError(
                f"error code {member.value!r} is defined twice: in {type(other).__module__}."
                f"{type(other).__qualname__} and in {cls.__module__}.{cls.__qualname__}"
            )
    for member in members:
        _codes[(member.status is None, member.value)] = member


class SocketErrorCode(ErrorCode):
    """A code sent on a WebSocket (`{"type": "error", "code": ...}`), never as an HTTP response: no status.

    Its values are checked against the other socket codes only: the signalling socket says `not_found` as the
    API does, with its own description (the close code that comes with it).
    """

    def __new__(cls, value: str, description: str) -> SocketErrorCode:
        return _member(cls, value, None, description)


def every_error_code() -> list[ErrorCode]:
    """Every code a client can receive, from every app's ErrorCode subclass: the HTTP ones by status, then the
    socket ones. Each app's errors module is imported by the time Django is ready (its AppConfig.ready)."""
    return sorted(_codes.values(), key=lambda code: (code.status is None, code.status or 0, code.value))


def _status(code: object) -> int:
    """The HTTP status of an ErrorCode member. Fails loudly: a bare string or a socket code is a bug at the
    call site, not a code to send."""
    if not isinstance(code, ErrorCode) or code.status is None:
        raise TypeError(f"an HTTP error needs an ErrorCode member with a status, not {code!r}")
    return code.status


def _known(value: str) -> ErrorCode | None:
    """The HTTP code with this value (a DRF exception's code), or None."""
    return _codes.get((False, value))


class TenancyCode(ErrorCode):
    """Tenancy's codes: the general ones every app answers with, and sign-in, MFA, invitations and members."""

    # 400
    INVALID_REQUEST = (
        "invalid_request",
        400,
        "The request is not valid: error.fields names each wrong body field, header or query parameter and says "
        "why; correct them and send it again.",
    )
    MALFORMED_JSON = (
        "malformed_json",
        400,
        "The body is not valid JSON (or is nested too deeply): send a JSON object.",
    )
    INVALID_INPUT = (
        "invalid_input",
        400,
        "The database refused a value as out of range or not valid for its field: send a valid value.",
    )
    INVALID_PURPOSE = (
        "invalid_purpose",
        400,
        "The purpose of use (the X-Purpose-Of-Use header, or a consent's purpose) is empty or unknown: send one "
        "of the values error.fields lists.",
    )
    INVALID_ROLE = ("invalid_role", 400, "Unknown role: send one of the roles error.fields lists.")
    INVALID_CODE = (
        "invalid_code",
        400,
        "The authenticator code is not correct: enter the current one from the authenticator app (wrong codes "
        "count toward the lockout).",
    )
    # 401
    NOT_AUTHENTICATED = (
        "not_authenticated",
        401,
        "Not signed in: sign in (POST /api/v1/auth/login) or send a bearer token (POST /api/v1/auth/tokens).",
    )
    INVALID_TOKEN = (
        "invalid_token",
        401,
        "The bearer token is invalid, expired or revoked, or belongs to another clinic: get a new one.",
    )
    SESSION_EXPIRED = ("session_expired", 401, "The portal session ended after inactivity: sign in again.")
    SESSION_REVOKED = (
        "session_revoked",
        401,
        "The session was ended by a lockout of the account after repeated failures: sign in again.",
    )
    INVALID_CREDENTIALS = (
        "invalid_credentials",
        401,
        "The email, password, code or invitation is not correct, or the account is temporarily locked: check "
        "them, or wait and try again.",
    )
    MFA_REQUIRED = (
        "mfa_required",
        401,
        "The password is right and the account has MFA: send it again with the authenticator app's code in totp.",
    )
    # 403
    PERMISSION_DENIED = ("permission_denied", 403, "Signed in, but your role may not do this.")
    NOT_PERMITTED = (
        "not_permitted",
        403,
        "You may not do this to this record: your role, or the record is outside your care relationship.",
    )
    CSRF_FAILED = (
        "csrf_failed",
        403,
        "A portal-session request without a valid CSRF token: get one (GET /api/v1/auth/csrf) and send it in "
        "X-CSRFToken.",
    )
    PURPOSE_NOT_PERMITTED = (
        "purpose_not_permitted",
        403,
        "Your role may not act for this purpose of use, or this action needs another purpose: send the one the "
        "message names in X-Purpose-Of-Use.",
    )
    MFA_ENROLLMENT_REQUIRED = (
        "mfa_enrollment_required",
        403,
        "This clinic requires MFA: enroll an authenticator (POST /api/v1/auth/mfa/totp) before anything else.",
    )
    # 404
    NOT_FOUND = (
        "not_found",
        404,
        "Nothing with this id is within your reach (another clinic's id answers the same): check the id.",
    )
    UNKNOWN_HOST = (
        "unknown_host",
        404,
        "No clinic is served at this host name: use your clinic's own address.",
    )
    INVITATION_INVALID = (
        "invitation_invalid",
        404,
        "The invitation is not valid (used, replaced, expired or unknown): ask the clinic for a new one.",
    )
    # 405, 406
    METHOD_NOT_ALLOWED = (
        "method_not_allowed",
        405,
        "This URL does not take this method: the Allow header lists the ones it takes.",
    )
    NOT_ACCEPTABLE = ("not_acceptable", 406, "The Accept header excludes application/json: accept JSON.")
    # 409
    CONFLICT = (
        "conflict",
        409,
        "The request conflicts with existing data (a value that must be unique, for one): change it and retry.",
    )
    ALREADY_MEMBER = (
        "already_member",
        409,
        "This person is already a member of the clinic: change their role instead of inviting them.",
    )
    INVITATION_NOT_PENDING = (
        "invitation_not_pending",
        409,
        "The invitation was already accepted or revoked: there is nothing left to do with it.",
    )
    CANNOT_DEMOTE_SELF = (
        "cannot_demote_self",
        409,
        "An administrator cannot remove their own administrator role: another administrator can.",
    )
    MFA_ALREADY_ENROLLED = (
        "mfa_already_enrolled",
        409,
        "An authenticator is already enrolled: remove it before enrolling another.",
    )
    MFA_NOT_STARTED = ("mfa_not_started", 409, "No enrollment to confirm: start the enrollment first.")
    MFA_NOT_ENROLLED = ("mfa_not_enrolled", 409, "No authenticator is enrolled, so there is none to remove.")
    MFA_REQUIRED_BY_ORGANIZATION = (
        "mfa_required_by_organization",
        409,
        "A clinic you are a member of requires MFA, so your authenticator stays enrolled.",
    )
    # 413, 415
    REQUEST_TOO_LARGE = ("request_too_large", 413, "The body is larger than the server accepts: send less.")
    UNSUPPORTED_MEDIA_TYPE = (
        "unsupported_media_type",
        415,
        "The body must be JSON (Content-Type: application/json) encoded as UTF-8.",
    )
    # 500
    INTERNAL_ERROR = (
        "internal_error",
        500,
        "A server bug, not a fault of the request: try again later, and report it with the X-Request-ID header.",
    )
    DATA_INTEGRITY_ERROR = (
        "data_integrity_error",
        500,
        "A stored value failed its integrity check and was not returned: report it to the clinic's administrators.",
    )
    # 503
    SERVICE_UNAVAILABLE = (
        "service_unavailable",
        503,
        "A service the request needs (the audit log, the mail service) is unavailable; nothing was saved: try "
        "again shortly.",
    )
    DATABASE_UNAVAILABLE = (
        "database_unavailable",
        503,
        "The clinic's records are unreachable; nothing was saved: retry after the Retry-After seconds.",
    )
    KEY_SERVICE_UNAVAILABLE = (
        "key_service_unavailable",
        503,
        "The key service that decrypts health information is unreachable: retry after the Retry-After seconds.",
    )
    DEPENDENCY_UNAVAILABLE = (
        "dependency_unavailable",
        503,
        "From /readyz only: a dependency this server needs is unreachable (error.fields names it); a load "
        "balancer takes the server out of rotation until it is back.",
    )


class ApiError(exceptions.APIException):
    """An error raised by a service function, with a stable machine-readable code."""

    def __init__(
        self, code: ErrorCode, message: str, status_code: int | None = None, fields: dict | None = None
    ):
        default_status = _status(code)
        super().__init__(detail=message, code=code)
        self.status_code = default_status if status_code is None else status_code
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
        super().__init__(TenancyCode.SERVICE_UNAVAILABLE, message)
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
    TenancyCode.DATABASE_UNAVAILABLE,
    "The clinic's records are temporarily unavailable. Nothing was saved; try again shortly.",
)


def database_unavailable() -> JsonResponse:
    """PostgreSQL unreachable or restarting. ATOMIC_REQUESTS rolled the request back, so "nothing was saved"
    is true; 503 with Retry-After tells clients and nginx the failure is transient."""
    response = json_error(*DATABASE_UNAVAILABLE)
    response["Retry-After"] = "5"
    return response


def error_body(code: ErrorCode, message: str, fields: dict | None = None) -> dict[str, Any]:
    _status(code)  # refuses a bare string or a socket code
    return {"error": {"code": code.value, "message": message, "fields": fields or {}}}


def json_error(
    code: ErrorCode, message: str, status_code: int | None = None, fields: dict | None = None
) -> JsonResponse:
    """The error body as a Django response, with the code's status unless another is given."""
    body = error_body(code, message, fields)
    return JsonResponse(body, status=_status(code) if status_code is None else status_code)


def _flatten(detail: Any) -> Any:
    if isinstance(detail, dict):
        return {str(k): _flatten(v) for k, v in detail.items()}
    if isinstance(detail, list):
        return [_flatten(v) for v in detail]
    return str(detail)


# The code of a DRF exception by its status, when it carries no code of ours (DRF's own NotFound, NotAcceptable...).
_DEFAULT_CODES = {
    400: TenancyCode.INVALID_REQUEST,
    401: TenancyCode.NOT_AUTHENTICATED,
    403: TenancyCode.PERMISSION_DENIED,
    404: TenancyCode.NOT_FOUND,
    405: TenancyCode.METHOD_NOT_ALLOWED,
    406: TenancyCode.NOT_ACCEPTABLE,
    409: TenancyCode.CONFLICT,
    413: TenancyCode.REQUEST_TOO_LARGE,
    415: TenancyCode.UNSUPPORTED_MEDIA_TYPE,
    500: TenancyCode.INTERNAL_ERROR,
    503: TenancyCode.SERVICE_UNAVAILABLE,
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
            error_body(TenancyCode.INVALID_INPUT, "A value is out of range or not valid for its field."),
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
            error_body(TenancyCode.NOT_PERMITTED, "You are not permitted to make this change."),
            status=status.HTTP_403_FORBIDDEN,
        )
    elif isinstance(exc, IntegrityError):
        # Never echo the constraint: it can name another tenant's value.
        return Response(
            error_body(TenancyCode.CONFLICT, "The request conflicts with existing data."),
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
                TenancyCode.KEY_SERVICE_UNAVAILABLE,
                "Health information is temporarily unavailable: the key service cannot be reached. Try again shortly.",
            ),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )
    elif isinstance(exc, CiphertextError):
        logger.error("stored value failed authentication: %s", exc)
        return Response(
            error_body(
                TenancyCode.DATA_INTEGRITY_ERROR,
                "A stored value failed its integrity check; it was not returned.",
            ),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    elif isinstance(exc, NoTenantContext):
        logger.error("tenant data touched without a tenant context", exc_info=exc)
        return Response(
            error_body(TenancyCode.INTERNAL_ERROR, "The server could not complete the request."),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )

    if not isinstance(exc, exceptions.APIException):
        return None  # Django's 500 handler (config.urls.server_error) answers in the same shape.

    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header  # type: ignore[attr-defined]
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))  # type: ignore[attr-defined]

    code: ErrorCode = _DEFAULT_CODES.get(
        exc.status_code, TenancyCode.INTERNAL_ERROR if exc.status_code >= 500 else TenancyCode.INVALID_REQUEST
    )
    fields: dict[str, Any] = {}
    if isinstance(exc, exceptions.ValidationError):
        code = TenancyCode.INVALID_REQUEST
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
        if detail_code == "parse_error":
            code = TenancyCode.MALFORMED_JSON
        elif isinstance(detail_code, str) and detail_code != "error":
            known = _known(detail_code)
            if known is None:
                # Another library's code, not one of ours: the status's code goes out instead of an unlisted one.
                logger.warning("%s has the code %r, which is no ErrorCode", type(exc).__name__, detail_code)
            else:
                code = known
        message = str(exc.detail)
    return Response(error_body(code, message, fields), status=exc.status_code, headers=headers)


# Django-level handlers (URLs that never reach DRF).
def bad_request(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    if isinstance(exception, RequestDataTooBig):
        return json_error(TenancyCode.REQUEST_TOO_LARGE, "The request body is too large.")
    return json_error(TenancyCode.INVALID_REQUEST, "The request could not be understood.")


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    message = "Permission denied."
    if exception is not None and "CSRF" in str(exception):
        return json_error(TenancyCode.CSRF_FAILED, "CSRF token missing or incorrect.")
    return json_error(TenancyCode.PERMISSION_DENIED, message)


def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return json_error(TenancyCode.NOT_FOUND, "Not found.")


def server_error(request: HttpRequest) -> JsonResponse:
    # Django calls this inside its except block: a lost database connection raised by a middleware (the
    # host lookup, the session) is an outage to report as one, not a bug.
    if is_database_outage(sys.exc_info()[1]):
        return database_unavailable()
    return json_error(TenancyCode.INTERNAL_ERROR, "The server could not complete the request.")


def csrf_failure(request: HttpRequest, reason: str = "") -> JsonResponse:
    return json_error(TenancyCode.CSRF_FAILED, f"CSRF check failed: {reason}")
