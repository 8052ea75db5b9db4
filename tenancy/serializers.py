"""Request and response shapes for tenancy's API."""

from __future__ import annotations

import codecs
import json
import re

from django.conf import settings
from rest_framework import exceptions, parsers, serializers
from rest_framework.utils.json import strict_constant

from .errors import TenancyCode
from .models import Invitation, Membership, Organization, Role
from .strict import StrictModelSerializer, StrictSerializer


class RequestTooLarge(exceptions.APIException):
    status_code = 413
    default_code = TenancyCode.REQUEST_TOO_LARGE
    default_detail = "The request body is too large."


class StrictJSONParser(parsers.JSONParser):
    """JSON bodies as RFC 8259 has them exchanged: UTF-8 only, bounded in size and depth, valid Unicode.

    DRF's parser decodes with whatever charset the client names (`charset=zlib` decompresses, `rot13` and `bz2`
    crash), reads past DATA_UPLOAD_MAX_MEMORY_SIZE, lets deep nesting raise RecursionError and passes unpaired
    surrogates on to code that cannot encode them: each of those was a 500 (or worse) for input a client sends.
    """

    max_depth = 64

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding") or "utf-8"
        try:
            is_utf8 = codecs.lookup(encoding).name == "utf-8"
        except LookupError:
            is_utf8 = False
        if not is_utf8:
            raise exceptions.UnsupportedMediaType(media_type, detail="JSON must be encoded as UTF-8.")
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = stream.read(limit + 1) if limit is not None else stream.read()
        if limit is not None and len(raw) > limit:
            raise RequestTooLarge(f"The request body is larger than {limit} bytes.")
        try:
            data = json.loads(raw.decode("utf-8"), parse_constant=strict_constant)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - nested too deeply.") from None
        except ValueError as exc:
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None
        _check_parsed(data, self.max_depth)
        return data


def _check_parsed(data, max_depth: int) -> None:
    """Refuse nesting deeper than `max_depth` and strings no UTF-8 encoder (PostgreSQL, Argon2) accepts."""
    stack = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise exceptions.ParseError(
                    "JSON parse error - a string holds an unpaired surrogate."
                ) from None
        elif isinstance(value, (dict, list)):
            if depth >= max_depth:
                raise exceptions.ParseError(f"JSON parse error - nested deeper than {max_depth} levels.")
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)


# Six ASCII digits. Not `\d` or str.isdigit(): those accept fullwidth, Arabic-Indic, superscript and other
# Unicode digits, which no authenticator shows and which used to reach the comparison and crash it (issue 11).
TOTP_CODE_PATTERN = re.compile(r"\A[0-9]{6}\Z", re.ASCII)  # the validator searches: anchor both ends
TOTP_CODE_MESSAGE = "Enter the 6-digit code from your authenticator app (digits 0-9 only)."


def totp_code_field(**kwargs) -> serializers.RegexField:
    return serializers.RegexField(
        TOTP_CODE_PATTERN, max_length=6, error_messages={"invalid": TOTP_CODE_MESSAGE}, **kwargs
    )


class LoginSerializer(StrictSerializer):
    email = serializers.EmailField(max_length=254)
    password = serializers.CharField(max_length=1024, trim_whitespace=False)
    totp = totp_code_field(required=False, allow_blank=True)


class TotpCodeSerializer(StrictSerializer):
    code = totp_code_field()


class BrandingSerializer(serializers.Serializer):
    organization = serializers.CharField()
    display_name = serializers.CharField()
    primary_color = serializers.CharField()
    accent_color = serializers.CharField()
    logo_url = serializers.CharField()
    support = serializers.DictField()


class OrganizationSettingsSerializer(StrictModelSerializer):
    idle_timeout_minutes = serializers.IntegerField(min_value=1, max_value=24 * 60)

    class Meta:
        model = Organization
        fields = [
            "slug",
            "name",
            "display_name",
            "primary_color",
            "accent_color",
            "logo_url",
            "support_email",
            "support_phone",
            "require_mfa",
            "idle_timeout_minutes",
        ]
        read_only_fields = ["slug"]


class MembershipSerializer(serializers.ModelSerializer):
    email = serializers.CharField(read_only=True)
    display_name = serializers.CharField(read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "email", "display_name", "role", "is_active", "created_at"]
        read_only_fields = fields


class MembershipCreateSerializer(StrictSerializer):
    email = serializers.EmailField(max_length=254)
    role = serializers.ChoiceField(choices=Role.choices)
    display_name = serializers.CharField(max_length=200, required=False, allow_blank=True)


class MembershipUpdateSerializer(StrictSerializer):
    role = serializers.ChoiceField(choices=Role.choices)


class InvitationSerializer(serializers.ModelSerializer):
    """An invitation as its organization's administrators see it: never the token, never another clinic's data."""

    email = serializers.CharField(read_only=True)
    display_name = serializers.CharField(read_only=True)
    status = serializers.ChoiceField(choices=["pending", "accepted", "revoked", "expired"], read_only=True)

    class Meta:
        model = Invitation
        fields = ["id", "email", "display_name", "role", "status", "created_at", "expires_at"]
        read_only_fields = fields


class InvitationAcceptSerializer(StrictSerializer):
    token = serializers.CharField(max_length=100)
    password = serializers.CharField(max_length=1024, trim_whitespace=False)
    totp = totp_code_field(required=False, allow_blank=True)
