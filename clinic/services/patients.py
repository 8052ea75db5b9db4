"""Patients: registration, demographics and contact details, and search by exact identifier.

A health card number is unique in the clinic, enforced by the database whatever the caller may see."""

from __future__ import annotations

import uuid

from django.db import IntegrityError, transaction

from tenancy.context import current
from tenancy.errors import ApiError, TenancyCode
from tenancy.models import Membership, Role

from ..errors import ClinicCode
from ..models import (
    Patient,
)
from .common import load_for_user, recorded_write


def get_patient_for_user(patient_id: uuid.UUID, *, record: bool = True) -> Patient:
    """The patient, if the caller's row policies reach it (else 404), recorded as a read.

    `record=False` only when the caller's own event records this access: a write to the patient (its event
    carries the state hashes) or a read of something under the patient (its care team, its consents)."""
    return load_for_user(Patient.objects.filter(pk=patient_id), resource="Patient", record=record)


def own_patient_ids() -> list[uuid.UUID]:
    """The signed-in patient's own records (row policies show a patient nothing else)."""
    return list(Patient.objects.values_list("id", flat=True))


PATIENT_FIELDS = (
    "given_name",
    "family_name",
    "birth_date",
    "email",
    "phone",
    "address",
    "health_card_number",
)


PATIENT_CONTACT_FIELDS = ("email", "phone", "address")


def search_patients(*, email: str = "", health_card_number: str = ""):
    """Exact match only, through the blind indexes; the queryset is already confined by row policies."""
    queryset = Patient.objects.all()
    if email:
        queryset = queryset.filter(email=email)
    if health_card_number:
        queryset = queryset.filter(health_card_number=health_card_number)
    return queryset


def _duplicate_patient() -> ApiError:
    # The same answer whether or not the caller may see the existing patient: that one exists is all it says.
    return ApiError(
        ClinicCode.DUPLICATE_PATIENT,
        "A patient with this health card number is already registered in this clinic. If they are in your "
        "care, ask the front desk to add you to their care team.",
        fields={"health_card_number": ["Already registered."]},
    )


def _save_patient(patient: Patient, **kwargs) -> None:
    """Save, turning the database's one-patient-per-health-card constraint into a clear 409. The constraint
    sees every row of the clinic, including those the caller's row policies hide."""
    try:
        with transaction.atomic():
            patient.save(**kwargs)
    except IntegrityError as exc:
        if getattr(getattr(exc.__cause__, "diag", None), "constraint_name", "") == HEALTH_CARD_CONSTRAINT:
            raise _duplicate_patient() from None
        raise


HEALTH_CARD_CONSTRAINT = "clinic_patient_one_per_health_card"


@transaction.atomic
def register_patient(*, actor: Membership, data: dict) -> Patient:
    org_id = current().org_id  # type: ignore[union-attr]
    if org_id is None:
        raise ApiError(TenancyCode.UNKNOWN_HOST, "No organization is served at this host.")
    patient = Patient(org_id=org_id, **{k: v for k, v in data.items() if k in PATIENT_FIELDS})
    with recorded_write(patient, resource="Patient"):
        _save_patient(patient, force_insert=True)
    return patient


@transaction.atomic
def update_patient(*, patient: Patient, actor: Membership, data: dict) -> Patient:
    allowed = PATIENT_CONTACT_FIELDS if actor.role == Role.PATIENT else PATIENT_FIELDS
    refused = sorted(set(data) - set(allowed))
    if refused:
        raise ApiError(
            ClinicCode.FIELD_NOT_PERMITTED,
            "Some fields cannot be changed by you.",
            fields={name: ["You may not change this field."] for name in refused},
        )
    with recorded_write(patient, resource="Patient"):
        for name, value in data.items():
            setattr(patient, name, value)
        _save_patient(patient)
    return patient
