"""The clinic's records. Every health-information column is encrypted under the organization's key.

Who may see which row is decided by PostgreSQL (clinic/rls.py): a practitioner sees a patient only while on
the patient's care team, in an active encounter with them, or under an open break-glass; staff see
demographics and schedules, never notes; a patient sees their own record; analytics never sees a patient who
has not consented to it. Patients are searchable only by exact email or health card number (blind indexes).
"""

from __future__ import annotations

from typing import ClassVar

from django.db import models
from django.utils import timezone

from tenancy.crypto.fields import BlindIndexField, EncryptedDateField, EncryptedJSONField, EncryptedTextField
from tenancy.models import Membership, TenantModel, User


class Patient(TenantModel):
    given_name = EncryptedTextField()
    family_name = EncryptedTextField()
    birth_date = EncryptedDateField()
    email = EncryptedTextField(blind_index="email_index", normalizer="email")
    email_index = BlindIndexField(source="email")
    phone = EncryptedTextField()
    address = EncryptedJSONField()
    health_card_number = EncryptedTextField(blind_index="health_card_index", normalizer="identifier")
    health_card_index = BlindIndexField(source="health_card_number")
    # The patient's own portal sign-in, if they have one.
    user = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta(TenantModel.Meta):
        constraints: ClassVar[list] = [
            *TenantModel.Meta.constraints,
            # One patient per health card in a clinic, checked by the database whatever rows the registering
            # role can see (the blind index is per organization, so equal cards have equal tokens).
            models.UniqueConstraint(
                fields=["org", "health_card_index"],
                condition=models.Q(health_card_index__isnull=False),
                name="clinic_patient_one_per_health_card",
            ),
        ]
        indexes: ClassVar[list] = [
            models.Index(fields=["org", "created_at"]),
            models.Index(fields=["org", "email_index"]),
            models.Index(fields=["org", "user"]),
        ]

    def __str__(self) -> str:
        return f"patient {self.pk}"


class PractitionerProfile(TenantModel):
    """A practitioner's professional details in this organization (their name is on the Membership)."""

    membership = models.ForeignKey(Membership, on_delete=models.CASCADE, related_name="+")
    specialty = models.CharField(max_length=100, blank=True)
    registration_number = models.CharField(max_length=50, blank=True)

    class Meta(TenantModel.Meta):
        constraints: ClassVar[list] = [
            *TenantModel.Meta.constraints,
            models.UniqueConstraint(fields=["org", "membership"], name="clinic_practitioner_one_profile"),
        ]

    def __str__(self) -> str:
        return f"practitioner {self.membership_id}"


class CareTeamMember(TenantModel):
    """A practitioner on a patient's care team for a period; ending the period revokes access."""

    class Role(models.TextChoices):
        PRIMARY = "primary", "Primary"
        CONSULTING = "consulting", "Consulting"

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="+")
    practitioner = models.ForeignKey(Membership, on_delete=models.CASCADE, related_name="+")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.PRIMARY)
    period_start = models.DateTimeField(default=timezone.now)
    period_end = models.DateTimeField(null=True, blank=True)
    added_by = models.ForeignKey(Membership, on_delete=models.PROTECT, related_name="+", null=True)

    class Meta(TenantModel.Meta):
        constraints: ClassVar[list] = [
            *TenantModel.Meta.constraints,
            models.CheckConstraint(
                condition=models.Q(period_end__isnull=True)
                | models.Q(period_end__gte=models.F("period_start")),
                name="clinic_careteam_period_ordered",
            ),
        ]
        indexes: ClassVar[list] = [
            models.Index(fields=["org", "patient"]),
            models.Index(fields=["org", "practitioner"]),
        ]

    def __str__(self) -> str:
        return f"care team {self.practitioner_id} -> {self.patient_id}"


class Consent(TenantModel):
    """A patient's consent for one purpose. Its history is ConsentEvent; this row is the current state."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        ACTIVE = "active", "Active"
        WITHDRAWN = "withdrawn", "Withdrawn"

    class Purpose(models.TextChoices):
        TREATMENT = "treatment", "Treatment"
        ANALYTICS = "analytics", "Analytics and reporting"
        RESEARCH = "research", "Research"

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="+")
    purpose = models.CharField(max_length=20, choices=Purpose.choices)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DRAFT)
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta(TenantModel.Meta):
        constraints: ClassVar[list] = [
            *TenantModel.Meta.constraints,
            models.UniqueConstraint(
                fields=["org", "patient", "purpose"], name="clinic_consent_one_per_purpose"
            ),
            # A consent ends after it starts (a withdrawal ends it at the moment of withdrawing).
            models.CheckConstraint(
                condition=models.Q(period_start__isnull=True)
                | models.Q(period_end__isnull=True)
                | models.Q(period_end__gte=models.F("period_start")),
                name="clinic_consent_period_ordered",
            ),
        ]
        indexes: ClassVar[list] = [models.Index(fields=["org", "purpose", "status"])]

    def __str__(self) -> str:
        return f"consent {self.purpose}={self.status} for {self.patient_id}"


class ConsentEvent(TenantModel):
    """Who granted, withdrew or re-granted a consent, and when. Never updated or deleted."""

    consent = models.ForeignKey(Consent, on_delete=models.CASCADE, related_name="+")
    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="+")  # for the row policy
    action = models.CharField(max_length=20)  # grant | withdraw | regrant | draft
    actor = models.ForeignKey(Membership, on_delete=models.PROTECT, related_name="+", null=True)
    at = models.DateTimeField(default=timezone.now)
    note = EncryptedTextField()

    class Meta(TenantModel.Meta):
        indexes: ClassVar[list] = [models.Index(fields=["org", "consent", "at"])]

    def __str__(self) -> str:
        return f"{self.action} of {self.consent_id} at {self.at:%Y-%m-%d %H:%M}"


class Encounter(TenantModel):
    """A visit. Status follows FHIR; `documentation_required` marks one that ended without being closed."""

    class Status(models.TextChoices):
        PLANNED = "planned", "Planned"
        ARRIVED = "arrived", "Arrived"
        IN_PROGRESS = "in-progress", "In progress"
        FINISHED = "finished", "Finished"
        CANCELLED = "cancelled", "Cancelled"

    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="+")
    practitioner = models.ForeignKey(Membership, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PLANNED)
    reason = EncryptedTextField()
    scheduled_at = models.DateTimeField()
    admitted_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    documentation_required = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta(TenantModel.Meta):
        indexes: ClassVar[list] = [
            models.Index(fields=["org", "scheduled_at"]),
            models.Index(fields=["org", "patient"]),
            models.Index(fields=["org", "practitioner", "status"]),
            # The row policies' clinic_visits(), on every statement of a practitioner: the open visits and the
            # notes owed are few, a practitioner's finished encounters many (issue 13).
            models.Index(
                fields=["org", "practitioner"],
                condition=models.Q(status__in=["arrived", "in-progress"]),
                name="clinic_encounter_open_visit",
            ),
            models.Index(
                fields=["org", "practitioner"],
                condition=models.Q(status="finished", documentation_required=True),
                name="clinic_encounter_note_owed",
            ),
        ]

    def __str__(self) -> str:
        return f"encounter {self.pk} ({self.status})"


class EncounterEvent(TenantModel):
    """The encounter's timeline: arrivals, admissions, interruptions, notes signed. Append-only."""

    encounter = models.ForeignKey(Encounter, on_delete=models.CASCADE, related_name="+")
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="+")  # for the row policy
    kind = models.CharField(max_length=40)
    actor = models.ForeignKey(Membership, on_delete=models.PROTECT, related_name="+", null=True)
    at = models.DateTimeField(default=timezone.now)
    detail = models.JSONField(default=dict, blank=True)  # never health information: ids and states only

    class Meta(TenantModel.Meta):
        indexes: ClassVar[list] = [models.Index(fields=["org", "encounter", "at"])]

    def __str__(self) -> str:
        return f"{self.kind} at {self.at:%H:%M:%S}"


class ClinicalNote(TenantModel):
    """A note on an encounter. Signed notes are never edited: an amendment is a new version."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        SIGNED = "signed", "Signed"

    encounter = models.ForeignKey(Encounter, on_delete=models.PROTECT, related_name="+")
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="+")
    author = models.ForeignKey(Membership, on_delete=models.PROTECT, related_name="+")
    body = EncryptedTextField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    version = models.PositiveIntegerField(default=1)
    amends = models.ForeignKey("self", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    signed_at = models.DateTimeField(null=True, blank=True)

    class Meta(TenantModel.Meta):
        indexes: ClassVar[list] = [
            models.Index(fields=["org", "encounter", "created_at"]),
            models.Index(fields=["org", "patient", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"note {self.pk} v{self.version} ({self.status})"


class BreakGlass(TenantModel):
    """Emergency access outside the care relationship: a stated reason, a time box, a list for review."""

    practitioner = models.ForeignKey(Membership, on_delete=models.PROTECT, related_name="+")
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="+")
    reason = EncryptedTextField()
    opened_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta(TenantModel.Meta):
        indexes: ClassVar[list] = [
            models.Index(fields=["org", "practitioner", "expires_at"]),
            models.Index(fields=["org", "opened_at"]),
        ]

    def __str__(self) -> str:
        return f"break-glass {self.pk} by {self.practitioner_id}"
