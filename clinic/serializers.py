"""Request and response shapes of the clinic API. Encrypted fields appear as plain values here: the model
decrypts on access, and only rows the caller may see ever reach a serializer."""

from __future__ import annotations

from django.utils import timezone
from rest_framework import serializers

from tenancy.api import StrictSerializer

from .models import BreakGlass, CareTeamMember, ClinicalNote, Consent, ConsentEvent, Encounter, EncounterEvent


class AddressField(serializers.DictField):
    child = serializers.CharField(max_length=200, allow_blank=True)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if len(value) > 10:
            raise serializers.ValidationError("At most 10 address lines.")
        return value


_DATETIME = serializers.DateTimeField()  # the declared created_at's format, for the hand-built answer


class PatientSerializer(StrictSerializer):
    id = serializers.UUIDField(read_only=True)
    given_name = serializers.CharField(max_length=200)
    family_name = serializers.CharField(max_length=200)
    birth_date = serializers.DateField()
    # Optional details a patient may not have given are null in answers (and null clears them in updates).
    email = serializers.EmailField(max_length=254, required=False, allow_blank=True, allow_null=True)
    phone = serializers.CharField(max_length=40, required=False, allow_blank=True, allow_null=True)
    address = AddressField(required=False, allow_null=True)
    health_card_number = serializers.CharField(
        max_length=40, required=False, allow_blank=True, allow_null=True
    )
    has_portal_account = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField(read_only=True)

    def get_has_portal_account(self, obj) -> bool:
        return obj.user_id is not None

    def to_representation(self, instance) -> dict:
        """The declared fields' answer, built directly: the hot read path (a page is 50 of these) without DRF's
        per-field machinery, which cost more than the decryption itself (issue 13). Same keys, order and
        formats; tests/clinic/test_serializers.py holds it to the field-by-field answer."""
        birth_date, address = instance.birth_date, instance.address
        return {
            "id": str(instance.id),
            "given_name": instance.given_name,
            "family_name": instance.family_name,
            "birth_date": birth_date.isoformat() if birth_date is not None else None,
            "email": instance.email,
            "phone": instance.phone,
            "address": {str(k): None if v is None else str(v) for k, v in address.items()}
            if address is not None
            else None,
            "health_card_number": instance.health_card_number,
            "has_portal_account": instance.user_id is not None,
            "created_at": _DATETIME.to_representation(instance.created_at),
        }

    def field_by_field(self, instance) -> dict:
        """DRF's own representation from the declared fields: what to_representation must equal."""
        return super().to_representation(instance)

    def validate_birth_date(self, value):
        if value > timezone.localdate():
            raise serializers.ValidationError("A birth date cannot be in the future.")
        if value.year < 1900:
            raise serializers.ValidationError("A birth date before 1900 is not plausible.")
        return value


class PatientUpdateSerializer(PatientSerializer):
    def __init__(self, *args, **kwargs):
        kwargs["partial"] = True
        super().__init__(*args, **kwargs)


class CareTeamMemberSerializer(serializers.ModelSerializer):
    active = serializers.SerializerMethodField()

    class Meta:
        model = CareTeamMember
        fields = ["id", "patient", "practitioner", "role", "period_start", "period_end", "active"]
        read_only_fields = fields

    def get_active(self, obj) -> bool:
        now = timezone.now()
        return obj.period_start <= now and (obj.period_end is None or obj.period_end > now)


class CareTeamAssignSerializer(StrictSerializer):
    practitioner = serializers.UUIDField(help_text="The practitioner's membership id")
    role = serializers.ChoiceField(choices=CareTeamMember.Role.choices, default=CareTeamMember.Role.PRIMARY)
    until = serializers.DateTimeField(required=False, allow_null=True)


class ConsentSerializer(serializers.ModelSerializer):
    class Meta:
        model = Consent
        fields = ["id", "patient", "purpose", "status", "period_start", "period_end", "updated_at"]
        read_only_fields = fields


class ConsentGrantSerializer(StrictSerializer):
    purpose = serializers.ChoiceField(choices=Consent.Purpose.choices)
    note = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="")
    until = serializers.DateTimeField(required=False, allow_null=True)


class ConsentWithdrawSerializer(StrictSerializer):
    note = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="")


class ConsentEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = ConsentEvent
        fields = ["id", "action", "actor", "at"]
        read_only_fields = fields


class EncounterSerializer(serializers.ModelSerializer):
    reason = serializers.CharField(read_only=True)

    class Meta:
        model = Encounter
        fields = [
            "id",
            "patient",
            "practitioner",
            "status",
            "reason",
            "scheduled_at",
            "admitted_at",
            "started_at",
            "ended_at",
            "documentation_required",
            "created_at",
        ]
        read_only_fields = fields


class EncounterCreateSerializer(StrictSerializer):
    patient = serializers.UUIDField()
    practitioner = serializers.UUIDField(help_text="The practitioner's membership id")
    scheduled_at = serializers.DateTimeField()
    reason = serializers.CharField(max_length=2000, allow_blank=True, default="")


class EncounterEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = EncounterEvent
        fields = ["id", "kind", "actor", "at", "detail"]
        read_only_fields = fields


class NoteSerializer(serializers.ModelSerializer):
    body = serializers.CharField(read_only=True)

    class Meta:
        model = ClinicalNote
        fields = [
            "id",
            "encounter",
            "patient",
            "author",
            "body",
            "status",
            "version",
            "amends",
            "created_at",
            "signed_at",
        ]
        read_only_fields = fields


class NoteBodySerializer(StrictSerializer):
    body = serializers.CharField(max_length=100_000)


class BreakGlassSerializer(serializers.ModelSerializer):
    reason = serializers.CharField(read_only=True)
    active = serializers.SerializerMethodField()

    class Meta:
        model = BreakGlass
        fields = ["id", "practitioner", "patient", "reason", "opened_at", "expires_at", "closed_at", "active"]
        read_only_fields = fields

    def get_active(self, obj) -> bool:
        return obj.closed_at is None and obj.expires_at > timezone.now()


class BreakGlassOpenSerializer(StrictSerializer):
    patient = serializers.UUIDField()
    reason = serializers.CharField(max_length=2000)
    minutes = serializers.IntegerField(min_value=1, max_value=240, default=60)
