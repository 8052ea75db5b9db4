"""The OpenAPI schema tells the truth: what each operation accepts and every status it can answer.

TenantAutoSchema is drf-spectacular's AutoSchema for every view (REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"]). It adds
what a view cannot forget, because it is derived from the view's properties, not written per view:

- the error responses in the one error shape of tenancy/errors.py, by what the operation does: 404 (unknown
  host, nothing in reach), 406 and 503 everywhere; 400, 401 and 403 where the caller signs in (the purpose
  header, the role); 400, 413 and 415 where there is a body; 409 on writes. A view adds the statuses only it
  answers (a sign-in's 401) with `responses={..., **error_responses(401)}`;
- the Error's `code` as an enum of every HTTP code of every app (tenancy.errors.every_error_code), each listed
  with its status and what it means (the signalling socket's codes are in video/PROTOCOL.md: not HTTP);
- the X-Purpose-Of-Use header (an enum) on every operation that reads it, i.e. every signed-in one;
- `additionalProperties: false` on request bodies of strict serializers (tenancy.strict), since the server
  refuses unknown fields; a pattern on plain string fields, since the server refuses NUL characters and, where
  blank is not allowed, a value that is only whitespace;
- a body on DELETE when the operation declares one (drf-spectacular drops it), and a PATCH body whose
  serializer is not partial keeps its required fields (the note's new text is not optional);
- empty optional query parameters: the views read `?status=` as "not given", so the schema allows it
  (`allowEmptyValue`), except booleans, where an empty value is refused;
- the bearer-token and portal-session security schemes.
"""

from __future__ import annotations

import copy
from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent, force_instance, is_list_serializer, is_serializer
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import SAFE_METHODS, AllowAny

from .errors import every_error_code
from .models import PurposeOfUse
from .strict import StrictFieldsMixin

ERROR_REF = {"$ref": "#/components/schemas/Error"}
ERROR_FIELDS_REF = {"$ref": "#/components/schemas/ErrorFields"}


def error_schema() -> dict[str, Any]:
    """The Error component. Built when the schema is, once every app's codes are defined."""
    codes = [code for code in every_error_code() if code.status is not None]
    listing = "\n".join(f"- `{code.value}` ({code.status}): {code.description}" for code in codes)
    return {
        "type": "object",
        "description": 'Every 4xx and 5xx answer: {"error": {"code", "message", "fields"}}.',
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {
                        "type": "string",
                        "enum": [code.value for code in codes],
                        "description": "Machine-readable and stable. Every code, with its status and what to "
                        f"do:\n\n{listing}\n\nThe video signalling socket's codes are not HTTP responses: "
                        "video/PROTOCOL.md lists them.",
                    },
                    "message": {"type": "string", "minLength": 1, "description": "For people; may change."},
                    "fields": ERROR_FIELDS_REF,
                },
                "required": ["code", "message", "fields"],
                "additionalProperties": False,
            }
        },
        "required": ["error"],
        "additionalProperties": False,
    }


ERROR_FIELDS_SCHEMA = {
    "type": "object",
    "description": "What is wrong with each field, header or parameter, by name: a list of messages, or for a "
    'nested value an object of the same shape. An unknown field says "Unknown field.".',
    "additionalProperties": {
        "anyOf": [
            {"type": "array", "items": {"anyOf": [{"type": "string"}, ERROR_FIELDS_REF]}},
            ERROR_FIELDS_REF,
        ]
    },
}
ERROR_DESCRIPTIONS = {
    400: "The request is not valid: a body field (named in error.fields; an unknown or read-only field is refused "
    "too), a body that is not a JSON object, a query parameter, or the X-Purpose-Of-Use header.",
    401: "Not signed in, or the sign-in is no longer valid; error.code says which (not_authenticated, "
    "invalid_token, session_expired, ...).",
    403: "Signed in, but this role or purpose of use may not do this (permission_denied, purpose_not_permitted, "
    "mfa_enrollment_required, csrf_failed, ...).",
    404: "Nothing with this id within the caller's reach (another organization's id answers the same), or no "
    "organization is served at this host.",
    406: "The Accept header excludes application/json.",
    409: "The request conflicts with the current state of the object or with existing data.",
    413: "The request body is larger than the server accepts.",
    415: "The body is not JSON encoded as UTF-8.",
    423: "The account or resource is locked.",
    429: "Too many attempts; retry after the time in Retry-After.",
    503: "A dependency (the database, the key service, the TURN configuration) is unavailable. Nothing was saved; "
    "retry after Retry-After seconds when it is given.",
}
RETRY_AFTER = {
    "Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait before retrying."}
}

PURPOSE_HEADER_NAME = "X-Purpose-Of-Use"
PURPOSE_PARAMETER = {
    "in": "header",
    "name": PURPOSE_HEADER_NAME,
    "schema": {"type": "string", "enum": list(PurposeOfUse.values)},
    "description": "Purpose of use for this request; left out, the role's usual purpose. An empty or unknown "
    "value is refused with 400; a purpose the role may not act for, with 403.",
}

# Plain strings never hold NUL (DRF refuses it, and PostgreSQL cannot store it); a field that may not be blank and
# trims whitespace needs a character other than whitespace.
NO_NUL = "^[^\\u0000]*$"
# Where blank is allowed drf-spectacular adds `oneOf: [this, {maxLength: 0}]`: this must not match "" too.
NO_NUL_NOT_EMPTY = "^[^\\u0000]+$"
NOT_BLANK = "^[^\\u0000]*[^\\u0000\\s][^\\u0000]*$"
# What Django's URLValidator accepts, narrowed to http(s), ASCII host names and ports below 10000 so that every
# value the pattern admits is accepted (`format: uri` alone admits "session:" and other URIs Django refuses).
HTTP_URL = (
    "^[hH][tT][tT][pP][sS]?://"
    "[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"  # host name
    "(?:\\.(?!-)[a-zA-Z0-9-]{1,63}(?<!-))*"  # domain labels
    "\\.(?!-)(?:[a-zA-Z-]{2,63}|xn--[a-zA-Z0-9]{1,59})(?<!-)\\.?"  # top-level domain
    "(?::[1-9][0-9]{0,3})?"  # port
    "(?:[/?#][^\\s]*)?$"  # path, query, fragment
)


def error_responses(*codes: int) -> dict[int, OpenApiResponse]:
    """Error statuses an operation answers beyond what TenantAutoSchema derives, for `extend_schema(responses=)`."""
    return {code: OpenApiResponse(response=ERROR_REF, description=ERROR_DESCRIPTIONS[code]) for code in codes}


def _error(code: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": ERROR_DESCRIPTIONS.get(code, "An error."),
        "content": {"application/json": {"schema": ERROR_REF}},
    }
    if code in (429, 503):
        response["headers"] = copy.deepcopy(RETRY_AFTER)
    return response


class TenantAutoSchema(AutoSchema):
    """AutoSchema with the additions listed in the module docstring."""

    # -- what the view is --------------------------------------------------------------------------------

    def _authenticates(self) -> bool:
        return bool(self.view.get_authenticators()) and not all(
            isinstance(permission, AllowAny) for permission in self.view.get_permissions()
        )

    def _get_serializer(self):
        # An APIView without a serializer declares its bodies with @extend_schema; where it declares none, it
        # has none (tenancy.strict reads the same answer at runtime), which is not worth a warning.
        view = self.view
        if not isinstance(view, GenericAPIView) and not (
            hasattr(view, "serializer_class") or callable(getattr(view, "get_serializer", None))
        ):
            return None
        return super()._get_serializer()

    # -- request -----------------------------------------------------------------------------------------

    def _get_request_body(self, direction="request"):
        if self.method == "DELETE" and self.get_request_serializer() is not None:
            # drf-spectacular documents bodies on PUT, PATCH and POST only; this DELETE reads one.
            self.method = "POST"
            try:
                return super()._get_request_body(direction)
            finally:
                self.method = "DELETE"
        return super()._get_request_body(direction)

    def _get_request_for_media_type(self, serializer, direction="request"):
        serializer = force_instance(serializer)
        if (
            self.method == "PATCH"
            and is_serializer(serializer)
            and not is_list_serializer(serializer)
            and not serializer.partial
        ):
            # The view validates this PATCH body whole (a note's new text, a member's new role): its required
            # fields are required. A partial update passes a partial serializer (extend_schema(request=X(partial=True))).
            component = self.resolve_serializer(serializer, direction)
            if not component:
                return None, False
            required = component.schema.get("required", [])
            return component.ref, bool(required)
        return super()._get_request_for_media_type(serializer, direction)

    def _map_serializer(self, serializer, direction, bypass_extensions=False):
        schema = super()._map_serializer(serializer, direction, bypass_extensions)
        if direction == "request" and isinstance(force_instance(serializer), StrictFieldsMixin):
            schema["additionalProperties"] = False
        return schema

    def _map_serializer_field(self, field, direction, bypass_extensions=False):
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if direction != "request" or not isinstance(schema, dict) or schema.get("type") != "string":
            return schema
        if isinstance(field, serializers.URLField):
            schema["pattern"] = HTTP_URL
        elif (
            isinstance(field, serializers.CharField)
            and not {"format", "pattern", "enum", "$ref"} & set(schema)
            and not any(isinstance(v, RegexValidator) for v in field.validators)  # it has its own pattern
        ):
            if field.allow_blank:
                schema["pattern"] = NO_NUL_NOT_EMPTY
            elif field.trim_whitespace:
                schema["pattern"] = NOT_BLANK
            else:
                schema["pattern"] = NO_NUL
        return schema

    # -- parameters --------------------------------------------------------------------------------------

    def _get_parameters(self):
        parameters = super()._get_parameters()
        for parameter in parameters:
            schema = parameter.get("schema", {})
            if (
                parameter["in"] == "query"
                and not parameter.get("required")
                and schema.get("type") != "boolean"
            ):
                parameter["allowEmptyValue"] = True
        if self._authenticates() and not any(
            p["in"] == "header" and p["name"].lower() == PURPOSE_HEADER_NAME.lower() for p in parameters
        ):
            parameters.append(copy.deepcopy(PURPOSE_PARAMETER))
        return parameters

    # -- responses ---------------------------------------------------------------------------------------

    def _error_statuses(self, has_parameters: bool, has_body: bool) -> set[int]:
        statuses = {404, 406, 503}
        if self._authenticates():
            statuses |= {400, 401, 403}
        if has_parameters:
            statuses.add(400)
        if self.method not in SAFE_METHODS:
            # A write may meet existing data (409); a body, even where none is declared, may be refused (400).
            statuses |= {400, 409}
        if has_body:
            statuses |= {400, 413, 415}
        return statuses

    def get_operation(self, path, path_regex, path_prefix, method, registry):
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        registry.register_on_missing(
            ResolvedComponent(
                name="Error", type=ResolvedComponent.SCHEMA, object="Error", schema=error_schema()
            )
        )
        registry.register_on_missing(
            ResolvedComponent(
                name="ErrorFields",
                type=ResolvedComponent.SCHEMA,
                object="ErrorFields",
                schema=ERROR_FIELDS_SCHEMA,
            )
        )
        responses = operation["responses"]
        statuses = self._error_statuses(bool(operation.get("parameters")), "requestBody" in operation)
        statuses |= {int(code) for code in responses if code.isdigit() and int(code) >= 400}
        for code in sorted(statuses):
            # Declared ones are rendered like the derived ones: one description and schema per status.
            responses[str(code)] = _error(code)
        operation["responses"] = dict(sorted(responses.items()))
        return operation


# -- security schemes ----------------------------------------------------------------------------------------


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "tenancy.authentication.BearerTokenAuthentication"
    name = "bearerToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A short-lived token from POST /api/v1/auth/tokens, for this organization's host only.",
        }


class PortalSessionScheme(OpenApiAuthenticationExtension):
    target_class = "tenancy.authentication.OrgSessionAuthentication"
    name = "portalSession"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "cookie",
            "name": settings.SESSION_COOKIE_NAME,
            "description": "The portal's session from POST /api/v1/auth/login; unsafe methods need X-CSRFToken.",
        }
