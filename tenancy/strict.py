"""Strict requests: a body carries exactly what the operation declares, or it is refused with a clear 400.

DRF by default ignores body fields a serializer does not know, and coerces JSON types (a number where a string
is declared becomes "0", the string "5" an integer). A client's typo (`"famly_name"`) then silently drops data
with a 200, and the OpenAPI schema describes less than the server accepts (issue 11, finding 15). Here:

- StrictFieldsMixin, the base of every input serializer (StrictSerializer / StrictModelSerializer): a field the
  serializer does not have is refused as {"field": ["Unknown field."]}; a read-only field (`id`, `created_at`)
  is refused too, saying it is read-only, so a client that echoes a resource back learns what was not applied;
  a value of the wrong JSON type is refused instead of coerced; a body that is not a JSON object (a list, a
  string, null) is refused with one message.
- StrictRequestMixin, in TenantAPIView: an undeclared method answers 405 (with Allow) before authentication, so
  the answer does not depend on who asks; an unsafe operation that declares no request body (sign out, an
  encounter's transitions) refuses any body other than none or `{}`, naming each key, instead of ignoring it;
  and a query parameter given twice is refused rather than read as its last value.
  What an operation declares is read from its drf-spectacular annotation: the schema and the check are one fact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rest_framework import exceptions, serializers
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.settings import api_settings

UNKNOWN_FIELD = "Unknown field."
READ_ONLY_FIELD = "This field is read-only; it cannot be set by a request."
NO_BODY_FIELD = "Unknown field: this operation takes no request body."


def json_kind(value: Any) -> str:
    """What a parsed JSON value is, in the words of JSON."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def not_an_object(value: Any) -> exceptions.ValidationError:
    return exceptions.ValidationError(
        {
            api_settings.NON_FIELD_ERRORS_KEY: [
                f"The request body must be a JSON object, not {json_kind(value)}."
            ]
        },
        code="invalid",
    )


def _is_integer(value: Any) -> bool:
    # JSON Schema's "integer" admits 5.0; DRF's IntegerField reads it as 5. A bool is not a number in JSON.
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer()
    )


def type_error(field: serializers.Field, value: Any) -> Any:
    """Why `value` is not of the JSON type `field` is declared with in the schema, or None. DRF's own
    coercions (str(0), int("5"), bool("yes"), a UUID from an integer) are what this refuses."""
    if value is None:
        return None  # allow_null decides, with DRF's own message
    if isinstance(field, serializers.BooleanField):
        return None if isinstance(value, bool) else "Must be true or false."
    if isinstance(field, serializers.IntegerField):
        return None if _is_integer(value) else "Must be an integer."
    if isinstance(field, (serializers.FloatField, serializers.DecimalField)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else "Must be a number."
    if isinstance(field, serializers.DictField):
        if not isinstance(value, Mapping):
            return "Must be an object."
        nested = {str(k): [e] for k, v in value.items() if (e := type_error(field.child, v)) is not None}
        return nested or None
    if isinstance(field, serializers.ListField):
        if not isinstance(value, list):
            return "Must be a list."
        nested = {str(i): [e] for i, v in enumerate(value) if (e := type_error(field.child, v)) is not None}
        return nested or None
    if isinstance(field, serializers.BaseSerializer):
        return None  # a nested serializer checks its own input
    if isinstance(field, serializers.ChoiceField):
        kinds = {type(choice) for choice in field.choices}
        return None if kinds != {str} or isinstance(value, str) else "Must be a string."
    if isinstance(
        field,
        (
            serializers.CharField,  # and EmailField, RegexField, URLField, SlugField
            serializers.UUIDField,
            serializers.DateField,
            serializers.DateTimeField,
            serializers.TimeField,
            serializers.DurationField,
        ),
    ):
        return None if isinstance(value, str) else "Must be a string."
    return None


# No docstrings on these classes: drf-spectacular would print them as every request body's description.
class StrictFieldsMixin:
    # Refuses unknown and read-only fields, values of the wrong JSON type, and bodies that are not objects.

    fields: Any
    parent: Any

    def run_validation(self, data: Any = serializers.empty) -> Any:
        # Before DRF's own empty-value handling, which would answer a JSON null with "This field may not be null."
        if self.parent is None and data is not serializers.empty and not isinstance(data, Mapping):
            raise not_an_object(data)
        return super().run_validation(data)  # type: ignore[misc]

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise not_an_object(data)
        refused = self.refused_fields(data)
        try:
            value = super().to_internal_value(data)  # type: ignore[misc]
        except exceptions.ValidationError as exc:
            if refused and isinstance(exc.detail, dict):
                # One answer names every problem: the unknown and mistyped fields with the invalid ones.
                exc.detail.update(refused)
            raise
        if refused:
            raise exceptions.ValidationError(refused)
        return value

    def refused_fields(self, data: Mapping) -> dict[str, Any]:
        refused: dict[str, Any] = {}
        fields = self.fields
        for key, value in data.items():
            field = fields.get(key)
            if field is None:
                refused[str(key)] = [UNKNOWN_FIELD]
            elif field.read_only:
                refused[str(key)] = [READ_ONLY_FIELD]
            elif (problem := type_error(field, value)) is not None:
                refused[str(key)] = problem if isinstance(problem, dict) else [problem]
        return refused


class StrictSerializer(StrictFieldsMixin, serializers.Serializer):
    pass  # the base of every request serializer


class StrictModelSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    pass  # for a ModelSerializer that validates input


# -- views ---------------------------------------------------------------------------------------------------


_declares_body: dict[tuple[type, str], bool] = {}


def declares_request_body(view: Any, method: str) -> bool:
    """Whether the view's handler for `method` declares a request body, as its drf-spectacular annotation (and
    so the OpenAPI schema) says. Computed once per view class and method."""
    key = (type(view), method)
    if key not in _declares_body:
        handler = getattr(view, method.lower(), None)
        inspector_class = getattr(handler, "kwargs", {}).get("schema") or type(view.schema)
        inspector = inspector_class()
        inspector.view = view
        inspector.method = method
        _declares_body[key] = inspector.get_request_serializer() is not None
    return _declares_body[key]


def refuse_undeclared_body(request: Request) -> None:
    """A body sent to an operation that takes none: an empty body or `{}` is fine, anything else is 400."""
    data = request.data  # parsing errors (malformed JSON, a wrong content type) answer 400/415 here
    if not isinstance(data, Mapping):
        message = f"This operation takes no request body (send none, or {{}}), not {json_kind(data)}."
        raise exceptions.ValidationError({api_settings.NON_FIELD_ERRORS_KEY: [message]}, code="invalid")
    if data:
        raise exceptions.ValidationError({str(key): [NO_BODY_FIELD] for key in data})


def refuse_repeated_query_parameters(request: Request) -> None:
    """Every query parameter of the API takes one value; `?status=a&status=b` would have meant the last one."""
    repeated = {
        name: ["Given more than once; send it once."]
        for name, values in request.query_params.lists()
        if len(values) > 1
    }
    if repeated:
        raise exceptions.ValidationError(repeated)


class StrictRequestMixin:
    """For TenantAPIView: 405 before authentication, and no silently ignored body."""

    http_method_names: Sequence[str]

    def initial(self, request: Request, *args, **kwargs) -> None:
        method = request.method or ""
        if method.lower() not in self.http_method_names or not hasattr(self, method.lower()):
            # DRF would authenticate and check permissions first, so a caller without the role got 403 and an
            # anonymous one 401 for a method the operation does not have at all. The methods are public (the
            # schema lists them); the answer is the same for everyone.
            raise exceptions.MethodNotAllowed(method)
        super().initial(request, *args, **kwargs)  # type: ignore[misc]
        refuse_repeated_query_parameters(request)
        if method not in SAFE_METHODS and not declares_request_body(self, method):
            refuse_undeclared_body(request)
