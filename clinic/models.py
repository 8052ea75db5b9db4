"""The clinic's records. Every health-information column is encrypted under the organization's key.

Patients are searchable only by exact email or health card number, through blind indexes.
"""

from __future__ import annotations

from typing import ClassVar

from django.db import models
from django.utils import timezone

from tenancy.crypto.fields import BlindIndexField, EncryptedDateField, EncryptedJSONField, EncryptedTextField
from tenancy.models import TenantModel, User


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
        indexes: ClassVar[list] = [
            models.Index(fields=["org", "created_at"]),
            models.Index(fields=["org", "email_index"]),
            models.Index(fields=["org", "health_card_index"]),
        ]

    def __str__(self) -> str:
        return f"patient {self.pk}"
