"""Request and response shapes for tenancy's API."""

from __future__ import annotations

from rest_framework import serializers

from .models import Membership, Organization, Role


class LoginSerializer(serializers.Serializer):
    email = serializers.EmailField(max_length=254)
    password = serializers.CharField(max_length=1024, trim_whitespace=False)
    totp = serializers.CharField(max_length=12, required=False, allow_blank=True)


class TotpCodeSerializer(serializers.Serializer):
    code = serializers.RegexField(r"^\d{6}$", max_length=6)


class BrandingSerializer(serializers.Serializer):
    organization = serializers.CharField()
    display_name = serializers.CharField()
    primary_color = serializers.CharField()
    accent_color = serializers.CharField()
    logo_url = serializers.CharField()
    support = serializers.DictField()


class OrganizationSettingsSerializer(serializers.ModelSerializer):
    idle_timeout_minutes = serializers.IntegerField(min_value=1, max_value=24 * 60)

    class Meta:
        model = Organization
        fields = [
            "slug", "name", "display_name", "primary_color", "accent_color", "logo_url",
            "support_email", "support_phone", "require_mfa", "idle_timeout_minutes",
        ]
        read_only_fields = ["slug"]


class MembershipSerializer(serializers.ModelSerializer):
    email = serializers.EmailField(source="user.email", read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "email", "display_name", "role", "is_active", "created_at"]
        read_only_fields = fields


class MembershipCreateSerializer(serializers.Serializer):
    email = serializers.EmailField(max_length=254)
    role = serializers.ChoiceField(choices=Role.choices)
    display_name = serializers.CharField(max_length=200, required=False, allow_blank=True)


class MembershipUpdateSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)
