"""Consent (PIPEDA): a patient's consent per purpose, granted, withdrawn and re-granted, with its history."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.db import transaction

from tenancy.errors import ApiError, TenancyCode
from tenancy.models import Membership

from ..errors import ClinicCode
from ..models import (
    Consent,
    ConsentEvent,
    Patient,
)
from .common import _check_period_end, _now, load_for_user, record_phi_access, recorded_write


def get_consent_for_user(patient: Patient, consent_id: uuid.UUID, *, record: bool = True) -> Consent:
    """The patient's consent (else 404), recorded as a read; `record=False` only when the caller's own event
    records this access (withdrawing it, reading its history)."""
    return load_for_user(
        Consent.objects.filter(pk=consent_id, patient=patient), resource="Consent", record=record
    )


def consents_of(patient: Patient):
    """The patient's consents, one per purpose; the list is recorded as one read of the patient's consents."""
    record_phi_access(action="read", resource="Consent", patient_id=patient.pk)
    return Consent.objects.filter(patient=patient)


@transaction.atomic
def grant_consent(
    *, patient: Patient, purpose: str, actor: Membership, note: str = "", until: datetime | None = None
) -> Consent:
    """Grant, or re-grant after a withdrawal; the history keeps every step."""
    if purpose not in Consent.Purpose.values:
        raise ApiError(
            TenancyCode.INVALID_PURPOSE,
            "Unknown consent purpose.",
            fields={"purpose": [f"Choose one of {', '.join(Consent.Purpose.values)}."]},
        )
    now = _now()
    _check_period_end(until, now)
    consent = Consent.objects.select_for_update().filter(patient=patient, purpose=purpose).first()
    step = "grant"
    if consent is None:
        consent = Consent(org_id=patient.org_id, patient=patient, purpose=purpose)
    elif consent.status == Consent.Status.ACTIVE:
        raise ApiError(ClinicCode.ALREADY_ACTIVE, "This consent is already active.")
    else:
        step = "regrant" if consent.status == Consent.Status.WITHDRAWN else "grant"
    with recorded_write(consent, resource="Consent", detail={"step": step}):
        consent.status = Consent.Status.ACTIVE
        consent.period_start, consent.period_end, consent.updated_at = now, until, now
        consent.save()
        ConsentEvent(
            org_id=patient.org_id,
            consent=consent,
            patient=patient,
            action=step,
            actor=actor,
            at=now,
            note=note,
        ).save(force_insert=True)
    return consent


@transaction.atomic
def withdraw_consent(*, consent: Consent, actor: Membership, note: str = "") -> Consent:
    if consent.status != Consent.Status.ACTIVE:
        raise ApiError(ClinicCode.NOT_ACTIVE, "Only an active consent can be withdrawn.")
    now = _now()
    with recorded_write(consent, resource="Consent", detail={"step": "withdraw"}):
        consent.status, consent.period_end, consent.updated_at = Consent.Status.WITHDRAWN, now, now
        consent.save(update_fields=["status", "period_end", "updated_at"])
        ConsentEvent(
            org_id=consent.org_id,
            consent=consent,
            patient_id=consent.patient_id,
            action="withdraw",
            actor=actor,
            at=now,
            note=note,
        ).save(force_insert=True)
    return consent


def consent_history(consent: Consent):
    """Every grant, withdrawal and re-grant of the consent, in order; recorded as a read of its history."""
    record_phi_access(
        action="read", resource="ConsentHistory", resource_id=consent.pk, patient_id=consent.patient_id
    )
    return ConsentEvent.objects.filter(consent=consent).order_by("at")
